// Where an idle object's heap goes: every allocation made while N objects
// start (each answers one call) is noted with the call stack that made it;
// those still live afterwards are summed by call site, and each site holding
// at least 4 bytes an object is printed with the frames that name it. The
// sum is what BM_memory_per_object (objects_bench.cpp) reports as the heap
// per idle object, here cut into its parts: the unit's core, the registry's
// and the directory's map nodes, the tables' growth.
//
//   build-release/bench/keepsake_heap_sites_bench [--benchmark_counters_tabular=true]
//   KEEPSAKE_HEAP_OBJECTS=N (2 000 by default)
//
// The sizes are malloc's usable sizes plus its 8-byte header, as mallinfo2
// counts them. Symbols come from the executable's dynamic symbol table
// (linked with -rdynamic).
#include <benchmark/benchmark.h>

#include <cxxabi.h>
#include <execinfo.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#define KEEPSAKE_WORKLOAD_NAMED_FRAMES  // its call stacks name the library's frames
#include "objects_workload.hpp"

namespace {

// --- the allocation notes -----------------------------------------------------
// Each block carries a 16-byte header naming its call site (-1: made while
// not noting). Sites are kept in fixed arrays: noting allocates nothing.

constexpr int max_frames = 14;
constexpr int max_sites = 4096;
constexpr std::size_t header_bytes = 16;

struct site {
    void* frames[max_frames];
    int depth;
    std::size_t live;   // blocks
    std::size_t bytes;  // malloc's usable size and header of each
};

site sites[max_sites];
int site_count = 0;
bool noting = false;

int site_of(void* const* frames, int depth) noexcept {
    for (int index = 0; index < site_count; ++index)
        if (sites[index].depth == depth && std::equal(frames, frames + depth, sites[index].frames)) return index;
    if (site_count == max_sites) return max_sites - 1;  // the rest lumped into the last
    std::copy(frames, frames + depth, sites[site_count].frames);
    sites[site_count].depth = depth;
    return site_count++;
}

std::size_t charged(void* raw) noexcept { return malloc_usable_size(raw) + 8 - header_bytes; }

void* noted_new(std::size_t size) {
    auto* raw = static_cast<char*>(std::malloc(size + header_bytes));
    if (raw == nullptr) throw std::bad_alloc();
    int where = -1;
    if (noting) {
        noting = false;  // backtrace may allocate once, on its first call
        void* frames[max_frames];
        where = site_of(frames, backtrace(frames, max_frames));
        ++sites[where].live;
        sites[where].bytes += charged(raw);
        noting = true;
    }
    std::memcpy(raw, &where, sizeof(where));
    return raw + header_bytes;
}

void noted_delete(void* block) noexcept {
    if (block == nullptr) return;
    char* raw = static_cast<char*>(block) - header_bytes;
    int where = -1;
    std::memcpy(&where, raw, sizeof(where));
    if (where >= 0) {
        --sites[where].live;
        sites[where].bytes -= charged(raw);
    }
    std::free(raw);
}

// The frame's function, demangled, or its raw text.
std::string function_of(void* frame) {
    char** names = backtrace_symbols(&frame, 1);
    if (names == nullptr) return "?";
    std::string text = names[0];
    std::free(names);
    const auto open = text.find('('), plus = text.find('+', open == std::string::npos ? 0 : open);
    if (open == std::string::npos || plus == std::string::npos || plus == open + 1) return text;
    const std::string mangled = text.substr(open + 1, plus - open - 1);
    int status = 0;
    std::unique_ptr<char, void (*)(void*)> readable(abi::__cxa_demangle(mangled.c_str(), nullptr, nullptr, &status),
                                                   std::free);
    return status == 0 && readable ? std::string(readable.get()) : mangled;
}

// The frames worth reading: keepsake's own, without the allocator's.
std::vector<std::string> naming_frames(const site& at) {
    std::vector<std::string> named;
    for (int index = 1; index < at.depth && named.size() < 3; ++index) {
        std::string function = function_of(at.frames[index]);
        if (function.find("keepsake::") == std::string::npos || function.rfind("std::", 0) == 0) continue;
        if (function.size() > 150) function = function.substr(0, 147) + "...";
        named.push_back(std::move(function));
    }
    return named;
}

// Prints the sites holding at least 4 B an object, largest first; returns
// the heap of every site, an object.
double print_sites(std::size_t objects) {
    const auto n = static_cast<double>(objects);
    std::vector<int> shown;
    double total = 0;
    for (int index = 0; index < site_count; ++index) {
        total += static_cast<double>(sites[index].bytes);
        if (static_cast<double>(sites[index].bytes) >= 4 * n) shown.push_back(index);
    }
    std::sort(shown.begin(), shown.end(), [](int a, int b) { return sites[a].bytes > sites[b].bytes; });
    std::printf("heap live after %zu idle objects started: %.1f B an object\n", objects, total / n);
    for (int index : shown) {
        std::printf("%8.1f B an object, %zu blocks:\n", static_cast<double>(sites[index].bytes) / n,
                    sites[index].live);
        for (const std::string& function : naming_frames(sites[index])) std::printf("      %s\n", function.c_str());
    }
    return total / n;
}

void BM_heap_sites(benchmark::State& state) {
    using namespace objects_workload;
    const std::size_t objects = env_count("KEEPSAKE_HEAP_OBJECTS", 2000);
    for (auto _ : state) {
        rig r(objects, objects);
        players dir(*r.rt, spec_for());
        dir.call("warm", add{1});  // the directory's first activation makes what every later one shares
        std::fill(std::begin(sites), std::end(sites), site{});
        site_count = 0;
        noting = true;
        for (std::size_t index = 0; index < objects; ++index) dir.call(key_of(index), add{1});
        noting = false;
        state.counters["heap_per_object_B"] = print_sites(objects);
    }
}
BENCHMARK(BM_heap_sites)->Iterations(1)->Unit(benchmark::kMillisecond);

} // namespace

void* operator new(std::size_t size) { return noted_new(size); }
void* operator new[](std::size_t size) { return noted_new(size); }
void operator delete(void* block) noexcept { noted_delete(block); }
void operator delete[](void* block) noexcept { noted_delete(block); }
void operator delete(void* block, std::size_t) noexcept { noted_delete(block); }
void operator delete[](void* block, std::size_t) noexcept { noted_delete(block); }

BENCHMARK_MAIN();
