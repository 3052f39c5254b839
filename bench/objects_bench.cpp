// Objects on demand (issue 13): what an object costs to wake, to keep, and
// to call among many, and how late its alarms fire; each figure beside a
// floor measured in the same run.
//
//   BM_activate_from_shm      terminate(key) hibernates it, then call(key)
//                             is timed (floor: the next call, now active)
//   BM_activate_from_sqlite   the object shut down to a sqlite_store, then
//                             call(key) is timed, paired call by call with a
//                             raw prepared SELECT of the same row
//   BM_memory_per_object      N idle objects (active, then hibernated) and N
//                             idle CAF 0.17 event_based_actors
//   BM_million_objects        KEEPSAKE_OBJECTS objects (1 000 000), a tenth
//                             of them active: memory, call latency
//   BM_alarm_schedule         schedule_alarm from outside and from a handler,
//                             beside a plain call
//   BM_alarm_lateness         KEEPSAKE_ALARMS alarms (100 000) due at one
//                             instant: how late each handler ran
//
// Run with --benchmark_enable_random_interleaving=true
// --benchmark_repetitions=5 (the big runs are one repetition each).
#include <benchmark/benchmark.h>

#include <malloc.h>
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#if KEEPSAKE_BENCH_CAF
#include <caf/all.hpp>
#endif

#include <keepsake/keepsake.hpp>
#include <keepsake/objects/directory.hpp>
#include <keepsake/stores/sqlite_store.hpp>

#include "objects_workload.hpp"

namespace {

using namespace std::chrono_literals;
using std::chrono::steady_clock;

using namespace objects_workload;

// Memory now: heap in use (every arena: main() sets M_ARENA_MAX to 1), and
// resident private and shared-memory pages.
struct memory {
    double heap = 0;
    double rss_anon = 0;
    double rss_shmem = 0;

    static memory now() {
        ::malloc_trim(0);
        memory taken;
        const struct mallinfo2 info = ::mallinfo2();
        taken.heap = static_cast<double>(info.uordblks + info.hblkhd);
        std::ifstream status("/proc/self/status");
        std::string line;
        while (std::getline(status, line)) {
            if (line.rfind("RssAnon:", 0) == 0) taken.rss_anon = 1024.0 * std::stod(line.substr(8));
            if (line.rfind("RssShmem:", 0) == 0) taken.rss_shmem = 1024.0 * std::stod(line.substr(9));
        }
        return taken;
    }
    // Per object, since `before`, as counters "<prefix>_heap_B" and so on.
    void report(benchmark::State& state, const std::string& prefix, const memory& before, double objects) const {
        state.counters[prefix + "_heap_B"] = (heap - before.heap) / objects;
        state.counters[prefix + "_rss_anon_B"] = (rss_anon - before.rss_anon) / objects;
        state.counters[prefix + "_rss_shmem_B"] = (rss_shmem - before.rss_shmem) / objects;
    }
};

// --- 1. activation ---------------------------------------------------------

// Activation from shared memory: the object's committed state is in the
// segment, nothing else. Each iteration hibernates one (untimed), times the
// call that wakes it, then the next call (active: the floor). Arg 1: the
// fibers' stacks from the heap (guard_pages = false), 0: guarded stacks (the
// runtime's default, mapped and unmapped at each activation).
void BM_activate_from_shm(benchmark::State& state) {
    constexpr std::size_t objects = 1000;
    rig r(objects, objects, nullptr, state.range(0) != 0);
    players dir(*r.rt, spec_for());
    for (std::size_t i = 0; i < objects; ++i) dir.call(key_of(i), add{1});
    std::vector<std::int64_t> woken;
    std::vector<std::int64_t> active;
    std::size_t next = 0;
    for (auto _ : state) {
        const std::string key = key_of(next++ % objects);
        dir.terminate(key);
        auto began = steady_clock::now();
        benchmark::DoNotOptimize(dir.call(key, add{1}));
        woken.push_back(ns_since(began));
        began = steady_clock::now();
        benchmark::DoNotOptimize(dir.call(key, add{1}));
        active.push_back(ns_since(began));
        state.SetIterationTime(static_cast<double>(woken.back()) * 1e-9);
    }
    const double p50 = percentile(woken, 0.5);
    state.counters["activate_p50_ns"] = p50;
    state.counters["activate_p99_ns"] = percentile(woken, 0.99);
    state.counters["active_call_p50_ns"] = percentile(active, 0.5);
    state.counters["activate/active_call"] = p50 / state.counters["active_call_p50_ns"];
    if (dir.stats().activations != objects + state.iterations()) state.SkipWithError("an activation was missed");
}
BENCHMARK(BM_activate_from_shm)->ArgName("heap_stacks")->Arg(0)->Arg(1)->Iterations(20000)->UseManualTime()->Unit(benchmark::kMicrosecond);

// A raw read of one row of the store's table: a prepared SELECT of the blob
// by key on a connection of its own, the bytes copied out.
class raw_reader {
public:
    explicit raw_reader(const std::string& path) {
        if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr) != SQLITE_OK ||
            sqlite3_prepare_v2(db_, "SELECT data FROM keepsake_records WHERE key = ?1", -1, &select_, nullptr) !=
                SQLITE_OK)
            throw std::runtime_error(std::string("raw SQLite reader: ") + sqlite3_errmsg(db_));
    }
    raw_reader(const raw_reader&) = delete;
    raw_reader& operator=(const raw_reader&) = delete;
    ~raw_reader() {
        sqlite3_finalize(select_);
        sqlite3_close(db_);
    }
    std::size_t read(const std::string& key) {
        sqlite3_bind_text(select_, 1, key.data(), static_cast<int>(key.size()), SQLITE_STATIC);
        std::size_t size = 0;
        if (sqlite3_step(select_) == SQLITE_ROW) {
            const auto* data = static_cast<const std::byte*>(sqlite3_column_blob(select_, 0));
            bytes_.assign(data, data + sqlite3_column_bytes(select_, 0));
            size = bytes_.size();
        }
        sqlite3_reset(select_);
        return size;
    }

