// Calls and casts from another OS thread, quiet and beside a busy-loop
// thread the bench starts itself, measured in interleaved blocks so both
// sides of each ratio see the same machine; CAF 0.17's request().receive()
// from a non-actor thread in the same blocks; and the README's example path
// (main calling a unit under a supervisor in a one-thread runtime).
//
// Each benchmark runs `rounds` iterations; an iteration is one block of each
// kind in turn. Counters are medians over every timed call of a kind, in
// microseconds (casts: per message, 10 000 casts then a call that waits for
// them), and the ratios between them.
#include <benchmark/benchmark.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <caf/all.hpp>

#include <keepsake/keepsake.hpp>

namespace {

using std::chrono::steady_clock;

struct counter {
    long value = 0;
};

// A private segment directory for the run.
struct bench_segment {
    std::string directory = "/dev/shm/keepsake-xthread-bench-" + std::to_string(::getpid());
    std::unique_ptr<keepsake::segment> seg;
    bench_segment() {
        std::filesystem::create_directories(directory);
        keepsake::segment_options options;
        options.directory = directory;
        seg = std::make_unique<keepsake::segment>("xthread", options);
    }
    ~bench_segment() {
        seg.reset();
        std::filesystem::remove_all(directory);
    }
};

// A thread that spins while switched on and sleeps while off.
class busy_loop {
public:
    busy_loop() : thread_([this] { run(); }) {}
    busy_loop(const busy_loop&) = delete;
    busy_loop& operator=(const busy_loop&) = delete;
    ~busy_loop() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            quit_ = true;
            on_.store(false);
        }
        changed_.notify_all();
        thread_.join();
    }

    void set(bool on) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            on_.store(on);
        }
        changed_.notify_all();
        // Give it the time to be scheduled and spinning before the block.
        if (on) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }

private:
    std::mutex mutex_;
    std::condition_variable changed_;
    bool quit_ = false;
    std::atomic<bool> on_{false};
    std::thread thread_;

    void run() {
        volatile std::uint64_t sink = 0;
        for (;;) {
            {
                std::unique_lock<std::mutex> lock(mutex_);
                changed_.wait(lock, [&] { return quit_ || on_.load(); });
                if (quit_) return;
            }
            while (on_.load(std::memory_order_relaxed)) sink = sink + 1;
        }
    }
};

// Samples per kind of block, and their medians.
class samples {
public:
    void add(const std::string& kind, double us) { by_kind_[kind].push_back(us); }
    double median(const std::string& kind) { return at(kind, 0.5); }
    double at(const std::string& kind, double quantile) {
        auto& all = by_kind_[kind];
        if (all.empty()) return 0;
        std::sort(all.begin(), all.end());
        return all[static_cast<std::size_t>(quantile * static_cast<double>(all.size() - 1))];
    }

private:
    std::map<std::string, std::vector<double>> by_kind_;
};

double micros(steady_clock::duration spent) { return std::chrono::duration<double, std::micro>(spent).count(); }

// Times `calls` single calls, one sample each, each after `pause` (untimed).
void time_calls(samples& into, const std::string& kind, int calls, const std::function<void()>& one_call,
                std::chrono::microseconds pause) {
    for (int i = 0; i < calls; ++i) {
        if (pause.count() != 0) std::this_thread::sleep_for(pause);
        const auto began = steady_clock::now();
        one_call();
        into.add(kind, micros(steady_clock::now() - began));
    }
}

// Times `casts` casts and the call that waits for them: one sample, per message.
void time_casts(samples& into, const std::string& kind, int casts, const std::function<void()>& one_cast,
                const std::function<void()>& drain) {
    const auto began = steady_clock::now();
    for (int i = 0; i < casts; ++i) one_cast();
    drain();
    into.add(kind, micros(steady_clock::now() - began) / (casts + 1));
}

constexpr int calls_per_block = 400;
constexpr int casts_per_block = 10000;

// One block of each kind, quiet then busy, for every path given.
struct path {
    std::string name;
    std::function<void()> call;
    std::function<void()> cast;   // may be empty
    std::function<void()> drain;  // waits for the casts
    std::chrono::microseconds pause{0};  // before each call: lets the callee's thread fall asleep
};

void run_blocks(benchmark::State& state, std::vector<path>& paths) {
    busy_loop busy;
    samples taken;
    for (auto& each : paths) each.call();  // warm up: threads started, rings grown
    for (auto _ : state) {
        for (bool loaded : {false, true}) {
            busy.set(loaded);
            const std::string mode = loaded ? "_busy" : "_quiet";
            for (auto& each : paths) {
                time_calls(taken, each.name + "_call" + mode, each.pause.count() != 0 ? calls_per_block / 4 : calls_per_block,
                           each.call, each.pause);
                if (each.cast) time_casts(taken, each.name + "_cast" + mode, casts_per_block, each.cast, each.drain);
            }
        }
        busy.set(false);
    }
    for (auto& each : paths) {
        for (const char* op : {"_call", "_cast"}) {
            if (std::string(op) == "_cast" && !each.cast) continue;
            const std::string base = each.name + op;
            const double quiet = taken.median(base + "_quiet");
            const double loaded = taken.median(base + "_busy");
            state.counters[base + "_quiet_us"] = quiet;
            state.counters[base + "_busy_us"] = loaded;
            state.counters[base + "_busy_ratio"] = loaded / quiet;
            if (std::string(op) == "_call") {
                state.counters[base + "_quiet_p99_us"] = taken.at(base + "_quiet", 0.99);
                state.counters[base + "_busy_p99_us"] = taken.at(base + "_busy", 0.99);
            }
        }
    }
    if (paths.size() >= 2 && paths[1].name == "caf") {  // keepsake against CAF, same blocks
        for (const char* measure : {"_call_quiet_us", "_call_busy_us", "_cast_quiet_us", "_cast_busy_us"}) {
            const double mine = state.counters[paths[0].name + measure];
            const double theirs = state.counters[paths[1].name + measure];
            if (theirs > 0) state.counters[std::string("vs_caf") + measure] = mine / theirs;
        }
    }
}

