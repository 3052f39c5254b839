// bench_harness: a benchmark runner whose progress and results survive
// crashes, its own cases' and its process's.
//
// The runner is a keepsake unit whose committed state is the whole run: for
// each case its status, attempts, completions and result. Before a case it
// commits "running, attempt k"; after it, the result and "done". So:
//   - a case that throws crashes the worker; the unit restarts it from the
//     last commit, which says the case was cut short, and the runner retries
//     it once, then records it as failed with the exception's message;
//   - a case that segfaults kills the process; the next run finds the same
//     commit in shared memory, retries the case once, then records it as
//     crashed and goes on;
//   - a run killed with kill -9 resumes at the case it was in. A finished
//     case is never run again: its "done" is committed with its result.
//
//   bench_harness [--case-ms MS] [--log FILE] [--store DIR] [--segment NAME] [--reset]
//
// Rerun it until it prints "all N cases finished". --log appends "done NAME"
// to FILE after each case's result is committed. --store also exports the
// progress to a file store in DIR (every 100 ms and at the end), so it
// survives a reboot too: a run that finds no segment recovers from there.
#include <keepsake/keepsake.hpp>
#include <keepsake/stores/file_store.hpp>

#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

struct arguments {
    long case_ms = 200;
    std::string log;
    std::string store;
    std::string segment = "bench-harness";
    bool reset = false;
};

[[noreturn]] void usage(const std::string& why) {
    std::fprintf(stderr,
                 "bench_harness: %s\n"
                 "usage: bench_harness [--case-ms MS] [--log FILE] [--store DIR] [--segment NAME] [--reset]\n",
                 why.c_str());
    std::exit(2);
}

arguments parse(int argc, char** argv) {
    arguments parsed;
    for (int i = 1; i < argc; ++i) {
        const std::string flag = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) usage("missing value after " + flag);
            return argv[++i];
        };
        if (flag == "--case-ms") parsed.case_ms = std::atol(value().c_str());
        else if (flag == "--log") parsed.log = value();
        else if (flag == "--store") parsed.store = value();
        else if (flag == "--segment") parsed.segment = value();
        else if (flag == "--reset") parsed.reset = true;
        else usage("unknown option " + flag);
    }
    if (parsed.case_ms <= 0) usage("--case-ms must be positive");
    return parsed;
}

// --- the benchmark cases ----------------------------------------------------

// Keeps results alive so the optimiser cannot drop the work.
volatile std::uint64_t sink;

struct measurement {
    std::uint64_t iterations = 0;
    double ns_per_op = 0;
};

// Runs `body` repeatedly for about `ms` milliseconds.
template <class Body>
measurement time_for(long ms, Body body) {
    const auto start = clock_type::now();
    const auto until = start + std::chrono::milliseconds(ms);
    measurement out;
    do {
        for (int i = 0; i < 16; ++i) sink = body(out.iterations++);
    } while (clock_type::now() < until);
    out.ns_per_op = std::chrono::duration<double, std::nano>(clock_type::now() - start).count() /
                    static_cast<double>(out.iterations);
    return out;
}

measurement memcpy_64k(long ms, unsigned) {
    std::vector<char> from(64 * 1024, 'x'), to(64 * 1024);
    return time_for(ms, [&](std::uint64_t i) {
        std::memcpy(to.data(), from.data(), from.size());
        return static_cast<std::uint64_t>(to[i % to.size()]);
    });
}

measurement sort_10k(long ms, unsigned) {
    std::vector<int> input(10000), work;
    std::iota(input.begin(), input.end(), 0);
    std::shuffle(input.begin(), input.end(), std::mt19937(42));
    return time_for(ms, [&](std::uint64_t) {
        work = input;
        std::sort(work.begin(), work.end());
        return static_cast<std::uint64_t>(work[5000]);
    });
}

// Always throws, part-way through, as a broken benchmark does.
measurement parse_config(long ms, unsigned) {
    time_for(ms / 2, [](std::uint64_t i) { return i * 31; });
    throw std::runtime_error("config parse error: unexpected '}' at line 3");
}

