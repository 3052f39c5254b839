// Export throughput beside its floor in the same binary (a raw batched
// SQLite upsert of the same rows, same table shape, same synchronous level
// and batch size), the same workload on the file and memory stores, and a
// worker's commit latency with and without an exporter running.
//
// Workload: 10 000 keys of 64 B, all changed before each export; 10 rounds
// make the 100 000 changed states (the file store, one fsync and two
// renames per record, does one round). Keys are kept few enough that
// creating them stays quick (a segment finds a key by a linear scan).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include <keepsake/keepsake.hpp>
#include <keepsake/stores/file_store.hpp>
#include <keepsake/stores/memory_store.hpp>
#include <keepsake/stores/sqlite_store.hpp>

#include "export_workload.hpp"

namespace {

using export_workload::batch_size;
using export_workload::bench_options;
using export_workload::shared_workload;
using export_workload::key_count;
using export_workload::state64;
using export_workload::workload;

// The run's store files, in /tmp (a real disk), removed at exit.
struct scratch_dir {
    std::string path = std::filesystem::temp_directory_path().string() + "/keepsake-bench-" + std::to_string(::getpid());
    scratch_dir() { std::filesystem::create_directories(path); }
    ~scratch_dir() {
        std::error_code ignored;
        std::filesystem::remove_all(path, ignored);
    }
};

std::string scratch(const std::string& name) {
    static scratch_dir dir;
    return dir.path + "/" + name;
}


// Each iteration changes every key (untimed) and times one flush.
void export_rounds(benchmark::State& run, keepsake::store& target) {
    workload& w = shared_workload();
    keepsake::exporter out(w.segment, target, bench_options());
    for (auto _ : run) {
        run.PauseTiming();
        w.change_all();
        run.ResumeTiming();
        if (!out.flush(std::chrono::minutes(5))) run.SkipWithError("flush timed out");
    }
    run.SetItemsProcessed(static_cast<std::int64_t>(run.iterations() * key_count));
}

void BM_export_sqlite(benchmark::State& run) {
    const std::string path = scratch("export.db");
    std::filesystem::remove(path);
    keepsake::sqlite_store store(path);
    export_rounds(run, store);
}

void BM_export_memory(benchmark::State& run) {
    keepsake::memory_store store;
    export_rounds(run, store);
}

void BM_export_file(benchmark::State& run) {
    const std::string path = scratch("files");
    std::filesystem::remove_all(path);
    keepsake::file_store store(path);
    export_rounds(run, store);
}

void check(int code, sqlite3* db, benchmark::State& run) {
    if (code != SQLITE_OK && code != SQLITE_DONE && code != SQLITE_ROW) run.SkipWithError(sqlite3_errmsg(db));
}

// The floor: the same rows upserted with a prepared statement, batch_size
// rows per transaction, WAL and synchronous=FULL as the store's default.
class raw_upserter {
public:
    raw_upserter(const std::string& path, benchmark::State& run) : run_(run) {
        std::filesystem::remove(path);
        check(sqlite3_open(path.c_str(), &db_), db_, run_);
        check(sqlite3_exec(db_, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                                "CREATE TABLE t (key BLOB PRIMARY KEY NOT NULL, generation INTEGER NOT NULL,"
                                " schema_version INTEGER NOT NULL, codec INTEGER NOT NULL, fingerprint INTEGER NOT NULL,"
                                " checksum INTEGER NOT NULL, data BLOB NOT NULL) WITHOUT ROWID",
                           nullptr, nullptr, nullptr),
              db_, run_);
        check(sqlite3_prepare_v2(db_,
                                 "INSERT INTO t VALUES (?1, ?2, 1, 1, 7, 9, ?3) ON CONFLICT(key) DO UPDATE SET"
                                 " generation = excluded.generation, schema_version = excluded.schema_version,"
                                 " codec = excluded.codec, fingerprint = excluded.fingerprint,"
                                 " checksum = excluded.checksum, data = excluded.data"
                                 " WHERE excluded.generation > t.generation",
                                 -1, &upsert_, nullptr),
              db_, run_);
        for (std::size_t i = 0; i < key_count; ++i) keys_.push_back("bench/k" + std::to_string(i));
    }
    raw_upserter(const raw_upserter&) = delete;
    raw_upserter& operator=(const raw_upserter&) = delete;
    ~raw_upserter() {
        sqlite3_finalize(upsert_);
        sqlite3_close(db_);
    }

    // Every key once, with new contents.
    void round() {
        ++round_;
        state64 value{};
        for (std::size_t i = 0; i < key_count; ++i) {
            if (i % batch_size == 0) sqlite3_exec(db_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr);
            std::fill(std::begin(value.words), std::end(value.words), static_cast<std::uint64_t>(round_) * key_count + i);
            sqlite3_bind_blob(upsert_, 1, keys_[i].data(), static_cast<int>(keys_[i].size()), SQLITE_STATIC);
            sqlite3_bind_int64(upsert_, 2, round_);
            sqlite3_bind_blob(upsert_, 3, &value, sizeof(value), SQLITE_STATIC);
            check(sqlite3_step(upsert_), db_, run_);
            sqlite3_reset(upsert_);
            if (i % batch_size == batch_size - 1 || i == key_count - 1)
                check(sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr), db_, run_);
        }
    }

private:
    benchmark::State& run_;
    sqlite3* db_ = nullptr;
    sqlite3_stmt* upsert_ = nullptr;
    std::vector<std::string> keys_;
    std::int64_t round_ = 0;
};