private:
    sqlite3* db_ = nullptr;
    sqlite3_stmt* select_ = nullptr;
    std::vector<std::byte> bytes_;
};

// Activation from SQLite: the object was shut down (its state moved to the
// store and left the segment, as shutdown_after does). Each iteration times
// the raw read of its row and its activation, in alternating order. Arg:
// the objects in the directory (the activation lists every segment entry:
// keeper::commit_imported).
void BM_activate_from_sqlite(benchmark::State& state) {
    const auto objects = static_cast<std::size_t>(state.range(0));
    constexpr std::size_t batch = 250;
    auto time = std::make_shared<keepsake::manual_clock>(1000s);
    rig r(objects, objects, time);
    keepsake::sqlite_store_options store_options;
    store_options.synchronous = keepsake::sqlite_sync::normal;
    const std::string path = r.directory + "/objects.db";
    keepsake::sqlite_store store(path, store_options);
    auto spec = spec_for(&store);
    spec.shutdown_after = 1s;
    players dir(*r.rt, spec);
    for (std::size_t i = 0; i < objects; ++i) dir.call(key_of(i), add{1});
    raw_reader raw(path);
    std::vector<std::int64_t> woken;
    std::vector<std::int64_t> floor;
    std::vector<double> pair_ratio;
    std::vector<std::string> ready;  // shut down, not yet woken
    std::size_t next = 0;
    for (auto _ : state) {
        if (ready.empty()) {  // untimed: shut a batch down to the store
            for (std::size_t i = 0; i < batch; ++i) {
                ready.push_back(key_of(next++ % objects));
                dir.terminate(ready.back());
            }
            time->advance(2s);
            dir.collect_idle();  // the housekeeping, woken by the clock, may have taken some already
            for (const auto& each : ready)
                if (dir.lookup(each) != keepsake::object_status::shut_down)
                    state.SkipWithError("the batch was not shut down");
        }
        const std::string key = ready.back();
        ready.pop_back();
        std::int64_t raw_ns = 0;
        std::int64_t woken_ns = 0;
        auto time_raw = [&] {
            const auto began = steady_clock::now();
            benchmark::DoNotOptimize(raw.read("players/" + key));
            raw_ns = ns_since(began);
        };
        auto time_wake = [&] {
            const auto began = steady_clock::now();
            benchmark::DoNotOptimize(dir.call(key, add{1}));
            woken_ns = ns_since(began);
        };
        if (state.iterations() % 2 == 0) {
            time_raw();
            time_wake();
        } else {
            time_wake();
            time_raw();
        }
        woken.push_back(woken_ns);
        floor.push_back(raw_ns);
        pair_ratio.push_back(static_cast<double>(woken_ns) / static_cast<double>(raw_ns));
        state.SetIterationTime(static_cast<double>(woken_ns) * 1e-9);
    }
    const double p50 = percentile(woken, 0.5);
    const double raw_p50 = percentile(floor, 0.5);
    state.counters["activate_p50_ns"] = p50;
    state.counters["activate_p99_ns"] = percentile(woken, 0.99);
    state.counters["raw_select_p50_ns"] = raw_p50;
    state.counters["raw_select_p99_ns"] = percentile(floor, 0.99);
    state.counters["activate/raw_select"] = p50 / raw_p50;
    std::sort(pair_ratio.begin(), pair_ratio.end());
    state.counters["pair_ratio_median"] = pair_ratio.empty() ? 0 : pair_ratio[pair_ratio.size() / 2];
    const auto stacks = r.rt->stack_stats();
    state.counters["stacks_fresh"] = static_cast<double>(stacks.fresh);
    state.counters["stacks_reused"] = static_cast<double>(stacks.reused);
    state.counters["stacks_released"] = static_cast<double>(stacks.released);
}
BENCHMARK(BM_activate_from_sqlite)->ArgName("objects")->Arg(1000)->Arg(10000)->Iterations(5000)->UseManualTime()->Unit(benchmark::kMicrosecond);

