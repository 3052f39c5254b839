// Resume (issue 12): a segment holding N registered units (100 000 by
// default) of a dynamic supervisor, left by a process that was SIGKILLed;
// the time from opening the segment to every unit answering a call, beside
// the time it took to create them the first time. Where the time goes: the
// registry scan (reading every record), and the starts (fibers and stacks,
// keeper attach and restore, the record's write), measured apart; and the
// resume's page faults, with their floor on this machine (as many fresh
// pages touched, in the same run).
//
//   build-release/bench/keepsake_registry_bench [--units=N]
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>

#include <malloc.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <keepsake/keepsake.hpp>

namespace {

struct tally {
    std::uint64_t value = 0;
};
struct bump {};
struct tally_handler {
    std::uint64_t operator()(tally& state, const bump&) const { return ++state.value; }
};
using tally_unit = keepsake::unit<tally, tally_handler>;

int unit_count() {
    const char* value = std::getenv("KEEPSAKE_RESUME_UNITS");
    return value != nullptr && *value != '\0' ? std::atoi(value) : 100000;
}

void register_type() {
    keepsake::register_unit_type("tally", [](const std::string& key) {
        keepsake::unit_spec<tally, tally_handler> spec;
        spec.name = key;
        spec.direct_calls = false;  // every call through the mailbox, as from another fiber
        return spec;
    });
}

keepsake::segment_options options(const std::string& directory) {
    keepsake::segment_options made;
    made.directory = directory;
    made.size = 64u << 20;
    made.max_size = std::uint64_t{4} << 30;
    made.max_entries = 1u << 16;
    return made;
}

keepsake::runtime_options runtime_for(const keepsake::segment& seg) {
    keepsake::runtime_options made;
    made.threads = 0;  // pumped by the calling thread: every step on one thread, no cross-thread wake-ups
    made.stack_size = 16 * 1024;
    made.default_segment = &seg;
    made.guard_pages = false;  // 100 000 guarded stacks are past vm.max_map_count
    return made;
}

keepsake::supervisor_spec players() {
    keepsake::supervisor_spec spec;
    spec.name = "players";
    spec.flags.dynamic = true;
    return spec;
}

// Bytes malloc handed out (stacks come from their own mappings, not counted).
double heap_in_use() {
    const struct mallinfo2 info = ::mallinfo2();
    return static_cast<double>(info.uordblks + info.hblkhd);
}

// Page faults of this process so far (minor: a fresh page of heap, stack
// or segment; major: read from disk).
long page_faults() {
    struct rusage usage {};
    ::getrusage(RUSAGE_SELF, &usage);
    return usage.ru_minflt + usage.ru_majflt;
}

// The floor of `faults` page faults on this machine, in the same run: the
// seconds it takes to touch that many fresh anonymous pages. (A VM may take
// 20 times a bare machine's 0.25 us a fault: the resume's own faults are
// then most of its time, and this says how much.)
double fault_floor_seconds(long faults) {
    const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const std::size_t bytes = static_cast<std::size_t>(faults) * page;
    const auto began = std::chrono::steady_clock::now();
    void* mapped = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mapped == MAP_FAILED) return 0;
    auto* bytes_at = static_cast<volatile char*>(mapped);
    for (std::size_t at = 0; at < bytes; at += page) bytes_at[at] = 1;
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
    ::munmap(mapped, bytes);
    return took;
}

double seconds_since(std::chrono::steady_clock::time_point began) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
}

void call_all(keepsake::runtime& rt, int units) {
    for (int index = 0; index < units; ++index)
        keepsake::whereis<tally, tally_handler>(rt, "u" + std::to_string(index)).value().call(bump{});
}

void BM_resume_after_kill(benchmark::State& state) {
    const int units = unit_count();
    register_type();
    keepsake::set_crash_reports(false);
    const std::string directory = "/dev/shm/keepsake-resume-bench-" + std::to_string(::getpid());
    std::filesystem::create_directories(directory);
    double create_seconds = 0;
    double resume_seconds = 0;
    double scan_seconds = 0;
    double start_seconds = 0;
    double heap_per_unit = 0;
    long resume_faults = 0;
    double floor_seconds = 0;
    for (auto _ : state) {
        std::filesystem::remove_all(directory);
        std::filesystem::create_directories(directory);
        // The first run: a child creates the units, calls each once, says
        // how long that took, and is SIGKILLed.
        int pipe_ends[2];
        if (::pipe(pipe_ends) != 0) std::abort();
        const pid_t child = ::fork();
        if (child == 0) {
            keepsake::segment seg("resume", options(directory));
            keepsake::runtime rt(runtime_for(seg));
            const auto began = std::chrono::steady_clock::now();
            auto sup = keepsake::start_supervisor(rt, players());
            for (int index = 0; index < units; ++index) sup.start_child("tally", "u" + std::to_string(index));
            call_all(rt, units);
            const double took = seconds_since(began);
            if (::write(pipe_ends[1], &took, sizeof(took)) != sizeof(took)) std::_Exit(2);
            ::pause();
            std::_Exit(0);
        }
        double took = 0;
        if (::read(pipe_ends[0], &took, sizeof(took)) != sizeof(took)) std::abort();
        ::kill(child, SIGKILL);
        ::waitpid(child, nullptr, 0);
        ::close(pipe_ends[0]);
        ::close(pipe_ends[1]);
        create_seconds = took;

        // The next run: from opening the segment to every unit answering.
        const double heap_before = heap_in_use();
        const long faults_before = page_faults();
        const auto began = std::chrono::steady_clock::now();
        keepsake::segment seg("resume", options(directory));
        {
            const auto scan_began = std::chrono::steady_clock::now();
            const auto records = keepsake::detail::registry_book::of(seg.shared_impl())->records();
            scan_seconds = seconds_since(scan_began);
            if (records.size() != static_cast<std::size_t>(units)) state.SkipWithError("records missing");
        }
        keepsake::runtime rt(runtime_for(seg));
        const auto start_began = std::chrono::steady_clock::now();
        auto sup = keepsake::start_supervisor(rt, players());
        start_seconds = seconds_since(start_began);
        call_all(rt, units);
        resume_seconds = seconds_since(began);
        resume_faults = page_faults() - faults_before;
        heap_per_unit = (heap_in_use() - heap_before) / units;
        if (sup.count_children().active != static_cast<std::size_t>(units)) state.SkipWithError("units missing");
        rt.shutdown();
        floor_seconds = fault_floor_seconds(resume_faults);
    }
    std::filesystem::remove_all(directory);
    state.counters["units"] = units;
    state.counters["create_s"] = create_seconds;
    state.counters["resume_s"] = resume_seconds;
    state.counters["scan_s"] = scan_seconds;                    // reading every record (outside the resume)
    state.counters["start_all_s"] = start_seconds;              // the supervisor's resume: scan, fibers, restore
    state.counters["resume/create"] = resume_seconds / create_seconds;
    state.counters["faults_per_unit"] = static_cast<double>(resume_faults) / units;  // page faults of the resume
    state.counters["fault_floor_s"] = floor_seconds;  // as many fresh pages touched, in this run
    state.counters["resume_less_faults_s"] = resume_seconds - floor_seconds;
    state.counters["heap_per_resumed_unit_B"] = heap_per_unit;  // idle after its call; the runtime's tables included
}
BENCHMARK(BM_resume_after_kill)->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();

} // namespace

BENCHMARK_MAIN();
