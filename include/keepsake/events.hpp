// keepsake/events.hpp: what happened to whom. Every start, exit (with its
// reason), restart, give-up and stop is published to the runtime's event bus;
// tests count them, log_events() logs them through spdlog.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <string_view>

#include "keepsake/clock.hpp"
#include "keepsake/detail/listeners.hpp"
#include "keepsake/log.hpp"

namespace keepsake {

// How a worker or supervisor ended. normal and shutdown are normal exits (a
// transient child is not restarted after them); crashed and killed are not.
enum class exit_kind {
    normal,    // returned, or stopped when asked
    shutdown,  // stopped by its supervisor, or a supervisor that gave up
    crashed,   // an exception escaped, or an explicit crash call
    killed,    // forced termination after the shutdown timeout (or brutal_kill)
};

inline const char* to_string(exit_kind kind) noexcept {
    switch (kind) {
    case exit_kind::normal: return "normal";
    case exit_kind::shutdown: return "shutdown";
    case exit_kind::crashed: return "crashed";
    case exit_kind::killed: return "killed";
    }
    return "unknown";
}

struct exit_reason {
    exit_kind kind = exit_kind::normal;
    std::string what;  // the exception's message, or why it stopped

    bool is_normal() const noexcept { return kind == exit_kind::normal || kind == exit_kind::shutdown; }
};

// A process exit code for how a program's supervision ended: 0 for a normal
// exit, 1 otherwise. `return keepsake::exit_code(rt.wait());` in main lets
// a launcher (keepsake-run, systemd) tell a crash from a clean end.
inline int exit_code(const exit_reason& reason) noexcept { return reason.is_normal() ? 0 : 1; }

enum class event_kind {
    started,       // a child (unit or supervisor) started
    start_failed,  // a child failed to start
    exited,        // a child ended by itself (reason says how)
    restarted,     // a child (or a unit's worker) was restarted
    gave_up,       // restart intensity exceeded: no more restarts
    stopped,       // a child was stopped by its supervisor, or a supervisor stopped
    // From an exporter given this bus (exporter_options::events), on its
    // thread: supervisor "exporter", child the store, reason the message.
    export_failed,     // a store put failed; it is retried (instance: failures in a row)
    export_timed_out,  // stop ran out of time with keys not exported
    // A unit's first start recovered its state but passed over a damaged
    // store record or a store it could not read (reason says which).
    recovery_problem,
    // The unit registry (keepsake/unit_registry.hpp): child the unit.
    permanently_crashed,  // past its crash threshold: not started again until cleared
    circuit_open,         // a type's circuit breaker refuses new starts (child: the type name)
    rolled_back,          // the rollback ladder started a unit from an older generation (reason says which)
    resumed,              // a dynamic supervisor restarted its persisted children (instance: how many; took)
    resume_refused,       // a persisted child was not resumed (reason says why)
    // Storage telemetry (took: how long it took, real time): supervisor
    // "recovery", "exporter" or "forget"; child the key, or the store for a
    // batch. `at` is the runtime's clock for a unit's recovery, else the
    // steady clock (an exporter, recover() or forget() given a bus).
    recovered,       // a recover(): a unit's first start, or a call given a bus (reason: where the state
                     // came from; instance: the generation it holds now)
    export_batch,    // an exporter put one batch (instance: records in it; reason: "skipped N" if the
                     // store refused N of them, see export_failed)
    forgotten,       // a key was forgotten (reason: where it was: "segment, store", "segment", "store", "nowhere")
    // Object directories (keepsake/objects/directory.hpp): supervisor the
    // directory, child the object's key; took for activations.
    activated,     // an object started on demand (took: its start, from the first call)
    hibernated,    // an idle object gave back its fiber (reason: "idle", "evicted" or "terminated")
    shut_down,     // an idle hibernated object's state went to the store and left the segment
    alarm_retry,   // an alarm's handler crashed; it is retried (instance: the attempt; reason: the alarm)
    alarm_failed,  // an alarm's handler crashed on every retry; the alarm is dropped (reason: the alarm)
};

inline const char* to_string(event_kind kind) noexcept {
    switch (kind) {
    case event_kind::started: return "started";
    case event_kind::start_failed: return "start_failed";
    case event_kind::exited: return "exited";
    case event_kind::restarted: return "restarted";
    case event_kind::gave_up: return "gave_up";
    case event_kind::stopped: return "stopped";
    case event_kind::export_failed: return "export_failed";
    case event_kind::export_timed_out: return "export_timed_out";
    case event_kind::recovery_problem: return "recovery_problem";
    case event_kind::permanently_crashed: return "permanently_crashed";
    case event_kind::circuit_open: return "circuit_open";
    case event_kind::rolled_back: return "rolled_back";
    case event_kind::resumed: return "resumed";
    case event_kind::resume_refused: return "resume_refused";
    case event_kind::recovered: return "recovered";
    case event_kind::export_batch: return "export_batch";
    case event_kind::forgotten: return "forgotten";
    case event_kind::activated: return "activated";
    case event_kind::hibernated: return "hibernated";
    case event_kind::shut_down: return "shut_down";
    case event_kind::alarm_retry: return "alarm_retry";
    case event_kind::alarm_failed: return "alarm_failed";
    }
    return "unknown";
}

// An event refers to names owned by the runtime: copy what you keep. It is
// delivered synchronously, on the fiber where it happened, in order.
struct event {
    event_kind kind = event_kind::started;
    std::string_view supervisor;  // who acted: a supervisor, or a unit for its own worker
    std::string_view child;       // the child (or the unit whose worker it is)
    std::uint64_t instance = 0;   // which start of that child
    exit_kind reason_kind = exit_kind::normal;
    std::string_view reason;
    duration at{};                // the runtime's clock (without a runtime: the steady clock)
    duration took{};              // storage telemetry and resume: how long it took (real time)
};

class event_bus {
public:
    using handler = std::function<void(const event&)>;