// --- 2. memory per idle object ----------------------------------------------

#if KEEPSAKE_BENCH_CAF
caf::behavior idle_actor(caf::event_based_actor*) {
    return {[](std::uint64_t points) { return points; }};
}
#endif

// N objects started (each answered a call) and left idle; then the same N
// hibernated; then N idle CAF actors, each answered a request, in the same
// iteration.
void BM_memory_per_object(benchmark::State& state) {
    const std::size_t objects = env_count("KEEPSAKE_MEMORY_OBJECTS", 10000);
    const auto n = static_cast<double>(objects);
    for (auto _ : state) {
        {
            rig r(objects, objects);
            players dir(*r.rt, spec_for());
            dir.call("warm", add{1});
            const memory before = memory::now();
            for (std::size_t i = 0; i < objects; ++i) dir.call(key_of(i), add{1});
            memory::now().report(state, "active", before, n);
            for (std::size_t i = 0; i < objects; ++i) dir.terminate(key_of(i));
            memory::now().report(state, "hibernated", before, n);
        }
#if KEEPSAKE_BENCH_CAF
        {
            caf::actor_system_config config;
            config.set("scheduler.max-threads", 1);
            caf::actor_system system{config};
            caf::scoped_actor self{system};
            std::vector<caf::actor> actors;
            actors.reserve(objects);
            auto ask = [&](const caf::actor& whom) {
                self->request(whom, caf::infinite, std::uint64_t{1})
                    .receive([](std::uint64_t) {}, [&](caf::error&) { state.SkipWithError("CAF request failed"); });
            };
            actors.push_back(system.spawn(idle_actor));
            ask(actors.back());
            const memory before = memory::now();
            for (std::size_t i = 0; i < objects; ++i) {
                actors.push_back(system.spawn(idle_actor));
                ask(actors.back());
            }
            memory::now().report(state, "caf", before, n);
        }
#endif
    }
#if KEEPSAKE_BENCH_CAF
    state.counters["active/caf_heap"] = state.counters["active_heap_B"] / state.counters["caf_heap_B"];
    state.counters["active/caf_rss"] = state.counters["active_rss_anon_B"] / state.counters["caf_rss_anon_B"];
    state.counters["hibernated/caf_heap"] = state.counters["hibernated_heap_B"] / state.counters["caf_heap_B"];
#endif
}
BENCHMARK(BM_memory_per_object)->Iterations(1)->Unit(benchmark::kMillisecond);

