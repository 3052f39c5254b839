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
#include <utility>
#include <vector>

#include "keepsake/crash_reports.hpp"
#include "keepsake/detail/child.hpp"
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
// maker that makes a fresh core from a copy of the spec.
template <class Spec, class Make>
child_spec child_spec_of(Spec spec, child_kind kind, Make make_core) {
    child_spec made;
    made.id = spec.name;
    made.kind = kind;
    made.restart = spec.restart;
    made.shutdown = spec.shutdown;
    made.significant = spec.significant;
    made.make = [spec = std::move(spec), make_core](runtime& where) -> std::shared_ptr<child_process> {
        return make_core(where, spec);
    };
    return made;
}

} // namespace detail

template <class State, class Handler>
child_spec child(unit_spec<State, Handler> spec) {
    return detail::child_spec_of(std::move(spec), child_kind::worker, [](runtime& where, const auto& kept) {
        return detail::make_unit_core(where, kept);
    });
}

child_spec child(supervisor_spec spec);

namespace detail {

class supervisor_core final : public supervised_actor, public std::enable_shared_from_this<supervisor_core> {
public:
    supervisor_core(runtime& where, supervisor_spec spec)
        : supervised_actor(where, spec.name, spec.shutdown, 0), spec_(std::move(spec)), log_(spec_.flags.intensity) {
        check_spec();
        for (const child_spec& each : spec_.children) children_.push_back(make_record(each));
    }

    // Its children were stopped when it stopped; their names go with it,
    // even where a handle keeps a child alive.
    ~supervisor_core() override { forget(); }

    child_kind kind() const noexcept override { return child_kind::supervisor; }
    static std::string type_description() { return "a supervisor (whereis_supervisor)"; }

    // Dropped by its parent: its children's names go with it, even while a
    // handle keeps this supervisor alive. Called when it is not running.
    void forget() override {
        for (auto& child : children_)
            if (child) child->process->forget();
        supervised_actor::forget();
    }
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

    void do_start_child(const child_spec& spec) {
        check_child(spec);
        if (record* found = find(spec.id))
            throw error(found->process && found->process->is_running() ? errc::already_started : errc::already_present,
                        "supervisor '" + name() + "': a child '" + spec.id + "' is already " +
                            (found->process && found->process->is_running() ? "running" : "present (not running)") +
                            "; use restart_child, or delete_child first");
        if (spec_.flags.dynamic && spec_.flags.max_children != 0 && children_.size() >= spec_.flags.max_children)
            throw error(errc::limit_reached, "supervisor '" + name() + "' already has max_children (" +
                                                 std::to_string(spec_.flags.max_children) + ") children");
        auto made = make_record(spec);
        record& added = *made;
        children_.push_back(std::move(made));
        try {
            start_record(added);
        } catch (...) {
            remove_record(added);
            throw;
        }
    }

    void do_restart_child(const std::string& id) {
        record& found = require(id);
        if (found.process->is_running() || found.retry_pending)
            throw error(errc::child_running, "supervisor '" + name() + "': child '" + id +
                                                 "' is running (or restarting); terminate_child it first");
        start_record(found);
    }

    void do_terminate_child(const std::string& id) {
        record& found = require(id);
        found.retry_pending = false;
        if (found.process->is_running()) stop_record(found, false);
        else found.process->discard();
        if (found.spec.restart == restart_type::temporary || spec_.flags.dynamic) remove_record(found);
    }

    void do_delete_child(const std::string& id) {
        record& found = require(id);
        if (found.process->is_running() || found.retry_pending)
            throw error(errc::child_running, "supervisor '" + name() + "': child '" + id +
                                                 "' is running; terminate_child it before delete_child");
        remove_record(found);
    }

    std::vector<child_info> do_which_children() const {
        std::vector<child_info> listed;
        for (auto each = children_.rbegin(); each != children_.rend(); ++each) {
            const record& child = **each;
            child_info info;
            info.id = child.spec.id;
            info.kind = child.spec.kind;
            info.instance = child.process->instance();
            info.state = child.process->is_running() ? child_state::running
                         : child.retry_pending       ? child_state::restarting
                                                     : child_state::not_running;
            listed.push_back(std::move(info));
        }
        return listed;
    }

