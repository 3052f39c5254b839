// keepsake/supervisor.hpp: OTP supervisors (README, "Supervisors").
//
// A supervisor is an actor on a fiber of its own: child exits and management
// calls arrive in its mailbox and are handled one at a time, as OTP's
// supervisor process handles its messages. Children are units or other
// supervisors. A child's core (its mailbox, its keeper) lives as long as its
// spec, so handles stay valid across restarts of the child or of the tree.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "keepsake/crash_reports.hpp"
#include "keepsake/detail/child.hpp"
#include "keepsake/detail/config.hpp"
#include "keepsake/error.hpp"
#include "keepsake/events.hpp"
#include "keepsake/restart_policy.hpp"
#include "keepsake/runtime.hpp"
#include "keepsake/unit.hpp"

namespace keepsake {

enum class strategy { one_for_one, one_for_all, rest_for_one };
enum class auto_shutdown { never, any_significant, all_significant };

struct supervisor_flags {
    keepsake::strategy strategy = keepsake::strategy::one_for_one;
    restart_intensity intensity{3, std::chrono::seconds(5)};  // Elixir's default
    keepsake::auto_shutdown auto_shutdown = keepsake::auto_shutdown::never;
    // A dynamic supervisor (Elixir's DynamicSupervisor): one_for_one, no
    // static children, children added with start_child, at most
    // max_children of them (0: no limit).
    bool dynamic = false;
    std::size_t max_children = 0;
};

// How a supervisor starts one child; made by child(unit_spec) or
// child(supervisor_spec).
struct child_spec {
    std::string id;
    child_kind kind = child_kind::worker;
    restart_type restart = restart_type::permanent;
    shutdown_spec shutdown{};
    bool significant = false;
    std::function<std::shared_ptr<detail::child_process>(runtime&)> make;
    // A unit's: its registered type (unit_types.hpp) and what happens to
    // its key when it ends for good.
    std::string type;
    key_lifecycle lifecycle = key_lifecycle::automatic;
};

// The child spec of the unit `key` of the registered type `type`: defined
// in keepsake/unit_types.hpp (errc::unknown_type if no such type).
inline child_spec child_of_type(const std::string& type, const std::string& key);

// What a dynamic supervisor's on_resume hook decides for one persisted child.
enum class resume_action {
    resume,  // start it (with `spec`, which the hook may change)
    skip,    // leave it stopped this run (its registry status becomes stopped_graceful)
    remove,  // delete its state, record and crash history
};

// A child the registry says was running under this dynamic supervisor.
struct resume_candidate {
    std::string key;
    std::string type;
    unit_status status = unit_status::running;
    std::uint64_t starts = 0;   // starts so far, all runs
    std::uint64_t crashes = 0;  // crashes so far, all runs
    child_spec spec;            // made by its type; the hook may adapt it
};

struct supervisor_spec {
    std::string name;
    supervisor_flags flags{};
    std::vector<child_spec> children;  // started in this order
    // As a child of another supervisor:
    restart_type restart = restart_type::permanent;
    shutdown_spec shutdown = shutdown_spec::infinity();
    bool significant = false;
    duration call_timeout = std::chrono::seconds(30);  // management calls
    // --- resume (a dynamic supervisor; README "Resume") ----------------
    // At each start (the first in a process, and a restart by its parent),
    // restart the children the unit
    // registry says were running under this name, by their registered
    // type, in their original order, from their last commit. The registry
    // is the one of `registry` (null: the runtime's default segment).
    bool resume = true;
    const segment* registry = nullptr;
    // After a reboot (no segment): the records an exporter wrote to this
    // store under store_prefix.
    store* resume_from = nullptr;
    std::string store_prefix;
    // Decides for each child before it is resumed (null: resume them all).
    std::function<resume_action(resume_candidate&)> on_resume;
};

struct child_info {
    std::string id;
    child_state state = child_state::not_running;
    child_kind kind = child_kind::worker;
    std::uint64_t instance = 0;
};

struct child_counts {
    std::size_t specs = 0;
    std::size_t active = 0;
    std::size_t workers = 0;
    std::size_t supervisors = 0;
};

struct supervisor_stats {
    std::uint64_t instance = 0;
    std::uint64_t restarts = 0;  // automatic restarts, all instances
    duration uptime{};
};

namespace detail {

// A child spec from a unit's or a supervisor's spec: the same fields, and a
// maker that makes a fresh core from the spec, which the child spec holds
// once (shared with every core it makes).
template <class Spec, class Make>
child_spec child_spec_of(std::shared_ptr<const Spec> spec, child_kind kind, Make make_core) {
    child_spec made;
    made.id = spec->name;
    made.kind = kind;
    made.restart = spec->restart;
    made.shutdown = spec->shutdown;
    made.significant = spec->significant;
    made.make = [spec = std::move(spec), make_core](runtime& where) -> std::shared_ptr<child_process> {
        return make_core(where, spec);
    };
    return made;
}

} // namespace detail

template <class State, class Handler>
child_spec child(unit_spec<State, Handler> spec) {
    std::string type = spec.type;
    const key_lifecycle lifecycle = spec.lifecycle;
    // Each (re)start's core shares the child's spec: no copy a start.
    auto shared = std::make_shared<const unit_spec<State, Handler>>(std::move(spec));
    child_spec made = detail::child_spec_of(shared, child_kind::worker, [](runtime& where, const auto& kept) {
        return detail::make_unit_core(where, kept);
    });
    made.type = std::move(type);
    made.lifecycle = lifecycle;
    return made;
}

KEEPSAKE_API child_spec child(supervisor_spec spec);

namespace detail {

class supervisor_core final : public supervised_actor,
                              public exit_listener,
                              public std::enable_shared_from_this<supervisor_core> {
public:
    supervisor_core(runtime& where, supervisor_spec spec);

    // Its children were stopped when it stopped; their names go with it,
    // even where a handle keeps a child alive.
    KEEPSAKE_INLINE ~supervisor_core() override;

    child_kind kind() const noexcept override { return child_kind::supervisor; }
    static std::string type_description();

    // Dropped by its parent: its children's names go with it, even while a
    // handle keeps this supervisor alive. Called when it is not running.
    KEEPSAKE_INLINE void forget() override;
    duration call_timeout() const noexcept { return spec_.call_timeout; }

    // Runs `job(core)` on the supervisor's fiber and returns its result;
    // the job's exception goes to the caller.
    template <class Job>
    auto manage(Job job) {
        using R = decltype(job(*this));
        return this->template request<R>(
            [job = std::move(job)](void* target, reply_cell* reply) mutable {
                auto& core = *static_cast<supervisor_core*>(static_cast<actor*>(target));
                try {
                    if constexpr (std::is_void_v<R>) {
                        job(core);
                        answer_value<R>(reply, std::monostate{});
                    } else {
                        answer_value<R>(reply, job(core));
                    }
                } catch (...) {
                    if (reply != nullptr) answer_failure(*reply, std::current_exception());
                }
            },
            spec_.call_timeout);
    }

    void do_start_child(const child_spec& spec);

    void do_restart_child(const std::string& id);

    void do_terminate_child(const std::string& id);

    void do_delete_child(const std::string& id);

    // Stops the child and deletes its state, record and crash history.
    void do_terminate_and_delete(const std::string& id);

    // Stops every child, newest first (a dynamic supervisor's tenant
    // teardown); `delete_keys`: their keys go too, else each by its lifecycle.
    void do_terminate_all(bool delete_keys);

    std::vector<child_info> do_which_children() const;

    child_counts do_count_children() const;

    supervisor_stats stats() const;

    void fill_counters(metered_counters& out) const override;  // keepsake/metrics.hpp

private:
    struct record {
        child_spec spec;
        std::shared_ptr<child_process> process;
        std::uint64_t instance = 0;  // the instance this supervisor started last
        bool expect_exit = false;    // running, and not being stopped by us
        bool retry_pending = false;  // a failed restart will be retried
        std::uint64_t order = 0;     // start order: the registry keeps it, resume follows it
    };

    supervisor_spec spec_;
    restart_log log_;
    std::vector<std::unique_ptr<record>> children_;  // start order
    std::atomic<std::uint64_t> restarts_{0};
    std::optional<exit_reason> leaving_;  // gave up or auto shutdown
    std::unordered_map<std::string, record*> by_id_;  // children_ by id
    std::uint64_t next_order_ = 0;
    bool gave_up_ = false;                 // this instance is leaving past its intensity

    // A root supervisor that gave up ended its program abnormally.
    exit_reason root_exit(const exit_reason& reason) const override {
        return gave_up_ ? exit_reason{exit_kind::crashed, reason.what} : reason;
    }

    KEEPSAKE_INLINE std::shared_ptr<supervised_actor> self_pointer() override;
    shutdown_spec own_shutdown() const noexcept override { return spec_.shutdown; }
    std::size_t fiber_stack_size() const noexcept override { return 0; }  // the runtime's default

    // --- checks --------------------------------------------------------------
    void check_spec() const;

    void check_child(const child_spec& spec) const;

    // --- records -------------------------------------------------------------
    std::unique_ptr<record> make_record(const child_spec& spec);

    record* find(const std::string& id) const;

    record* find(const child_process* process) const;

    record& require(const std::string& id) const;

    std::size_t index_of(const record& which) const;

    void remove_record(record& which);

    record& add_record(std::unique_ptr<record> made);

    // A child ended for good: its registry status, or its keys deleted, as
    // its lifecycle says (or `delete_keys`).
    void retire_child(record& which, const exit_reason& why, bool delete_keys = false);

    // --- resume (detail/resume-inl.hpp) ----------------------------------
    void resume_children();

    // False if it was not started (refused, or skipped by on_resume).
    bool resume_one(registry_book& book, const persisted_unit& record, bool check_id);

    void publish(event_kind kind, const record& child, exit_kind reason_kind = exit_kind::normal,
                 std::string_view reason = {}) const;

    // --- starting and stopping children --------------------------------------
    // False if the child's init declined (ignore_start): then it is kept as
    // not running, or dropped (temporary, or a dynamic supervisor's child),
    // and `child` may be gone.
    bool start_record(record& child);

    void stop_record(record& child, bool restart_follows);

    // Stops the given children, newest first; temporary ones are dropped.
    // When no restart follows, a child already down (the one that crashed
    // past the intensity, one whose restart failed) is discarded too, so
    // calls to it fail at once instead of queueing for a restart that will
    // not come.
    void stop_group(const std::vector<record*>& group, bool restart_follows);

    std::vector<record*> children_from(std::size_t first) const;

    // --- the supervisor's fiber ---------------------------------------------
    KEEPSAKE_INLINE exit_reason run_instance(std::uint64_t) override;

    // The supervisor's own stop (asked, gave up or auto shutdown), after its
    // children: observable for a root supervisor too.
    void publish_stopped(const exit_reason& reason) const;

    // A restarted supervisor starts with its static children only; the
    // others are dropped with their names, so they can be started again
    // even while a handle to the old ones lives.
    void reset_to_static_children();

    void start_static_children();

    // --- exits and restarts ---------------------------------------------------
    void child_exited(const child_process* process, std::uint64_t number, const exit_reason& why);
    void on_child_exit(child_process* which, std::uint64_t number, const exit_reason& why) override;

    void check_auto_shutdown();

    // `why`: how the child ended, or why its last restart failed.
    void restart_child_after_exit(record& child, const exit_reason& why);

    // Stops the group newest first (the exited child is already down), then
    // starts its non-temporary members in order. A failed start is counted
    // and retried through the mailbox, as OTP's try_again_restart.
    void restart_group(std::vector<record*> group);

    void schedule_retry(record& child, exit_reason why);

    void give_up(const record& child, const exit_reason& why);
};

KEEPSAKE_API std::shared_ptr<supervisor_core> make_supervisor_core(runtime& where, supervisor_spec spec);

} // namespace detail

// A handle to a supervisor; management calls are safe from any thread
// (not from the supervisor's own children while it is stopping them).
class supervisor {
public:
    supervisor() = default;
    explicit supervisor(std::shared_ptr<detail::supervisor_core> core) : core_(std::move(core)) {}

