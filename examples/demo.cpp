// demo: what scripts/demo.sh runs. A supervised unit counts, committing each
// count to shared memory; every few counts its worker throws and is
// restarted with its state. An exporter copies the count to an SQLite store,
// so it also survives a reboot.
//
//   demo --store PATH [--segment NAME] [--crash-every N] [--interval-ms MS]
//
// The worker throws on its N-th count (7: after 6 committed counts), so each
// worker it restarts counts N - 1 more before its own crash.
// Runs until SIGTERM or SIGINT (a clean stop: the unit commits, the exporter
// exports everything) or until killed. Each line it prints is one event:
//   start: counter at N (initial | from shared memory | from the store, generation G)
//   count N
//   crash at N: <reason>
//   restart: counter at N, from its last commit (restart R)
//   stop: counter at N, exported to the store
#include <keepsake/keepsake.hpp>
#include <keepsake/stores/sqlite_store.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include <pthread.h>

namespace {

struct counter {
    long value = 0;
};

struct arguments {
    std::string store;
    std::string segment = "demo";
    long crash_every = 7;
    long interval_ms = 100;
};

[[noreturn]] void usage(const std::string& why) {
    std::fprintf(stderr,
                 "demo: %s\n"
                 "usage: demo --store PATH [--segment NAME] [--crash-every N] [--interval-ms MS]\n",
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
        if (flag == "--store") parsed.store = value();
        else if (flag == "--segment") parsed.segment = value();
        else if (flag == "--crash-every") parsed.crash_every = std::atol(value().c_str());
        else if (flag == "--interval-ms") parsed.interval_ms = std::atol(value().c_str());
        else usage("unknown option " + flag);
    }
    if (parsed.store.empty()) usage("--store PATH is required");
    if (parsed.crash_every < 1 || parsed.interval_ms < 1) usage("--crash-every and --interval-ms are at least 1");
    return parsed;
}

const char* from_where(const keepsake::start_info& info) {
    switch (info.source) {
    case keepsake::recovery_source::shared_memory: return "from shared memory";
    case keepsake::recovery_source::store: return "from the store";
    case keepsake::recovery_source::initial: return "initial";
    }
    return "?";
}

} // namespace

int main(int argc, char** argv) {
    const arguments args = parse(argc, argv);
    // SIGTERM and SIGINT are taken by sigwait below, on this thread only:
    // blocked before any other thread starts, so every thread inherits it.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

    keepsake::segment segment(args.segment);
    keepsake::sqlite_store store(args.store);
    keepsake::runtime runtime({1, nullptr, 128 * 1024, &segment});

    keepsake::unit_spec<counter> spec;
    spec.name = "counter";
    spec.recover_from = &store;  // the first start takes the newest of shared memory and the store
    spec.init = [](counter& state, const keepsake::start_info& info) {
        if (info.restarts == 0)
            std::printf("start: counter at %ld (%s, generation %llu)\n", state.value, from_where(info),
                        static_cast<unsigned long long>(info.generation));
        else
            std::printf("restart: counter at %ld, from its last commit (restart %llu)\n", state.value,
                        static_cast<unsigned long long>(info.restarts));
        std::fflush(stdout);
    };
    const long crash_every = args.crash_every;
    const auto interval = std::chrono::milliseconds(args.interval_ms);
    spec.loop = [crash_every, interval](keepsake::unit_context<counter>& context) {
        long made = 0;  // by this worker: a restarted one counts afresh
        while (!context.stop_requested()) {
            context.sleep_for(interval);
            if (context.stop_requested()) break;
            const long value = ++context.state().value;
            if (++made == crash_every) {
                // Not committed: the restart goes back to value - 1.
                std::printf("crash at %ld: a bug threw\n", value);
                std::fflush(stdout);
                throw std::runtime_error("a bug");
            }
            context.commit();  // from here on, no crash, kill or segfault loses it
            std::printf("count %ld\n", value);
            std::fflush(stdout);
        }
    };
    keepsake::supervisor_spec tree;
    tree.name = "app";
    tree.children.push_back(keepsake::child(spec));

    keepsake::exporter_options export_options;
    export_options.interval = std::chrono::milliseconds(200);
    keepsake::exporter out(segment, store, export_options);
    auto app = keepsake::start_supervisor(runtime, tree);

    int received = 0;
    sigwait(&stop_signals, &received);
    keepsake::stop_supervisor(runtime, app);  // the unit commits what it has
    const bool exported = out.stop();         // and everything committed goes to the store
    counter last{-1};
    if (const auto kept = store.get("counter")) keepsake::decode_into(kept->bytes.data(), kept->bytes.size(), last);
    std::printf("stop: counter at %ld, %s\n", last.value, exported ? "exported to the store" : "NOT all exported");
    return exported ? 0 : 1;
}
