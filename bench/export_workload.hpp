// bench/export_workload.hpp: the export benches' workload (export_bench.cpp,
// postgres_bench.cpp): 10 000 keys of 64 B in one segment, all changed
// before each export, batches of 1024 records.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <unistd.h>

#include <benchmark/benchmark.h>

#include <keepsake/keepsake.hpp>

namespace export_workload {

inline constexpr std::size_t key_count = 10000;
inline constexpr std::size_t batch_size = 1024;

struct state64 {
    std::uint64_t words[8];
};

// One segment with key_count keepers for the whole run.
struct workload {
    keepsake::segment segment;
    std::vector<keepsake::keeper<state64>> keepers;
    std::uint64_t round = 0;

    workload() : segment(open_segment()) {
        keepers.reserve(key_count);
        for (std::size_t i = 0; i < key_count; ++i) keepers.emplace_back(segment, "bench/k" + std::to_string(i));
    }

    static keepsake::segment open_segment() {
        const std::string name = "export-bench-" + std::to_string(::getpid());
        keepsake::segment_options options;
        options.size = 16u << 20;
        options.max_entries = key_count + 16;
        keepsake::segment::remove(name);
        keepsake::segment opened(name, options);
        ::unlink(opened.path().c_str());  // gone from /dev/shm; the mapping lives on
        return opened;
    }

    void change_all() {
        ++round;
        state64 value{};
        for (std::size_t i = 0; i < key_count; ++i) {
            std::fill(std::begin(value.words), std::end(value.words), round * key_count + i);
            keepers[i].commit(value);
        }
    }
};

inline workload& shared_workload() {
    static workload w;
    return w;
}

inline keepsake::exporter_options bench_options() {
    keepsake::exporter_options options;
    options.interval = std::chrono::hours(1);  // passes on flush only
    options.batch_size = batch_size;
    return options;
}

// The ratio an export target is judged on, in pairs: each iteration times
// one raw round (Raw::round(), the same rows through the medium's plain
// API) and one export round (every key changed, untimed, then a flush), so
// slow drifts of the disk or the server hit both alike. Counters:
// export_vs_raw (raw time / export time), and each side's ms a round.
template <class Raw>
void paired_export_vs_raw(benchmark::State& run, Raw& raw, keepsake::store& target) {
    workload& w = shared_workload();
    keepsake::exporter out(w.segment, target, bench_options());
    using seconds = std::chrono::duration<double>;
    seconds raw_time{0}, export_time{0};
    for (auto _ : run) {
        auto began = std::chrono::steady_clock::now();
        raw.round();
        raw_time += std::chrono::steady_clock::now() - began;
        run.PauseTiming();
        w.change_all();
        run.ResumeTiming();
        began = std::chrono::steady_clock::now();
        if (!out.flush(std::chrono::minutes(5))) run.SkipWithError("flush timed out");
        export_time += std::chrono::steady_clock::now() - began;
    }
    const auto rounds = static_cast<double>(run.iterations());
    run.counters["raw_ms_per_round"] = 1000 * raw_time.count() / rounds;
    run.counters["export_ms_per_round"] = 1000 * export_time.count() / rounds;
    run.counters["export_vs_raw"] = raw_time.count() / export_time.count();
}

} // namespace export_workload