// --- 3. a million objects ---------------------------------------------------

// KEEPSAKE_OBJECTS objects in one directory (each called once), the first
// KEEPSAKE_ACTIVE (a tenth) left active, the rest hibernated; then calls to
// random active and hibernated objects, interleaved (a woken one is
// hibernated again, untimed, so the active count stays).
void BM_million_objects(benchmark::State& state) {
    const std::size_t objects = env_count("KEEPSAKE_OBJECTS", 1000000);
    const std::size_t live = std::min(objects, env_count("KEEPSAKE_ACTIVE", objects / 10));
    const std::size_t samples = env_count("KEEPSAKE_SAMPLES", 100000);
    for (auto _ : state) {
        rig r(objects, live);
        auto owned = std::make_unique<players>(*r.rt, spec_for());
        players& dir = *owned;
        const memory before = memory::now();
        const auto began = steady_clock::now();
        for (std::size_t i = 0; i < objects; ++i) {
            dir.call(key_of(i), add{1});
            if (i >= live) dir.terminate(key_of(i));
        }
        const double create_s = static_cast<double>(ns_since(began)) * 1e-9;
        const memory after = memory::now();
        state.counters["objects"] = static_cast<double>(objects);
        state.counters["active"] = static_cast<double>(dir.active_count());
        state.counters["create_s"] = create_s;
        state.counters["heap_per_active_B"] = (after.heap - before.heap) / static_cast<double>(live);
        state.counters["rss_anon_per_active_B"] = (after.rss_anon - before.rss_anon) / static_cast<double>(live);
        state.counters["rss_shmem_per_object_B"] = (after.rss_shmem - before.rss_shmem) / static_cast<double>(objects);
        state.counters["segment_per_object_B"] = static_cast<double>(r.segment_bytes()) / static_cast<double>(objects);
        std::mt19937_64 pick(42);
        std::vector<std::int64_t> to_active;
        std::vector<std::int64_t> to_hibernated;
        for (std::size_t s = 0; s < samples && live > 0 && objects > live; ++s) {
            const std::string awake = key_of(pick() % live);
            auto t0 = steady_clock::now();
            benchmark::DoNotOptimize(dir.call(awake, add{1}));
            to_active.push_back(ns_since(t0));
            const std::string asleep = key_of(live + pick() % (objects - live));
            t0 = steady_clock::now();
            benchmark::DoNotOptimize(dir.call(asleep, add{1}));
            to_hibernated.push_back(ns_since(t0));
            dir.terminate(asleep);
        }
        state.counters["active_call_p50_ns"] = percentile(to_active, 0.5);
        state.counters["active_call_p99_ns"] = percentile(to_active, 0.99);
        state.counters["hibernated_call_p50_ns"] = percentile(to_hibernated, 0.5);
        state.counters["hibernated_call_p99_ns"] = percentile(to_hibernated, 0.99);
        const auto closing = steady_clock::now();
        owned.reset();  // every active object stops, committing
        state.counters["close_s"] = static_cast<double>(ns_since(closing)) * 1e-9;
    }
}
BENCHMARK(BM_million_objects)->Iterations(1)->Repetitions(1)->Unit(benchmark::kMillisecond);

// --- 4. alarms ----------------------------------------------------------------