keepsake::unit_spec<counter> counter_spec(const std::string& name) {
    keepsake::unit_spec<counter> made;
    made.name = name;
    return made;
}

// CAF: a counter actor on one scheduler thread, asked from this thread.
caf::behavior counter_actor(caf::event_based_actor*) {
    auto value = std::make_shared<long>(0);
    return {[value](long amount) { return *value += amount; }};
}

// A call and a cast from this thread into a unit on a one-thread runtime,
// beside CAF's request().receive() from a non-actor thread.
void BM_xthread_vs_caf(benchmark::State& state) {
    bench_segment segment;
    keepsake::runtime_options options;
    options.threads = 1;
    options.default_segment = segment.seg.get();
    keepsake::runtime rt(options);
    auto unit = keepsake::start_unit(rt, counter_spec("xthread"));

    caf::actor_system_config config;
    config.set("scheduler.max-threads", 1);
    caf::actor_system system{config};
    auto actor = system.spawn(counter_actor);
    caf::scoped_actor self{system};
    long answer = 0;
    auto ask = [&] {
        self->request(actor, caf::infinite, 1L)
            .receive([&](long value) { answer = value; }, [&](caf::error&) { state.SkipWithError("CAF request failed"); });
    };

    auto increment = [&] { benchmark::DoNotOptimize(unit.call([](counter& c) { return ++c.value; })); };
    std::vector<path> paths{
        {"keepsake", increment, [&] { unit.cast([](counter& c) { ++c.value; }); },
         [&] { benchmark::DoNotOptimize(unit.call([](const counter& c) { return c.value; })); }},
        {"caf", ask, [&] { self->send(actor, 1L); }, ask},
        // One call after 1 ms of silence: the runtime thread has gone to
        // sleep and must be woken (calls back to back find it awake).
        {"keepsake_after_pause", increment, {}, {}, std::chrono::microseconds(1000)},
    };
    run_blocks(state, paths);
    benchmark::DoNotOptimize(answer);
    keepsake::stop_unit(rt, unit);
}
BENCHMARK(BM_xthread_vs_caf)->Iterations(10)->Unit(benchmark::kMillisecond);

// CAF with a scheduler thread that never sleeps (it polls for work without
// end): its best latency, at the cost of a core. Alone, since that thread
// would take a core from the other benchmarks' blocks.
void BM_caf_never_sleeps(benchmark::State& state) {
    caf::actor_system_config config;
    config.set("scheduler.max-threads", 1);
    config.set("work-stealing.aggressive-poll-attempts", std::size_t{1} << 62);
    caf::actor_system system{config};
    auto actor = system.spawn(counter_actor);
    caf::scoped_actor self{system};
    auto ask = [&] {
        self->request(actor, caf::infinite, 1L)
            .receive([](long value) { benchmark::DoNotOptimize(value); },
                     [&](caf::error&) { state.SkipWithError("CAF request failed"); });
    };
    std::vector<path> paths{{"caf_never_sleeps", ask, [&] { self->send(actor, 1L); }, ask}};
    run_blocks(state, paths);
}
BENCHMARK(BM_caf_never_sleeps)->Iterations(10)->Unit(benchmark::kMillisecond);

// The README's "Units and supervisors" example: main calls a unit that a
// supervisor started in a one-thread runtime (a typed message, committed
// before the reply).
struct account {
    long balance = 0;
};
struct deposit {
    long amount;
};
struct bank {
    long operator()(account& a, const deposit& d) const { return a.balance += d.amount; }
};

void BM_readme_call(benchmark::State& state) {
    bench_segment segment;
    keepsake::runtime runtime({/*threads*/ 1, /*clock*/ nullptr, 128 * 1024, segment.seg.get()});
    keepsake::unit_spec<account, bank> alice;
    alice.name = "alice";
    keepsake::supervisor_spec tree;
    tree.name = "accounts";
    tree.flags.strategy = keepsake::strategy::one_for_one;
    tree.children.push_back(keepsake::child(alice));
    auto accounts = keepsake::start_supervisor(runtime, tree);
    auto unit = *keepsake::whereis<account, bank>(runtime, "alice");
    std::vector<path> paths{{"readme", [&] { benchmark::DoNotOptimize(unit.call(deposit{5})); }, {}, {}}};
    run_blocks(state, paths);
}
BENCHMARK(BM_readme_call)->Iterations(10)->Unit(benchmark::kMillisecond);

} // namespace

BENCHMARK_MAIN();