measurement hash_map_1k(long ms, unsigned) {
    return time_for(ms, [](std::uint64_t i) {
        std::unordered_map<std::uint64_t, std::uint64_t> map;
        for (std::uint64_t k = 0; k < 1000; ++k) map[k * 2654435761u] = k + i;
        return static_cast<std::uint64_t>(map.size());
    });
}

// Throws on its first attempt only, as a flaky benchmark does.
measurement flaky_network(long ms, unsigned attempt) {
    if (attempt == 1) {
        time_for(ms / 2, [](std::uint64_t i) { return i; });
        throw std::runtime_error("connection reset by peer");
    }
    return time_for(ms, [](std::uint64_t i) { return i ^ (i >> 3); });
}

// A real segfault: a write to a page mapped with no access.
measurement null_deref(long ms, unsigned) {
    time_for(ms / 2, [](std::uint64_t i) { return i + 1; });
    void* page = mmap(nullptr, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) throw std::runtime_error("mmap failed");
    *static_cast<volatile int*>(page) = 1;  // SIGSEGV
    std::abort();                           // not reached
}

measurement string_build(long ms, unsigned) {
    return time_for(ms, [](std::uint64_t i) {
        std::string text;
        for (int k = 0; k < 100; ++k) text += std::to_string(i + static_cast<std::uint64_t>(k));
        return static_cast<std::uint64_t>(text.size());
    });
}

measurement sqrt_sum(long ms, unsigned) {
    return time_for(ms, [](std::uint64_t i) {
        double sum = 0;
        for (int k = 1; k <= 256; ++k) sum += std::sqrt(static_cast<double>(i + static_cast<std::uint64_t>(k)));
        return static_cast<std::uint64_t>(sum);
    });
}

struct bench_case {
    const char* name;
    measurement (*run)(long ms, unsigned attempt);
};

const bench_case cases[] = {
    {"memcpy_64k", memcpy_64k},   {"sort_10k", sort_10k},     {"parse_config", parse_config},
    {"hash_map_1k", hash_map_1k}, {"flaky_network", flaky_network}, {"null_deref", null_deref},
    {"string_build", string_build}, {"sqrt_sum", sqrt_sum},
};
constexpr std::uint32_t case_count = sizeof(cases) / sizeof(cases[0]);
constexpr std::uint32_t max_attempts = 2;

// --- the committed state ----------------------------------------------------

enum class status : std::uint32_t { pending, running, done, threw, crashed };

const char* to_string(status s) {
    switch (s) {
    case status::pending: return "pending";
    case status::running: return "running";
    case status::done: return "done";
    case status::threw: return "threw";
    case status::crashed: return "crashed";
    }
    return "?";
}

struct case_record {
    status state;
    std::uint32_t attempts;     // attempts started
    std::uint32_t completions;  // attempts that ran to the end (a repeated case would show 2)
    std::uint64_t iterations;
    double ns_per_op;
    char note[96];  // why it failed
};

// Trivially copyable, so it is committed as its bytes.
struct harness_state {
    std::uint32_t next;  // the case to run (or resume)
    std::uint32_t runs;  // processes that have worked on this run
    case_record results[case_count];
};

void set_note(case_record& record, const std::string& text) {
    std::snprintf(record.note, sizeof record.note, "%s", text.c_str());
}

void print_results(const harness_state& s) {
    std::printf("%-14s %-8s %8s %11s %12s %11s  %s\n", "case", "status", "attempts", "completions", "iterations",
                "ns/op", "note");
    for (std::uint32_t i = 0; i < case_count; ++i) {
        const case_record& r = s.results[i];
        std::printf("%-14s %-8s %8u %11u %12llu %11.1f  %s\n", cases[i].name, to_string(r.state), r.attempts,
                    r.completions, static_cast<unsigned long long>(r.iterations), r.ns_per_op, r.note);
    }
}

