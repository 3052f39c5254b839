// Commit and restore beside their floors in the same binary: raw memcpy of
// the same bytes, and memcpy + XXH3 (what a checksummed copy must cost).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include <keepsake/keepsake.hpp>

namespace {

template <std::size_t N>
struct state {
    unsigned char bytes[N];
};

// One segment for the whole run, in /dev/shm like a user's.
keepsake::segment& bench_segment() {
    static keepsake::segment s = [] {
        const std::string name = "bench-" + std::to_string(::getpid());
        keepsake::segment_options options;
        options.size = 64u << 20;
        keepsake::segment::remove(name);
        keepsake::segment opened(name, options);
        ::unlink(opened.path().c_str());  // gone from /dev/shm; the mapping lives on
        return opened;
    }();
    return s;
}

template <std::size_t N>
void BM_memcpy(benchmark::State& run) {
    auto source = std::make_unique<state<N>>();
    auto target = std::make_unique<state<N>>();
    std::memset(source->bytes, 7, N);
    for (auto _ : run) {
        source->bytes[0]++;
        std::memcpy(target->bytes, source->bytes, N);
        benchmark::DoNotOptimize(target->bytes);
        benchmark::ClobberMemory();
    }
    run.SetBytesProcessed(static_cast<std::int64_t>(run.iterations() * N));
}

template <std::size_t N>
void BM_memcpy_xxh3(benchmark::State& run) {
    auto source = std::make_unique<state<N>>();
    auto target = std::make_unique<state<N>>();
    std::memset(source->bytes, 7, N);
    for (auto _ : run) {
        source->bytes[0]++;
        std::memcpy(target->bytes, source->bytes, N);
        benchmark::DoNotOptimize(keepsake::detail::hash_bytes(target->bytes, N));
        benchmark::ClobberMemory();
    }
    run.SetBytesProcessed(static_cast<std::int64_t>(run.iterations() * N));
}

template <std::size_t N>
void BM_commit(benchmark::State& run) {
    keepsake::keeper<state<N>> k(bench_segment(), "commit-" + std::to_string(N));
    auto value = std::make_unique<state<N>>();
    std::memset(value->bytes, 7, N);
    for (auto _ : run) {
        value->bytes[0]++;
        benchmark::DoNotOptimize(k.commit(*value));
    }
    run.SetBytesProcessed(static_cast<std::int64_t>(run.iterations() * N));
}

template <std::size_t N>
void BM_restore(benchmark::State& run) {
    keepsake::keeper<state<N>> k(bench_segment(), "restore-" + std::to_string(N));
    auto value = std::make_unique<state<N>>();
    std::memset(value->bytes, 7, N);
    k.commit(*value);
    k.commit(*value);
    for (auto _ : run) {
        benchmark::DoNotOptimize(k.restore_into(*value));
        benchmark::ClobberMemory();
    }
    run.SetBytesProcessed(static_cast<std::int64_t>(run.iterations() * N));
}

#define KEEPSAKE_BENCH_SIZES(fn) \
    BENCHMARK_TEMPLATE(fn, 64);   \
    BENCHMARK_TEMPLATE(fn, 4096); \
    BENCHMARK_TEMPLATE(fn, 65536); \
    BENCHMARK_TEMPLATE(fn, 1048576)

KEEPSAKE_BENCH_SIZES(BM_memcpy);
KEEPSAKE_BENCH_SIZES(BM_memcpy_xxh3);
KEEPSAKE_BENCH_SIZES(BM_commit);
KEEPSAKE_BENCH_SIZES(BM_restore);

} // namespace

BENCHMARK_MAIN();
