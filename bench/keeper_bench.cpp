// Commit and restore beside their floors in the same binary: raw memcpy of
// the same bytes, and memcpy + XXH3 (what a checksummed copy must cost).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include <cereal/types/vector.hpp>

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

// --- slots that grow ---------------------------------------------------
// A new key's first commit of a 4 KiB cereal state: into slots made large
// enough up front, beside slots that start small (64 B, the default) and
// are outgrown, so the commit moves the key. Both make and remove the key.
struct bytes_state {
    std::vector<unsigned char> bytes;
    template <class Archive>
    void serialize(Archive& archive) { archive(bytes); }
};

void new_key_commit(benchmark::State& run, std::uint64_t capacity) {
    bytes_state value{std::vector<unsigned char>(4096, 7)};
    keepsake::keeper_options<bytes_state> options;
    options.capacity = capacity;
    for (auto _ : run) {
        {
            keepsake::keeper<bytes_state> k(bench_segment(), "new-key", options);
            value.bytes[0]++;
            benchmark::DoNotOptimize(k.commit(value));
        }
        bench_segment().remove_key("new-key");
    }
}

void BM_new_key_commit_fits(benchmark::State& run) { new_key_commit(run, 8192); }
void BM_new_key_commit_grows(benchmark::State& run) { new_key_commit(run, 0); }
BENCHMARK(BM_new_key_commit_fits);
BENCHMARK(BM_new_key_commit_grows);

// --- side tables ------------------------------------------------------
// A commit that changes 1 of 10 000 table entries, beside a commit of the
// state alone and a commit of the whole collection held in the state.
struct entity {
    std::uint64_t id;
    double x, y;
    std::uint32_t hp, flags;
    template <class Archive>
    void serialize(Archive& archive) { archive(id, x, y, hp, flags); }  // for whole_world's vector
};
struct small_world {
    std::uint64_t tick;
    std::uint64_t entities;
};
struct whole_world {
    std::uint64_t tick = 0;
    std::vector<entity> entities;
    template <class Archive>
    void serialize(Archive& archive) { archive(tick, entities); }
};

void BM_table_commit_one_of_10000(benchmark::State& run) {
    keepsake::keeper<small_world> k(bench_segment(), "table-world");
    auto& entities = k.table<std::uint64_t, entity>("entities");
    for (std::uint64_t id = 0; id < 10000; ++id) entities.put(id, entity{id, 1.0, 2.0, 100, 0});
    small_world world{0, 10000};
    k.commit(world);
    std::uint64_t next = 0;
    for (auto _ : run) {
        const std::uint64_t id = next++ % 10000;
        entities.find_for_update(id)->hp++;
        ++world.tick;
        benchmark::DoNotOptimize(k.commit(world));
    }
}

void BM_state_commit_alone(benchmark::State& run) {
    keepsake::keeper<small_world> k(bench_segment(), "state-world");
    small_world world{0, 10000};
    for (auto _ : run) {
        ++world.tick;
        benchmark::DoNotOptimize(k.commit(world));
    }
}

void BM_whole_collection_commit(benchmark::State& run) {
    keepsake::keeper<whole_world> k(bench_segment(), "whole-world");
    whole_world world;
    for (std::uint64_t id = 0; id < 10000; ++id) world.entities.push_back(entity{id, 1.0, 2.0, 100, 0});
    k.commit(world);
    std::uint64_t next = 0;
    for (auto _ : run) {
        world.entities[next++ % 10000].hp++;
        ++world.tick;
        benchmark::DoNotOptimize(k.commit(world));
    }
}
BENCHMARK(BM_table_commit_one_of_10000);
BENCHMARK(BM_state_commit_alone);
BENCHMARK(BM_whole_collection_commit);

} // namespace

BENCHMARK_MAIN();