    child_counts do_count_children() const {
        child_counts counts;
        for (const auto& child : children_) {
            ++counts.specs;
            if (child->process->is_running()) ++counts.active;
            if (child->spec.kind == child_kind::worker) ++counts.workers;
            else ++counts.supervisors;
        }
        return counts;
    }

    supervisor_stats stats() const {
        supervisor_stats out;
        out.instance = instance();
        out.restarts = restarts_.load(std::memory_order_relaxed);
        out.uptime = uptime();
        return out;
    }

private:
    struct record {
        child_spec spec;
        std::shared_ptr<child_process> process;
        std::uint64_t instance = 0;  // the instance this supervisor started last
        bool expect_exit = false;    // running, and not being stopped by us
        bool retry_pending = false;  // a failed restart will be retried
    };

    supervisor_spec spec_;
    restart_log log_;
    std::vector<std::unique_ptr<record>> children_;  // start order
    std::atomic<std::uint64_t> restarts_{0};
    std::optional<exit_reason> leaving_;  // gave up or auto shutdown

    std::shared_ptr<supervised_actor> self_pointer() override { return shared_from_this(); }

    // --- checks --------------------------------------------------------------
    void check_spec() const {
        check_intensity(spec_.flags.intensity, "supervisor '" + name() + "'");
        check_shutdown(spec_.shutdown, "supervisor '" + name() + "'");
        if (spec_.flags.dynamic && spec_.flags.strategy != strategy::one_for_one)
            throw error(errc::invalid_argument, "supervisor '" + name() + "': a dynamic supervisor is one_for_one");
        if (spec_.flags.dynamic && !spec_.children.empty())
            throw error(errc::invalid_argument, "supervisor '" + name() +
                                                    "': a dynamic supervisor has no static children; add them "
                                                    "with start_child");
        if (!spec_.flags.dynamic && spec_.flags.max_children != 0)
            throw error(errc::invalid_argument, "supervisor '" + name() + "': max_children is for dynamic supervisors");
        if (spec_.significant && spec_.restart == restart_type::permanent)
            throw error(errc::invalid_argument, "supervisor '" + name() + "': a permanent child cannot be significant");
        std::set<std::string> ids;
        for (const child_spec& each : spec_.children) {
            check_child(each);
            if (!ids.insert(each.id).second)
                throw error(errc::invalid_argument, "supervisor '" + name() + "': duplicate child id '" + each.id + "'");
        }
    }

    void check_child(const child_spec& spec) const {
        if (spec.id.empty() || !spec.make)
            throw error(errc::invalid_argument, "supervisor '" + name() + "': a child spec needs an id and a maker "
                                                                          "(use keepsake::child(spec))");
        check_shutdown(spec.shutdown, "supervisor '" + name() + "': child '" + spec.id + "'");
        if (spec.significant && spec.restart == restart_type::permanent)
            throw error(errc::invalid_argument, "supervisor '" + name() + "': child '" + spec.id +
                                                    "' is permanent and cannot be significant");
        if (spec.significant && spec_.flags.auto_shutdown == auto_shutdown::never)
            throw error(errc::invalid_argument, "supervisor '" + name() + "': child '" + spec.id +
                                                    "' is significant but auto_shutdown is never");
    }

    // --- records -------------------------------------------------------------
    std::unique_ptr<record> make_record(const child_spec& spec) {
        auto made = std::make_unique<record>();
        made->spec = spec;
        made->process = spec.make(runtime_);
        return made;
    }

    record* find(const std::string& id) const {
        for (const auto& child : children_)
            if (child && child->spec.id == id) return child.get();
        return nullptr;
    }

    record* find(const child_process* process) const {
        for (const auto& child : children_)
            if (child->process.get() == process) return child.get();
        return nullptr;
    }

    record& require(const std::string& id) const {
        record* found = find(id);
        if (found == nullptr)
            throw error(errc::not_found, "supervisor '" + name() + "' has no child '" + id + "'");
        return *found;
    }