// Per iteration: an alarm scheduled from outside (schedule_alarm: a call
// that commits), one scheduled by a handler (the arm message), and a plain
// call that commits (the floor), on 10 000 active objects in turn.
void BM_alarm_schedule(benchmark::State& state) {
    constexpr std::size_t objects = 10000;
    rig r(objects, objects);
    players dir(*r.rt, spec_for());
    for (std::size_t i = 0; i < objects; ++i) dir.call(key_of(i), add{1});
    std::int64_t outside_ns = 0;
    std::int64_t handler_ns = 0;
    std::int64_t call_ns = 0;
    std::size_t next = 0;
    const auto later = keepsake::alarm_clock_now(r.rt->clock()) + 1h;
    for (auto _ : state) {
        const std::string key = key_of(next++ % objects);
        auto t0 = steady_clock::now();
        dir.schedule_alarm(key, "tick", 1h);
        const std::int64_t outside = ns_since(t0);
        t0 = steady_clock::now();
        benchmark::DoNotOptimize(dir.call(key, arm{later}));
        const std::int64_t handler = ns_since(t0);
        t0 = steady_clock::now();
        benchmark::DoNotOptimize(dir.call(key, add{1}));
        const std::int64_t call = ns_since(t0);
        outside_ns += outside;
        handler_ns += handler;
        call_ns += call;
        state.SetIterationTime(static_cast<double>(outside) * 1e-9);
    }
    const auto n = static_cast<double>(state.iterations());
    state.counters["outside_per_s"] = n * 1e9 / static_cast<double>(outside_ns);
    state.counters["handler_per_s"] = n * 1e9 / static_cast<double>(handler_ns);
    state.counters["plain_call_per_s"] = n * 1e9 / static_cast<double>(call_ns);
    state.counters["outside/plain_call"] = static_cast<double>(outside_ns) / static_cast<double>(call_ns);
    state.counters["handler/plain_call"] = static_cast<double>(handler_ns) / static_cast<double>(call_ns);
}
BENCHMARK(BM_alarm_schedule)->Iterations(200000)->UseManualTime()->Unit(benchmark::kMicrosecond);

// KEEPSAKE_ALARMS objects (100 000), one alarm each, all due at the same
// instant T on the real clock; the objects active (arg 0) or hibernated (arg
// 1). The handler records its lateness: alarm clock when it ran minus due.
void BM_alarm_lateness(benchmark::State& state) {
    const std::size_t objects = env_count("KEEPSAKE_ALARMS", 100000);
    const bool hibernated = state.range(0) != 0;
    std::vector<std::int64_t> late;
    for (auto _ : state) {
        late.clear();
        late.reserve(objects);
        rig r(objects, objects);
        players dir(*r.rt, spec_for());
        const auto began = steady_clock::now();
        for (std::size_t i = 0; i < objects; ++i) dir.call(key_of(i), add{1});
        const auto created = steady_clock::now() - began;
        // Time enough to schedule (and hibernate) them all before T.
        const auto due = keepsake::alarm_clock_now(r.rt->clock()) +
                         std::chrono::duration_cast<keepsake::duration>(created * 3) + 500ms;
        for (std::size_t i = 0; i < objects; ++i) {
            dir.call(key_of(i), arm{due});
            if (hibernated) dir.terminate(key_of(i));
        }
        if (keepsake::alarm_clock_now(r.rt->clock()) >= due) state.SkipWithError("T passed while scheduling");
        lateness_ns = &late;
        const auto give_up = steady_clock::now() + 300s;
        while (late.size() < objects && steady_clock::now() < give_up) r.rt->run_for(1ms);
        lateness_ns = nullptr;
        if (late.size() != objects) state.SkipWithError("not every alarm fired");
        state.counters["fired_per_s"] =
            static_cast<double>(objects) / (static_cast<double>(*std::max_element(late.begin(), late.end())) * 1e-9);
        state.counters["late_p50_ms"] = percentile(late, 0.5) * 1e-6;
        state.counters["late_p99_ms"] = percentile(late, 0.99) * 1e-6;
        state.counters["late_max_ms"] = static_cast<double>(late.back()) * 1e-6;
        state.counters["late_min_us"] = static_cast<double>(late.front()) * 1e-3;
    }
    state.counters["alarms"] = static_cast<double>(objects);
}
BENCHMARK(BM_alarm_lateness)->Arg(0)->Arg(1)->Iterations(1)->Repetitions(1)->Unit(benchmark::kMillisecond);

} // namespace

int main(int argc, char** argv) {
    ::mallopt(M_ARENA_MAX, 1);  // one heap for every thread: mallinfo2 sees CAF's scheduler too
    keepsake::set_crash_reports(false);
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