void BM_raw_sqlite_upsert(benchmark::State& run) {
    raw_upserter raw(scratch("raw.db"), run);
    for (auto _ : run) raw.round();
    run.SetItemsProcessed(static_cast<std::int64_t>(run.iterations() * key_count));
}

// The ratio the target is about, measured in pairs: each iteration times one
// raw round and one export round back to back, so the disk's slow drifts
// (fsync times here move by 2x between runs) hit both alike.
void BM_export_vs_raw_sqlite(benchmark::State& run) {
    raw_upserter raw(scratch("paired-raw.db"), run);
    const std::string path = scratch("paired-export.db");
    std::filesystem::remove(path);
    keepsake::sqlite_store store(path);
    export_workload::paired_export_vs_raw(run, raw, store);
}

// A worker commits the keys round-robin, timing each commit; beside it,
// nothing, an exporter to SQLite passing every millisecond (each pass finds
// every key changed), or a thread busy on its own memory.
enum class beside { nothing, exporter, busy_thread };

// A thread as busy as an exporter, on its own memory: how much any second
// busy thread costs a worker's commits on this machine.
struct busy_thread {
    std::atomic<bool> done{false};
    std::thread thread{[this] {
        std::vector<std::uint64_t> own(1u << 20);
        while (!done.load(std::memory_order_relaxed)) {
            for (auto& word : own) word = word * 3 + 1;
            benchmark::DoNotOptimize(own.data());
        }
    }};
    ~busy_thread() {
        done = true;
        thread.join();
    }
};

// Times `count` commits round-robin over the keys into took[from...].
void time_commits(workload& w, std::vector<std::uint32_t>& took, std::size_t from, std::size_t count) {
    state64 value{};
    for (std::size_t i = from; i < from + count; ++i) {
        value.words[0] = i;
        const auto start = std::chrono::steady_clock::now();
        w.keepers[i % key_count].commit(value);
        took[i] = static_cast<std::uint32_t>((std::chrono::steady_clock::now() - start).count());
    }
}

std::uint32_t percentile(std::vector<std::uint32_t>& took, double q) {
    std::sort(took.begin(), took.end());
    return took[static_cast<std::size_t>(q * static_cast<double>(took.size() - 1))];
}

keepsake::exporter_options busy_exporter_options() {
    auto options = bench_options();
    options.interval = std::chrono::milliseconds(1);
    return options;
}

void commit_latency(benchmark::State& run, beside other) {
    workload& w = shared_workload();
    const std::string path = scratch("latency.db");
    std::filesystem::remove(path);
    keepsake::sqlite_store store(path);
    constexpr std::size_t commits = 1000000;
    std::vector<std::uint32_t> took(commits);
    for (auto _ : run) {
        std::unique_ptr<keepsake::exporter> out;
        std::unique_ptr<busy_thread> busy;
        if (other == beside::busy_thread) busy = std::make_unique<busy_thread>();
        if (other == beside::exporter)
            out = std::make_unique<keepsake::exporter>(w.segment, store, busy_exporter_options());
        time_commits(w, took, 0, commits);
        if (out && !out->stop(std::chrono::minutes(1))) run.SkipWithError("stop timed out");
    }
    run.counters["p50_ns"] = percentile(took, 0.5);
    run.counters["p99_ns"] = percentile(took, 0.99);
    run.counters["p999_ns"] = percentile(took, 0.999);
}

// The p99 ratio the target is about, in pairs: blocks of commits alone and
// blocks with an exporter passing every millisecond, interleaved, so a noisy
// neighbour on the VM lands on both alike.
void BM_commit_latency_paired(benchmark::State& run) {
    workload& w = shared_workload();
    const std::string path = scratch("paired-latency.db");
    std::filesystem::remove(path);
    keepsake::sqlite_store store(path);
    constexpr std::size_t rounds = 20, block = 50000;
    std::vector<std::uint32_t> alone(rounds * block), exporting(rounds * block);
    for (auto _ : run) {
        for (std::size_t round = 0; round < rounds; ++round) {
            // Which block goes first alternates: neither always follows the other.
            if (round % 2 == 0) time_commits(w, alone, round * block, block);
            {
                keepsake::exporter out(w.segment, store, busy_exporter_options());
                time_commits(w, exporting, round * block, block);
                if (!out.stop(std::chrono::minutes(1))) run.SkipWithError("stop timed out");
            }
            if (round % 2 == 1) time_commits(w, alone, round * block, block);
        }
    }
    const double p99_alone = percentile(alone, 0.99), p99_exporting = percentile(exporting, 0.99);
    run.counters["p99_alone_ns"] = p99_alone;
    run.counters["p99_exporting_ns"] = p99_exporting;
    run.counters["p99_ratio"] = p99_exporting / p99_alone;
}

void BM_commit_latency_alone(benchmark::State& run) { commit_latency(run, beside::nothing); }
void BM_commit_latency_exporting(benchmark::State& run) { commit_latency(run, beside::exporter); }
void BM_commit_latency_busy_thread(benchmark::State& run) { commit_latency(run, beside::busy_thread); }

} // namespace

BENCHMARK(BM_raw_sqlite_upsert)->Iterations(10)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_export_sqlite)->Iterations(10)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_export_vs_raw_sqlite)->Iterations(10)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_export_memory)->Iterations(10)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_export_file)->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_commit_latency_alone)->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_commit_latency_exporting)->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_commit_latency_paired)->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_commit_latency_busy_thread)->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
