// bench/objects_workload.hpp: what the object benches run (objects_bench.cpp,
// heap_sites_bench.cpp): a player object with a score and an alarm, its
// directory, and a private segment with a pumped runtime on it.
// Linkage: in objects_bench.cpp these types are in an unnamed namespace, as
// they were when its numbers in the README were first measured: the
// library's code instantiated for them has internal linkage, and the
// compiler inlines more of it (an activation from shared memory measured
// 1.53-1.58 us so, 1.63-1.70 us with the types in a named namespace, as
// most programs' types are: three runs of each, interleaved). A bench that
// wants the frames named (heap_sites_bench.cpp's call stacks, a profile)
// defines KEEPSAKE_WORKLOAD_NAMED_FRAMES first.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <keepsake/keepsake.hpp>
#include <keepsake/objects/directory.hpp>

#ifdef KEEPSAKE_WORKLOAD_NAMED_FRAMES
#define KEEPSAKE_WORKLOAD_BEGIN namespace objects_workload {
#define KEEPSAKE_WORKLOAD_END }
#else
#define KEEPSAKE_WORKLOAD_BEGIN namespace objects_workload { namespace {
#define KEEPSAKE_WORKLOAD_END } }
#endif

KEEPSAKE_WORKLOAD_BEGIN

using std::chrono::steady_clock;

struct player {
    std::uint64_t score = 0;
    std::uint64_t alarms_fired = 0;
};
struct add {
    std::uint64_t points = 0;
};
struct arm {  // sets alarm "tick" at `due` on the alarm clock, from the handler
    keepsake::duration due{};
};

// Where the alarm handler writes how late it ran (ns), when a bench asks.
inline std::vector<std::int64_t>* lateness_ns = nullptr;

struct player_handler {
    std::uint64_t operator()(player& p, const add& a) const { return p.score += a.points; }
    bool operator()(player&, const arm& a, keepsake::object_context<player>& context) const {
        context.schedule_alarm_at("tick", a.due);
        return true;
    }
    void operator()(player& p, const keepsake::alarm_fired& fired, keepsake::object_context<player>& context) const {
        ++p.alarms_fired;
        if (lateness_ns != nullptr) lateness_ns->push_back((context.now() - fired.due).count());
    }
};
using players = keepsake::object_directory<player, player_handler>;
using players_spec = keepsake::directory_spec<player, player_handler>;

inline std::size_t env_count(const char* name, std::size_t fallback) {
    const char* value = std::getenv(name);
    return value != nullptr && *value != '\0' ? std::strtoull(value, nullptr, 10) : fallback;
}

inline std::string key_of(std::size_t index) { return "p" + std::to_string(index); }

inline std::int64_t ns_since(steady_clock::time_point began) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(steady_clock::now() - began).count();
}

inline double percentile(std::vector<std::int64_t>& all, double quantile) {
    if (all.empty()) return 0;
    std::sort(all.begin(), all.end());
    return static_cast<double>(all[static_cast<std::size_t>(quantile * static_cast<double>(all.size() - 1))]);
}

// A private segment directory for `objects` objects (each a state key and
// a registry record key), removed with it; and a pumped runtime on it.
struct rig {
    std::string directory;
    std::unique_ptr<keepsake::segment> seg;
    std::unique_ptr<keepsake::runtime> rt;

    // guard_pages unless `live_fibers` passes what vm.max_map_count allows
    // (two mappings a guarded fiber), or `heap_stacks`.
    explicit rig(std::size_t objects, std::size_t live_fibers, std::shared_ptr<keepsake::clock> time = nullptr,
                 bool heap_stacks = false) {
        static int made = 0;
        directory = "/dev/shm/keepsake-objects-bench-" + std::to_string(::getpid()) + "-" + std::to_string(made++);
        std::filesystem::remove_all(directory);
        std::filesystem::create_directories(directory);
        keepsake::segment_options options;
        options.directory = directory;
        options.max_entries = static_cast<std::uint32_t>(2 * objects + 4096);
        options.size = (64u << 20) + std::uint64_t{options.max_entries} * 192;
        options.max_size = std::max<std::uint64_t>(std::uint64_t{1} << 30, std::uint64_t{objects} * 8192);
        seg = std::make_unique<keepsake::segment>("objects", options);
        keepsake::runtime_options made_rt;
        made_rt.threads = 0;  // pumped by the bench's thread: calls are direct, nothing crosses threads
        made_rt.time = std::move(time);
        made_rt.stack_size = 16 * 1024;
        made_rt.default_segment = seg.get();
        made_rt.guard_pages = live_fibers < 30000 && !heap_stacks;
        rt = std::make_unique<keepsake::runtime>(made_rt);
    }
    ~rig() {
        rt.reset();
        seg.reset();
        std::filesystem::remove_all(directory);
    }
    std::uint64_t segment_bytes() const {
        std::uint64_t total = 0;
        for (const auto& file : std::filesystem::directory_iterator(directory))
            if (file.is_regular_file()) total += file.file_size();
        return total;
    }
};

inline players_spec spec_for(keepsake::store* durable = nullptr) {
    players_spec spec;
    spec.name = "players";
    spec.hibernate_after = keepsake::duration::zero();  // only the bench hibernates them
    spec.durable = durable;
    return spec;
}

KEEPSAKE_WORKLOAD_END  // namespace objects_workload
