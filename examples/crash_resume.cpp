// crash_resume: a counter that commits every step into a segment, so a run
// killed at any instant is resumed by the next run from its last commit.
//
//   crash_resume --segment NAME [--steps N] [--interval-ms MS] [--dir DIR]
//   crash_resume --segment NAME --remove
//
// Prints "recovered <value> generation <g> previous-owner <none|clean|crashed>"
// on start and "committed <value>" after each commit returns.
#include <keepsake/keepsake.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

namespace {

struct arguments {
    std::string segment;
    std::string directory;
    long steps = -1;  // -1: until killed
    long interval_ms = 50;
    bool remove = false;
};

[[noreturn]] void usage(const char* why) {
    std::fprintf(stderr,
                 "crash_resume: %s\n"
                 "usage: crash_resume --segment NAME [--steps N] [--interval-ms MS] [--dir DIR]\n"
                 "       crash_resume --segment NAME --remove\n",
                 why);
    std::exit(2);
}

arguments parse(int argc, char** argv) {
    arguments parsed;
    for (int i = 1; i < argc; ++i) {
        const std::string flag = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) usage(("missing value after " + flag).c_str());
            return argv[++i];
        };
        if (flag == "--segment") parsed.segment = value();
        else if (flag == "--dir") parsed.directory = value();
        else if (flag == "--steps") parsed.steps = std::atol(value().c_str());
        else if (flag == "--interval-ms") parsed.interval_ms = std::atol(value().c_str());
        else if (flag == "--remove") parsed.remove = true;
        else usage(("unknown option " + flag).c_str());
    }
    if (parsed.segment.empty()) usage("--segment NAME is required");
    return parsed;
}

const char* previous_owner(const keepsake::segment& s) {
    switch (s.outcome()) {
    case keepsake::open_outcome::created: return "none";
    case keepsake::open_outcome::reopened_clean: return "clean";
    case keepsake::open_outcome::reopened_after_crash: return "crashed";
    }
    return "none";
}

int run(const arguments& args) {
    if (args.remove) {
        const bool removed = keepsake::segment::remove(args.segment, args.directory);
        std::printf("%s %s\n", removed ? "removed" : "absent", args.segment.c_str());
        return 0;
    }
    keepsake::segment_options options;
    options.directory = args.directory;
    keepsake::segment segment(args.segment, options);
    keepsake::keeper<std::uint64_t> counter(segment, "counter");

    std::uint64_t value = 0;
    const auto found = counter.restore_into(value);
    std::printf("recovered %llu generation %llu previous-owner %s\n", static_cast<unsigned long long>(value),
                static_cast<unsigned long long>(found ? found->generation : 0), previous_owner(segment));
    std::fflush(stdout);

    for (long step = 0; args.steps < 0 || step < args.steps; ++step) {
        ++value;
        counter.commit(value);
        std::printf("committed %llu\n", static_cast<unsigned long long>(value));
        std::fflush(stdout);
        if (args.interval_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(args.interval_ms));
    }
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    try {
        return run(parse(argc, argv));
    } catch (const keepsake::error& failure) {
        std::fprintf(stderr, "crash_resume: %s\n", failure.what());
        return 1;
    }
}
