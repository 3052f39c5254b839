// keepsake/objects/directory_spec.hpp: how a directory of objects is made,
// and what it says about one object.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "keepsake/clock.hpp"
#include "keepsake/restart_policy.hpp"
#include "keepsake/segment.hpp"
#include "keepsake/store.hpp"
#include "keepsake/unit_spec.hpp"

namespace keepsake {

// How an alarm whose handler crashed is retried: after `first`, then twice
// as long each time, `retries` times; then it is dropped and reported (an
// alarm_failed event and an error in the log).
struct alarm_retry {
    duration first = std::chrono::seconds(2);
    std::uint32_t retries = 6;
};

// Asked before an object starts, on the thread or fiber that starts it:
// it may refuse by throwing (the cluster tier's ownership check,
// cluster/node.hpp). Concurrent first callers wait for it, as for the start.
class activation_guard {
public:
    virtual ~activation_guard() = default;
    virtual void before_start(const std::string& directory, const std::string& key) = 0;
    // Whether the object's alarms fire here: a directory loads (and fires)
    // only those of the objects it serves; an object started later brings
    // its alarms with it.
    virtual bool serves(const std::string& directory, const std::string& key) const = 0;
};

template <class State, class Handler>
struct directory_spec {
    // The directory's name: its objects' keys in the segment (and the
    // store) are "<name>/<key>", and its events name it. Letters, digits,
    // '.', '_', '-'.
    std::string name;
    // The state of an object that has none yet (shared memory and store hold
    // nothing for its key). Null: State{}. Called only then, on the object's
    // fiber as it starts (from any of the runtime's threads): one that throws
    // fails that start (errc::start_failed to the caller, the reason in the
    // crash report), which counts against the crash threshold.
    std::function<State(const std::string& key)> initial;
    Handler handler{};
    const segment* where = nullptr;  // null: the runtime's default segment
    // Where a shut-down object's state goes, and where an activation looks
    // when shared memory has none (after shutdown_after, or a reboot): the
    // store an exporter of the segment writes, with its prefix. Null: shared
    // memory only (shutdown_after does nothing).
    store* durable = nullptr;
    std::string store_prefix;
    // An object with no message or alarm for this long hibernates: its
    // fiber, stack, mailbox and heap copy of the state go; its committed
    // state stays in the segment. zero: never.
    duration hibernate_after = std::chrono::minutes(1);
    // A hibernated object idle this long (counted from its last activity)
    // is shut down: its state goes to `durable` and leaves the segment.
    // zero: never.
    duration shutdown_after{};
    // At most this many objects active at once (0: no limit). Past it an
    // activation hibernates the least recently used idle object first, and
    // fails with limit_reached when every active object is busy.
    std::size_t max_active = 0;
    // Callers that may wait for one object to start (or to finish
    // hibernating); one more gets errc::overloaded at once.
    std::size_t max_waiters = 1024;
    // How long a caller waits for an object another caller is starting.
    duration start_timeout = std::chrono::seconds(5);
    alarm_retry retry{};
    // The housekeeping (alarms, hibernation, shutdown) waits for
    // object_directory::start_housekeeping(): a program that reads what came
    // back after a kill (get_state, alarms) before overdue alarms fire.
    bool start_paused = false;
    // As a unit's.
    commit_policy commit{};
    duration call_timeout = std::chrono::seconds(5);
    restart_intensity intensity{1000, std::chrono::seconds(10)};
    // Poison-state protection per object (unit_registry.hpp): unset gives
    // DurableServer's 5 crashes in an hour.
    std::optional<crash_threshold> threshold;
    std::size_t stack_size = 0;  // 0: the runtime's
    // Null: every object may start here. A cluster node: only the objects
    // this node owns (cluster::node::guard()).
    activation_guard* guard = nullptr;
};

// Where an object is now.
enum class object_status {
    active,      // running: it has a fiber
    hibernated,  // its committed state is in the segment, nothing else
    shut_down,   // its state is in the store only
    absent,      // no state anywhere: a call starts it from the initial state
};

inline const char* to_string(object_status status) noexcept {
    switch (status) {
    case object_status::active: return "active";
    case object_status::hibernated: return "hibernated";
    case object_status::shut_down: return "shut_down";
    case object_status::absent: return "absent";
    }
    return "unknown";
}

struct directory_stats {
    std::size_t active = 0;
    std::uint64_t activations = 0;
    std::uint64_t hibernations = 0;  // idle, evicted or terminated
    std::uint64_t evictions = 0;
    std::uint64_t shutdowns = 0;
    std::uint64_t alarms_fired = 0;
    std::uint64_t alarm_retries = 0;
    std::uint64_t alarms_failed = 0;
};

} // namespace keepsake
