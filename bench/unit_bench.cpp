// Units against a floor in the same binary: a plain Boost.Fiber channel
// ping-pong. Call round trip, cast rate (with 0, 1 000 and 100 000 messages
// waiting), worker crash -> restart -> answer, and heap bytes per idle unit.
#include <benchmark/benchmark.h>

#include <malloc.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <boost/fiber/buffered_channel.hpp>
#include <boost/fiber/fiber.hpp>

#include <keepsake/keepsake.hpp>

namespace {

struct counter {
    long value = 0;
};

// A private segment directory for the run.
struct bench_segment {
    std::string directory = "/dev/shm/keepsake-bench-" + std::to_string(::getpid());
    std::unique_ptr<keepsake::segment> seg;
    bench_segment() {
        std::filesystem::create_directories(directory);
        keepsake::segment_options options;
        options.directory = directory;
        options.size = 64u << 20;
        options.max_entries = 4096;
        seg = std::make_unique<keepsake::segment>("bench", options);
    }
    ~bench_segment() {
        seg.reset();
        std::filesystem::remove_all(directory);
    }
};

bench_segment& shared_segment() {
    static bench_segment made;
    return made;
}

keepsake::runtime_options pumped() {
    keepsake::runtime_options options;
    options.threads = 0;
    options.default_segment = shared_segment().seg.get();
    return options;
}

keepsake::unit_spec<counter> spec(const std::string& name) {
    keepsake::unit_spec<counter> made;
    made.name = name;
    made.intensity = {1u << 20, std::chrono::seconds(10)};
    return made;
}

// The floor: a fiber echoes what the caller sends over two channels.
void BM_channel_pingpong(benchmark::State& state) {
    boost::fibers::buffered_channel<long> requests(2), replies(2);
    boost::fibers::fiber echo([&] {
        long value = 0;
        while (requests.pop(value) == boost::fibers::channel_op_status::success) replies.push(value + 1);
    });
    long value = 0;
    for (auto _ : state) {
        requests.push(value);
        replies.pop(value);
    }
    benchmark::DoNotOptimize(value);
    requests.close();
    echo.join();
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_channel_pingpong);

// The floor for casts: pushes into a channel a fiber drains.
void BM_channel_push(benchmark::State& state) {
    boost::fibers::buffered_channel<long> queue(1024);
    long sum = 0;
    boost::fibers::fiber drain([&] {
        long value = 0;
        while (queue.pop(value) == boost::fibers::channel_op_status::success) sum += value;
    });
    for (auto _ : state) queue.push(1);
    queue.close();
    drain.join();
    benchmark::DoNotOptimize(sum);
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_channel_push);

// One caller on the runtime's thread; every call commits (64 B state). The
// worker is idle, so the call runs in its lent turn (unit_spec::direct_calls).
void BM_unit_call(benchmark::State& state) {
    keepsake::runtime rt(pumped());
    auto unit = keepsake::start_unit(rt, spec("call"));
    for (auto _ : state) benchmark::DoNotOptimize(unit.call([](counter& c) { return ++c.value; }));
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_unit_call);

// The same call with direct calls off: queued, served on the worker fiber,
// answered across two context switches.
void BM_unit_call_queued(benchmark::State& state) {
    keepsake::runtime rt(pumped());
    auto queued = spec("call-queued");
    queued.direct_calls = false;
    auto unit = keepsake::start_unit(rt, queued);
    for (auto _ : state) benchmark::DoNotOptimize(unit.call([](counter& c) { return ++c.value; }));
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_unit_call_queued);

// Casts served and committed (the worker drains them as they come).
void BM_unit_cast_served(benchmark::State& state) {
    keepsake::runtime rt(pumped());
    auto unit = keepsake::start_unit(rt, spec("cast"));
    long sent = 0;
    for (auto _ : state) {
        unit.cast([](counter& c) { ++c.value; });
        if (++sent % 256 == 0) rt.run_for(std::chrono::milliseconds(100));
    }
    rt.run_for(std::chrono::seconds(1));
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_unit_cast_served);

// Enqueue rate with `backlog` messages already waiting (the worker does not
// run while the batch of 1 000 is timed).
void BM_unit_cast_backlog(benchmark::State& state) {
    keepsake::runtime rt(pumped());
    auto unit = keepsake::start_unit(rt, spec("backlog" + std::to_string(state.range(0))));
    const auto backlog = state.range(0);
    constexpr int batch = 1000;
    for (auto _ : state) {
        state.PauseTiming();
        for (long i = 0; i < backlog; ++i) unit.cast([](counter& c) { ++c.value; });
        state.ResumeTiming();
        for (int i = 0; i < batch; ++i) unit.cast([](counter& c) { ++c.value; });
        state.PauseTiming();
        unit.call([](const counter& c) { return c.value; });  // drains
        state.ResumeTiming();
    }
    state.SetItemsProcessed(state.iterations() * batch);
}
BENCHMARK(BM_unit_cast_backlog)->Arg(0)->Arg(1000)->Arg(100000)->Iterations(200);

// Where a crash-in-a-call benchmark's caller sits: on the runtime's thread
// (a direct call, in the worker's lent turn), on that thread with direct
// calls off (queued, served on the worker fiber), or on another thread (the
// runtime runs its own).
enum caller_place : long { direct = 0, queued = 1, other_thread = 2 };

keepsake::runtime_options options_for(long place) {
    keepsake::runtime_options options = pumped();
    if (place == other_thread) options.threads = 1;
    return options;
}

keepsake::unit_spec<counter> spec_for(long place, const std::string& name) {
    auto made = spec(name + std::to_string(place));
    made.direct_calls = place == direct;
    return made;
}

// A worker crashes in a call (`crash` makes it, and its caller learns
// worker_crashed), is restarted from its keeper, and answers the next call
// with its kept state: what a user waits from crash to answer.
template <class Crash>
void crash_then_call(benchmark::State& state, const std::string& name, Crash&& crash) {
    keepsake::runtime rt(options_for(state.range(0)));
    auto unit = keepsake::start_unit(rt, spec_for(state.range(0), name));
    unit.call([](counter& c) { c.value = 42; });
    long kept = 0;
    for (auto _ : state) {
        crash(unit);
        kept = unit.call([](const counter& c) { return c.value; });
    }
    if (kept != 42) state.SkipWithError("the kept state was lost");
    state.SetItemsProcessed(state.iterations());
}

// call: the caller catches the worker_crashed thrown to it (two exceptions).
void BM_crash_in_call(benchmark::State& state) {
    crash_then_call(state, "crash", [](keepsake::unit<counter>& unit) {
        try {
            unit.call([](counter&) -> int { throw std::runtime_error("crash"); });
        } catch (const keepsake::worker_crashed&) {
        }
    });
}
BENCHMARK(BM_crash_in_call)->ArgName("caller")->Arg(direct)->Arg(queued)->Arg(other_thread);

// try_call: the crash comes back in the call_result (one exception: the
// handler's).
void BM_crash_in_try_call(benchmark::State& state) {
    crash_then_call(state, "try-crash", [](keepsake::unit<counter>& unit) {
        auto crashed = unit.try_call([](counter&) -> int { throw std::runtime_error("crash"); });
        benchmark::DoNotOptimize(crashed.crashed());
    });
}
BENCHMARK(BM_crash_in_try_call)->ArgName("caller")->Arg(direct)->Arg(queued)->Arg(other_thread);

// The same, crashing in a cast: the user's throw is the only exception (a
// crashing call adds a second: the caller's worker_crashed).
void BM_unit_cast_crash_restart_call(benchmark::State& state) {
    keepsake::runtime rt(pumped());
    auto unit = keepsake::start_unit(rt, spec("cast-crash"));
    unit.call([](counter& c) { c.value = 42; });
    long kept = 0;
    for (auto _ : state) {
        unit.cast([](counter&) { throw std::runtime_error("crash"); });
        kept = unit.call([](const counter& c) { return c.value; });
    }
    if (kept != 42) state.SkipWithError("the kept state was lost");
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_unit_cast_crash_restart_call);

// The floor of the crash: throwing and catching the same exception, thrown
// from a frame below the catching one (as a handler's is, below the call).
[[gnu::noinline]] void throw_crash(long& depth) {
    benchmark::DoNotOptimize(depth);
    throw std::runtime_error("crash");
}

[[gnu::noinline]] long run_handler(long& depth) {
    throw_crash(depth);
    return depth;
}

void BM_bare_throw_catch(benchmark::State& state) {
    long depth = 0;
    for (auto _ : state) {
        try {
            benchmark::DoNotOptimize(run_handler(depth));
        } catch (const std::exception& caught) {
            benchmark::DoNotOptimize(caught.what());
        }
    }
}
BENCHMARK(BM_bare_throw_catch);

// A game or control loop's frame: run_for(budget) with 1 000 busy units
// (each commits and yields, always ready). Reports how far past its budget
// run_for returned: p50, p99 and max, in microseconds.
void BM_run_for_overshoot(benchmark::State& state) {
    constexpr int units = 1000;
    const auto budget = std::chrono::microseconds(state.range(0));
    keepsake::runtime rt(pumped());
    std::vector<keepsake::unit<counter>> started;
    for (int i = 0; i < units; ++i) {
        auto busy = spec("busy" + std::to_string(i));
        busy.loop = [](keepsake::unit_context<counter>& ctx) {
            while (!ctx.stop_requested()) {
                ++ctx.state().value;
                ctx.commit();
                ctx.yield();
            }
        };
        started.push_back(keepsake::start_unit(rt, busy));
    }
    std::vector<double> overshoot_us;
    for (auto _ : state) {
        const auto began = std::chrono::steady_clock::now();
        rt.run_for(budget);
        const auto spent = std::chrono::steady_clock::now() - began;
        overshoot_us.push_back(std::chrono::duration<double, std::micro>(spent - budget).count());
    }
    std::sort(overshoot_us.begin(), overshoot_us.end());
    auto at = [&](double q) { return overshoot_us[static_cast<std::size_t>(q * (overshoot_us.size() - 1))]; };
    state.counters["p50_over_us"] = at(0.5);
    state.counters["p99_over_us"] = at(0.99);
    state.counters["max_over_us"] = overshoot_us.back();
    for (auto& unit : started) keepsake::stop_unit(rt, unit);
}
BENCHMARK(BM_run_for_overshoot)->Arg(1000)->Arg(4000)->Iterations(2000)->Unit(benchmark::kMicrosecond);

// Heap bytes per idle unit (fiber stacks are mapped separately, lazily).
void BM_idle_unit_memory(benchmark::State& state) {
    constexpr int units = 1000;
    for (auto _ : state) {
        keepsake::runtime rt(pumped());
        const auto before = mallinfo2().uordblks;
        std::vector<keepsake::unit<counter>> started;
        started.reserve(units);
        for (int i = 0; i < units; ++i) {
            keepsake::unit_spec<counter> idle;  // default intensity: 1000 in 10 s
            idle.name = "idle" + std::to_string(i);
            started.push_back(keepsake::start_unit(rt, idle));
        }
        const auto after = mallinfo2().uordblks;
        state.counters["heap_bytes_per_unit"] = static_cast<double>(after - before) / units;
    }
}
BENCHMARK(BM_idle_unit_memory)->Iterations(1)->Unit(benchmark::kMillisecond);

// An activation: start a unit whose state is already in shared memory (a
// restore), its first answer, and its stop, with the runtime's stack pool
// (pooled = 256, the default) and without it (0: a stack mapped or
// allocated per start, as before the pool), with and without guard pages.
void BM_unit_start_call_stop(benchmark::State& state) {
    keepsake::runtime_options options = pumped();
    options.pooled_stacks = static_cast<std::size_t>(state.range(0));
    options.guard_pages = state.range(1) != 0;
    keepsake::runtime rt(options);
    const std::string name = "activate-" + std::to_string(state.range(0)) + "-" + std::to_string(state.range(1));
    {
        auto first = keepsake::start_unit(rt, spec(name));  // its state is in the segment from now on
        keepsake::stop_unit(rt, first);
    }
    for (auto _ : state) {
        auto unit = keepsake::start_unit(rt, spec(name));
        benchmark::DoNotOptimize(unit.call([](counter& c) { return ++c.value; }));
        keepsake::stop_unit(rt, unit);
    }
    state.SetItemsProcessed(state.iterations());
    const auto stacks = rt.stack_stats();
    state.counters["fresh_stacks"] = static_cast<double>(stacks.fresh);
}
BENCHMARK(BM_unit_start_call_stop)->ArgNames({"pooled", "guard"})->ArgsProduct({{0, 256}, {0, 1}});

} // namespace

BENCHMARK_MAIN();