    void start_child(const child_spec& spec);
    template <class State, class Handler>
    unit<State, Handler> start_child(unit_spec<State, Handler> spec) {
        const std::string id = spec.name;
        start_child(child(std::move(spec)));
        return unit<State, Handler>(core_->runtime_of().find_registered<detail::unit_core<State, Handler>>(id));
    }
    void restart_child(const std::string& id);
    void terminate_child(const std::string& id);
    void delete_child(const std::string& id);
    // Starts the unit `key` of the registered type `type` (unit_types.hpp).
    void start_child(const std::string& type, const std::string& key);
    // Stops the child and deletes its state in the segment, its registry
    // record and crash history and, through the segment's exporter, its
    // store record.
    void terminate_and_delete(const std::string& id);
    // Stops every child, newest first; `delete_keys` deletes them too.
    void terminate_all(bool delete_keys = false);
    std::vector<child_info> which_children();
    child_counts count_children();

    supervisor_stats stats() const { return core().stats(); }
    const std::string& name() const { return core().name(); }
    child_state state() const { return core().state(); }
    bool is_running() const { return core().is_running(); }
    // For a supervisor started with start_supervisor: blocks until it ended
    // (gave up, stopped by auto_shutdown, or stopped) and returns how, as
    // runtime::wait counts it: a give-up is crashed, with its message; a
    // stop is shutdown. Same threads as runtime::wait; error(invalid_argument)
    // for a child supervisor.
    exit_reason wait() { return core().wait_root(); }
    explicit operator bool() const noexcept { return static_cast<bool>(core_); }
    const std::shared_ptr<detail::supervisor_core>& shared_core() const noexcept { return core_; }

private:
    std::shared_ptr<detail::supervisor_core> core_;

    detail::supervisor_core& core() const {
        if (!core_) throw error(errc::not_found, "empty keepsake::supervisor handle");
        return *core_;
    }
};

// Starts a supervision tree; returns when every static child has started,
// or throws error(start_failed) naming the child that failed (those started
// before it are stopped again, newest first).
KEEPSAKE_API supervisor start_supervisor(runtime& where, supervisor_spec spec);

// Stops a tree started with start_supervisor: children newest first.
KEEPSAKE_API void stop_supervisor(runtime& where, supervisor& which);

// The supervisor registered under `name`, if it accepts calls (running, or
// being restarted by its parent); nothing for a stopped one. Throws
// type_mismatch if the name is a unit's.
KEEPSAKE_API std::optional<supervisor> whereis_supervisor(const runtime& where, const std::string& name);

} // namespace keepsake

#ifdef KEEPSAKE_HEADER_ONLY
#include "keepsake/supervisor-inl.hpp"
#endif