int run(const arguments& args) {
    keepsake::segment segment(args.segment);
    const std::string key = "progress";
    std::optional<keepsake::file_store> store;
    std::optional<keepsake::exporter> exporter;  // declared before the runtime: it exports the last commit
    if (!args.store.empty()) {
        store.emplace(args.store);
        if (args.reset) keepsake::forget(segment, *store, key, "bench/");
        {
            // The newer of shared memory and the store (after a reboot: the store).
            keepsake::keeper<harness_state> progress(segment, key);
            const auto found = keepsake::recover(progress, *store, harness_state{}, "bench/");
            std::printf("progress from %s\n", keepsake::to_string(found.source));
        }
        keepsake::exporter_options export_options;
        export_options.interval = std::chrono::milliseconds(100);
        export_options.prefix = "bench/";
        exporter.emplace(segment, *store, export_options);
    } else if (args.reset) {
        segment.remove_key(key);
    }

    keepsake::runtime_options options;
    options.threads = 0;  // this thread runs the cases
    options.default_segment = &segment;
    keepsake::runtime runtime(options);

    std::string crash_reason;  // the last exception that crashed the worker, in this process
    bool finished = false;
    harness_state end{};  // the final state, copied out by the runner

    keepsake::unit_spec<harness_state> runner;
    runner.name = key;
    runner.initial = harness_state{};
    runner.commit = keepsake::commit_policy::manual();  // the loop commits at each step
    runner.init = [&](harness_state& s, const keepsake::start_info& info) {
        if (info.restarts > 0) return;  // a restart in this process: the loop sees the cut-short case
        ++s.runs;
        if (info.restored)
            std::printf("resuming (run %u): %u of %u cases finished\n", s.runs, s.next, case_count);
        else
            std::printf("starting %u cases\n", case_count);
        std::fflush(stdout);
    };
    runner.loop = [&](keepsake::unit_context<harness_state>& context) {
        harness_state& s = context.state();
        while (s.next < case_count) {
            case_record& record = s.results[s.next];
            const bench_case& which = cases[s.next];
            if (record.state == status::running) {
                // The last attempt was cut short: by an exception (the worker was
                // restarted in this process) or by the death of a process.
                const bool threw = !crash_reason.empty();
                const std::string why = threw ? "threw: " + crash_reason : "the process died while it ran";
                crash_reason.clear();
                std::printf("case %s: attempt %u cut short (%s)\n", which.name, record.attempts, why.c_str());
                if (record.attempts >= max_attempts) {
                    record.state = threw ? status::threw : status::crashed;
                    set_note(record, why);
                    ++s.next;
                    context.commit();
                    std::printf("case %s: gave up after %u attempts\n", which.name, record.attempts);
                    std::fflush(stdout);
                    continue;
                }
            }
            ++record.attempts;
            record.state = status::running;
            context.commit();  // a crash from here on is seen by the next start
            std::printf("start %s attempt %u\n", which.name, record.attempts);
            std::fflush(stdout);

            const measurement result = which.run(args.case_ms, record.attempts);  // may throw, may segfault

            record.state = status::done;
            ++record.completions;
            record.iterations = result.iterations;
            record.ns_per_op = result.ns_per_op;
            set_note(record, "");
            ++s.next;
            context.commit();  // the result and "done", in one commit: a finished case is never rerun
            if (!args.log.empty()) {
                if (std::FILE* log = std::fopen(args.log.c_str(), "a")) {
                    std::fprintf(log, "done %s\n", which.name);
                    std::fclose(log);
                }
            }
            std::printf("done %s: %.1f ns/op\n", which.name, result.ns_per_op);
            std::fflush(stdout);
            context.yield();
        }
        end = s;
        finished = true;
    };
    auto unit = keepsake::start_unit(runtime, runner);
    unit.on_terminate([&](const keepsake::exit_reason& why, const harness_state&) {
        if (why.kind == keepsake::exit_kind::crashed) crash_reason = why.what;
    });

    while (!finished && unit.state() != keepsake::child_state::not_running)
        runtime.run_for(std::chrono::milliseconds(10));
    if (!finished) {
        std::fprintf(stderr, "bench_harness: the runner stopped before the last case\n");
        return 1;
    }
    std::printf("all %u cases finished after %u runs\n", case_count, end.runs);
    print_results(end);
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    try {
        return run(parse(argc, argv));
    } catch (const keepsake::error& failure) {
        std::fprintf(stderr, "bench_harness: %s\n", failure.what());
        return 1;
    }
}