    std::size_t index_of(const record& which) const {
        for (std::size_t index = 0; index < children_.size(); ++index)
            if (children_[index].get() == &which) return index;
        return children_.size();
    }

    void remove_record(record& which) {
        which.process->forget();
        const std::size_t index = index_of(which);
        if (index < children_.size()) children_.erase(children_.begin() + static_cast<std::ptrdiff_t>(index));
    }

    void publish(event_kind kind, const record& child, exit_kind reason_kind = exit_kind::normal,
                 std::string_view reason = {}) const {
        supervised_actor::publish(kind, child.spec.id, child.process->instance(), reason_kind, reason);
    }

    // --- starting and stopping children --------------------------------------
    // False if the child's init declined (ignore_start): then it is kept as
    // not running, or dropped (temporary, or a dynamic supervisor's child),
    // and `child` may be gone.
    bool start_record(record& child) {
        std::weak_ptr<supervisor_core> weak = shared_from_this();
        child_process* process = child.process.get();
        bool running = false;
        try {
            running = child.process->start([weak, process](std::uint64_t number, const exit_reason& why) {
                auto self = weak.lock();
                if (!self) return;
                try {
                    self->post([process, number, why](void* target, reply_cell*) {
                        static_cast<supervisor_core*>(static_cast<actor*>(target))->child_exited(process, number, why);
                    });
                } catch (const error&) {
                    // The supervisor is gone or stopping: nobody to restart it.
                }
            });
        } catch (const error& failure) {
            publish(event_kind::start_failed, child, exit_kind::crashed, failure.what());
            throw error(errc::start_failed, "supervisor '" + name() + "': child '" + child.spec.id +
                                                "' failed to start: " + failure.what());
        }
        child.instance = child.process->instance();
        child.expect_exit = running;
        child.retry_pending = false;
        if (!running) {
            if (child.spec.restart == restart_type::temporary || spec_.flags.dynamic) remove_record(child);
            return false;
        }
        publish(event_kind::started, child);
        return true;
    }

    void stop_record(record& child, bool restart_follows) {
        child.expect_exit = false;
        const shutdown_spec how = forced() ? shutdown_spec::brutal_kill() : child.spec.shutdown;
        child.process->stop(how, restart_follows);
        publish(event_kind::stopped, child, exit_kind::shutdown, "stopped by its supervisor");
    }

    // Stops the given children, newest first; temporary ones are dropped.
    // When no restart follows, a child already down (the one that crashed
    // past the intensity, one whose restart failed) is discarded too, so
    // calls to it fail at once instead of queueing for a restart that will
    // not come.
    void stop_group(const std::vector<record*>& group, bool restart_follows) {
        for (auto each = group.rbegin(); each != group.rend(); ++each) {
            record& child = **each;
            child.retry_pending = false;
            if (child.process->is_running()) stop_record(child, restart_follows);
            else if (!restart_follows) child.process->discard();
            if (child.spec.restart == restart_type::temporary) remove_record(child);
        }
    }

    std::vector<record*> children_from(std::size_t first) const {
        std::vector<record*> group;
        for (std::size_t index = first; index < children_.size(); ++index) group.push_back(children_[index].get());
        return group;
    }

    // --- the supervisor's fiber ---------------------------------------------
    exit_reason run_instance(std::uint64_t) override {
        log_.clear();
        leaving_.reset();
        reset_to_static_children();
        start_static_children();
        report_started();
        while (!leaving_ && !stop_requested()) {
            if (serve_queued(1) == 0) mailbox_.wait_until(runtime_.clock(), forever, [&] { return stop_requested(); });
        }
        stop_group(children_from(0), false);
        exit_reason reason = leaving_ ? *leaving_
                                      : exit_reason{stopped_by_parent() ? exit_kind::shutdown : exit_kind::normal,
                                                    "stopped on request"};
        publish_stopped(reason);
        return reason;
    }

    // The supervisor's own stop (asked, gave up or auto shutdown), after its
    // children: observable for a root supervisor too.
    void publish_stopped(const exit_reason& reason) const {
        supervised_actor::publish(event_kind::stopped, name(), instance(), reason.kind, reason.what);
    }

