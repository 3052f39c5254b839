// keepsake/unit_spec.hpp: how a unit is made: its spec, its commit policy,
// what its init hook is told, and its counters.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <type_traits>

#include "keepsake/clock.hpp"
#include "keepsake/detail/registry_book.hpp"
#include "keepsake/keeper.hpp"
#include "keepsake/recovery.hpp"
#include "keepsake/restart_policy.hpp"
#include "keepsake/segment.hpp"
#include "keepsake/store.hpp"

namespace keepsake {

// When a message-driven unit commits the state its handlers changed. What a
// worker crash can lose: every_message nothing committed-before-reply; every
// N up to N-1 messages; interval up to that much time of changes; manual
// everything since the code last called commit(). A graceful stop commits.
struct commit_policy {
    enum class mode { every_message, every_n, interval, manual };
    mode when = mode::every_message;
    std::uint32_t n = 1;
    duration period{};

    static commit_policy every_message() { return {}; }
    static commit_policy every(std::uint32_t messages) { return {mode::every_n, messages, {}}; }
    static commit_policy every_interval(duration span) { return {mode::interval, 1, span}; }
    static commit_policy manual() { return {mode::manual, 1, {}}; }
};

// What the init hook is told on every (re)start of the worker.
struct start_info {
    std::uint64_t instance = 0;    // starts of the unit by its supervisor (1: first)
    std::uint64_t restarts = 0;    // worker restarts within this instance
    std::uint64_t generation = 0;  // the committed generation handed over (0: the initial state)
    bool restored = false;         // the state came from the keeper (or store), not from `initial`
    // Where the first start found it; restarts always take shared memory.
    recovery_source source = recovery_source::initial;
};

struct unit_stats {
    std::uint64_t instance = 0;
    std::uint64_t restarts = 0;     // worker restarts inside the unit, all instances
    std::uint64_t crashes = 0;      // worker crashes, all instances (restarted, given up on, or while stopping)
    std::uint64_t messages = 0;     // messages served
    std::uint64_t commits = 0;
    std::uint64_t generation = 0;   // newest committed generation
    duration uptime{};              // since the current instance started (runtime clock)
    std::size_t queued = 0;
};

template <class State>
class unit_context;

// Marks a unit without typed-message handlers (callables only).
struct no_handler {};

template <class State, class Handler = no_handler>
struct unit_spec {
    static_assert(std::is_copy_constructible_v<State> && std::is_copy_assignable_v<State>,
                  "keepsake: a unit's State must be copyable: the unit keeps copies beside the live state (the "
                  "initial state for a fresh start, the last commit for on_state_changed). Keep what cannot be "
                  "copied (a socket, a std::unique_ptr, a mutex) outside the state, or hold it through a "
                  "std::shared_ptr");
    static_assert(std::is_default_constructible_v<State>,
                  "keepsake: a unit's State must be default-constructible (unit_spec::initial starts as State{})");
    std::string name;  // the key in the segment, the name for whereis, the child id
    State initial{};
    // If set, makes the initial state when a fresh start needs it, from the
    // unit's name, in place of `initial`: units that share one spec (an
    // object directory's objects) each get their own, and none keeps a copy.
    std::function<State(const std::string& name)> initial_for;
    // Typed messages: handler(State&, const Msg&) (or with a trailing
    // unit_context<State>&); taking const State& marks it read-only.
    Handler handler{};
    // Set for a loop worker: runs on the worker fiber until it returns.
    std::function<void(unit_context<State>&)> loop;
    // Called on every (re)start with the state handed over; may adjust it.
    std::function<void(State&, const start_info&)> init;
    const segment* where = nullptr;  // null: the runtime's default segment
    // A durable store (the one an exporter writes): the first start takes
    // the newest of shared memory and this store's record under
    // store_prefix + name (recover()), so the state survives a reboot.
    // Null: shared memory only.
    store* recover_from = nullptr;
    std::string store_prefix;  // as exporter_options::prefix
    keeper_options<State> keeper{};
    commit_policy commit{};
    restart_intensity intensity{1000, std::chrono::seconds(10)};
    restart_type restart = restart_type::permanent;
    shutdown_spec shutdown{};
    bool significant = false;
    duration call_timeout = std::chrono::seconds(5);
    std::size_t stack_size = 0;  // 0: the runtime's
    // A call from the worker's own thread, made while the worker sleeps on
    // an empty mailbox, runs on the caller's fiber: no queueing and no
    // context switch, with the same ordering, commit and crash handling (a
    // throw restarts the worker). Messages that take a unit_context always
    // run on the worker. false: every message runs on the worker fiber.
    bool direct_calls = true;
    // --- the unit registry (keepsake/unit_registry.hpp) ---------------
    // The registered type it was made from (unit_types.hpp sets it): kept
    // in the segment, so a dynamic supervisor resumes the unit by it.
    std::string type;
    // Poison-state protection: unset takes its type's threshold (5 crashes
    // in an hour unless the type says otherwise), or none for a unit of no
    // type; crash_threshold::off() turns it off.
    std::optional<crash_threshold> threshold;
    // What happens to its key (state, record, crash history) when it ends
    // for good: see key_lifecycle.
    key_lifecycle lifecycle = key_lifecycle::automatic;
    // The rollback ladder (opt-in): after this many crashes in a row at the
    // same committed generation G, the next start takes the older generation
    // its slots hold (then the next older, then the initial state), each
    // step a rolled_back event; G is kept under ks:s/<key>. 0: off.
    std::uint32_t rollback_after = 0;
};

} // namespace keepsake