    // Returns an id for unsubscribe().
    std::uint64_t subscribe(handler on_event) { return handlers_.add(std::move(on_event)); }
    void unsubscribe(std::uint64_t id) { handlers_.remove(id); }
    void publish(const event& what) const { handlers_.notify(what); }
    bool any() const noexcept { return handlers_.any(); }

private:
    detail::listener_list<const event&> handlers_;
};

namespace detail {

// event::took: the real time since `began`.
inline duration took_since(std::chrono::steady_clock::time_point began) noexcept {
    return std::chrono::duration_cast<duration>(std::chrono::steady_clock::now() - began);
}

// The storage telemetry events, for callers that checked bus.any(). `at`:
// the runtime's clock, or the steady clock without a runtime.
inline void publish_recovered(const event_bus& bus, std::string_view key, const char* source,
                              std::uint64_t generation, duration took, duration at) {
    bus.publish(event{event_kind::recovered, "recovery", key, generation, exit_kind::normal, source, at, took});
}

inline void publish_forgotten(const event_bus& bus, std::string_view key, bool in_segment, bool in_store,
                              duration took, duration at) {
    const char* where = in_segment && in_store ? "segment, store" : in_segment ? "segment" : in_store ? "store"
                                                                                                      : "nowhere";
    bus.publish(event{event_kind::forgotten, "forget", key, 0, exit_kind::normal, where, at, took});
}

// "340.2 us", "12.345 ms", "2.500 s".
inline std::string took_text(duration took) {
    const double us = static_cast<double>(took.count()) / 1e3;
    char text[48];
    if (us < 1e3) std::snprintf(text, sizeof text, "%.1f us", us);
    else if (us < 1e6) std::snprintf(text, sizeof text, "%.3f ms", us / 1e3);
    else std::snprintf(text, sizeof text, "%.3f s", us / 1e6);
    return text;
}

// The log line of a storage telemetry event.
inline std::string storage_line(const event& what) {
    const std::string by = std::string(what.supervisor) + ": ";
    std::string line;
    if (what.kind == event_kind::recovered)
        line = by + "recovered '" + std::string(what.child) + "' from " + std::string(what.reason) +
               " at generation " + std::to_string(what.instance);
    else if (what.kind == event_kind::export_batch)
        line = by + "export_batch to " + std::string(what.child) + ": " + std::to_string(what.instance) +
               " record(s)" + (what.reason.empty() ? std::string() : " (" + std::string(what.reason) + ")");
    else
        line = by + to_string(what.kind) + " '" + std::string(what.child) + "' (" + std::string(what.reason) + ")";
    return line + " in " + took_text(what.took);
}

} // namespace detail

// Logs every event through keepsake's logger (quiet until the user sets a
// level: see log.hpp). Crashes, give-ups and export failures are warnings;
// each export batch is debug; the rest info. Storage events say how long
// they took.
inline std::uint64_t log_events(event_bus& bus) {
    return bus.subscribe([](const event& what) {
        const bool exporting = what.kind == event_kind::export_failed || what.kind == event_kind::export_timed_out;
        const bool storage = what.kind == event_kind::recovered || what.kind == event_kind::export_batch ||
                             what.kind == event_kind::forgotten;
        const bool bad = exporting || what.kind == event_kind::gave_up || what.kind == event_kind::start_failed ||
                         (what.kind == event_kind::exited && (what.reason_kind == exit_kind::crashed ||
                                                              what.reason_kind == exit_kind::killed));
        const auto level = bad                                     ? spdlog::level::warn
                           : what.kind == event_kind::export_batch ? spdlog::level::debug
                                                                   : spdlog::level::info;
        detail::log(level, [&] {
            if (storage) return detail::storage_line(what);
            std::string line = std::string(what.supervisor) + ": " + to_string(what.kind) + " '" +
                               std::string(what.child) + "' #" + std::to_string(what.instance);
            if (exporting) return std::string(what.supervisor) + ": " + to_string(what.kind) + " to " +
                                  std::string(what.child) + ": " + std::string(what.reason);
            if (what.kind == event_kind::exited || what.kind == event_kind::gave_up ||
                what.kind == event_kind::start_failed)
                line += std::string(" (") + to_string(what.reason_kind) + ": " + std::string(what.reason) + ")";
            return line;
        });
    });
}

} // namespace keepsake