    // A restarted supervisor starts with its static children only; the
    // others are dropped with their names, so they can be started again
    // even while a handle to the old ones lives.
    void reset_to_static_children() {
        std::vector<std::unique_ptr<record>> kept;
        for (const child_spec& each : spec_.children) {
            record* existing = find(each.id);
            if (existing != nullptr) {
                const std::size_t index = index_of(*existing);
                kept.push_back(std::move(children_[index]));
            } else {
                kept.push_back(make_record(each));
            }
        }
        for (auto& left : children_)
            if (left) left->process->forget();
        children_ = std::move(kept);
    }

    void start_static_children() {
        std::vector<record*> started;
        for (record* child : children_from(0)) {  // a copy: an ignored temporary child leaves children_
            try {
                if (start_record(*child)) started.push_back(child);
            } catch (const error&) {
                stop_group(started, false);
                throw;
            }
        }
    }

    // --- exits and restarts ---------------------------------------------------
    void child_exited(const child_process* process, std::uint64_t number, const exit_reason& why) {
        record* child = find(process);
        if (child == nullptr || !child->expect_exit || child->instance != number) return;  // stale
        child->expect_exit = false;
        publish(event_kind::exited, *child, why.kind, why.what);
        const bool restart = child->spec.restart == restart_type::permanent ||
                             (child->spec.restart == restart_type::transient && !why.is_normal());
        if (restart) {
            restart_child_after_exit(*child, why);
            return;
        }
        const bool significant = child->spec.significant;
        if (child->spec.restart == restart_type::temporary) remove_record(*child);
        else child->process->discard();
        if (significant) check_auto_shutdown();
    }

    void check_auto_shutdown() {
        const auto rule = spec_.flags.auto_shutdown;
        if (rule == auto_shutdown::never) return;
        if (rule == auto_shutdown::all_significant) {
            for (const auto& child : children_)
                if (child->spec.significant && (child->process->is_running() || child->retry_pending)) return;
        }
        leaving_ = exit_reason{exit_kind::shutdown, "auto_shutdown: significant children ended"};
    }

    // `why`: how the child ended, or why its last restart failed.
    void restart_child_after_exit(record& child, const exit_reason& why) {
        if (stop_requested() || leaving_) return;  // no restart while stopping
        if (!log_.allow(runtime_.clock().now())) {
            give_up(child, why);
            return;
        }
        restarts_.fetch_add(1, std::memory_order_relaxed);
        switch (spec_.flags.strategy) {
        case strategy::one_for_one: restart_group({&child}); break;
        case strategy::one_for_all: restart_group(children_from(0)); break;
        case strategy::rest_for_one: restart_group(children_from(index_of(child))); break;
        }
    }

    // Stops the group newest first (the exited child is already down), then
    // starts its non-temporary members in order. A failed start is counted
    // and retried through the mailbox, as OTP's try_again_restart.
    void restart_group(std::vector<record*> group) {
        stop_group(group, true);
        group.erase(std::remove_if(group.begin(), group.end(), [&](record* member) { return index_of(*member) == children_.size(); }),
                    group.end());
        for (record* member : group) {
            if (member->process->is_running()) continue;
            try {
                if (start_record(*member)) publish(event_kind::restarted, *member);
            } catch (const error& failure) {
                detail::report(report_kind::crash, [&](report_line& line) {
                    line << "supervisor '" << name() << "': child '" << member->spec.id
                         << "' failed to restart (tried again): " << failure.what();
                });
                schedule_retry(*member, exit_reason{exit_kind::crashed, failure.what()});
                return;
            }
        }
    }

    void schedule_retry(record& child, exit_reason why) {
        child.retry_pending = true;
        const child_process* process = child.process.get();
        this->post([process, why = std::move(why)](void* target, reply_cell*) {
            auto& self = *static_cast<supervisor_core*>(static_cast<actor*>(target));
            record* again = self.find(process);
            if (again == nullptr || !again->retry_pending) return;
            self.restart_child_after_exit(*again, why);
        });
    }

    void give_up(const record& child, const exit_reason& why) {
        publish(event_kind::gave_up, child, exit_kind::shutdown, "restart intensity exceeded");
        detail::report(report_kind::give_up, [&](report_line& line) {
            line << "supervisor '" << name() << "' gave up: more than "
                 << std::uint64_t{spec_.flags.intensity.max_restarts} << " restarts in " << spec_.flags.intensity.period
                 << "; last exit: child '" << child.spec.id << "' (" << to_string(why.kind) << ": " << why.what << ")";
        });
        leaving_ = exit_reason{exit_kind::shutdown, "supervisor '" + name() + "' gave up: more than " +
                                                        std::to_string(spec_.flags.intensity.max_restarts) +
                                                        " restarts within the period"};
    }
};

inline std::shared_ptr<supervisor_core> make_supervisor_core(runtime& where, supervisor_spec spec) {
    auto core = make_registered<supervisor_core>(where, std::move(spec));
    where.add_meter({core, [](const void* alive, metered_counters& out) {  // keepsake/metrics.hpp
                         const auto& tree = *static_cast<const supervisor_core*>(alive);
                         const supervisor_stats stats = tree.stats();
                         out.supervisor = true;
                         out.name = tree.name();
                         out.state = to_string(tree.state());
                         out.instance = stats.instance;
                         out.restarts = stats.restarts;
                         out.queued = tree.queued();
                         out.uptime_seconds = std::chrono::duration<double>(stats.uptime).count();
                     }});
    return core;
}

} // namespace detail

inline child_spec child(supervisor_spec spec) {
    return detail::child_spec_of(std::move(spec), child_kind::supervisor, [](runtime& where, const auto& kept) {
        return detail::make_supervisor_core(where, kept);
    });
}

// A handle to a supervisor; management calls are safe from any thread
// (not from the supervisor's own children while it is stopping them).
class supervisor {
public:
    supervisor() = default;
    explicit supervisor(std::shared_ptr<detail::supervisor_core> core) : core_(std::move(core)) {}

    void start_child(const child_spec& spec) {
        core().manage([spec](detail::supervisor_core& self) { self.do_start_child(spec); });
    }
    template <class State, class Handler>
    unit<State, Handler> start_child(unit_spec<State, Handler> spec) {
        const std::string id = spec.name;
        start_child(child(std::move(spec)));
        return unit<State, Handler>(core_->runtime_of().find_registered<detail::unit_core<State, Handler>>(id));
    }
    void restart_child(const std::string& id) {
        core().manage([id](detail::supervisor_core& self) { self.do_restart_child(id); });
    }
    void terminate_child(const std::string& id) {
        core().manage([id](detail::supervisor_core& self) { self.do_terminate_child(id); });
    }
    void delete_child(const std::string& id) {
        core().manage([id](detail::supervisor_core& self) { self.do_delete_child(id); });
    }
    std::vector<child_info> which_children() {
        return core().manage([](detail::supervisor_core& self) { return self.do_which_children(); });
    }
    child_counts count_children() {
        return core().manage([](detail::supervisor_core& self) { return self.do_count_children(); });
    }

    supervisor_stats stats() const { return core().stats(); }
    const std::string& name() const { return core().name(); }
    child_state state() const { return core().state(); }
    bool is_running() const { return core().is_running(); }
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
inline supervisor start_supervisor(runtime& where, supervisor_spec spec) {
    auto core = detail::make_supervisor_core(where, std::move(spec));
    core->start_as_root();
    return supervisor(core);
}

// Stops a tree started with start_supervisor: children newest first.
inline void stop_supervisor(runtime& where, supervisor& which) {
    if (!which) return;
    which.shared_core()->stop_root();
    where.remove_root(which.shared_core().get());
}

// The supervisor registered under `name`, if it accepts calls (running, or
// being restarted by its parent); nothing for a stopped one. Throws
// type_mismatch if the name is a unit's.
inline std::optional<supervisor> whereis_supervisor(const runtime& where, const std::string& name) {
    auto core = where.find_registered<detail::supervisor_core>(name);
    if (!core || !core->accepts_calls()) return std::nullopt;
    return supervisor(std::move(core));
}

} // namespace keepsake
