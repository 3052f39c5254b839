// keepsake/detail/child.hpp: what a supervisor sees of a child (a unit or
// another supervisor), and the mailbox-and-calls machinery both share.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <typeinfo>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

#include <boost/fiber/context.hpp>

#include "keepsake/call_result.hpp"
#include "keepsake/clock.hpp"
#include "keepsake/detail/config.hpp"
#include "keepsake/detail/futex.hpp"
#include "keepsake/detail/mailbox.hpp"
#include "keepsake/detail/parking.hpp"
#include "keepsake/error.hpp"
#include "keepsake/events.hpp"
#include "keepsake/detail/signal.hpp"
#include "keepsake/detail/unit_registration.hpp"
#include "keepsake/restart_policy.hpp"
#include "keepsake/runtime.hpp"

namespace keepsake {

enum class child_kind { worker, supervisor };

enum class child_state { running, restarting, not_running };

inline const char* to_string(child_state state) noexcept {
    switch (state) {
    case child_state::running: return "running";
    case child_state::restarting: return "restarting";
    case child_state::not_running: return "not_running";
    }
    return "unknown";
}

namespace detail {

class child_process;

// A child's parent, told when an instance of the child ends by itself (not
// when the parent stopped it): which child, which instance, and why. A child
// holds its parent weakly (a parent may go first) and names itself, so
// nothing is allocated at a start or an end (a std::function holding a
// weak pointer was: 32 B at each start, and a copy at each end).
class exit_listener {
public:
    virtual void on_child_exit(child_process* which, std::uint64_t instance, const exit_reason& why) = 0;

protected:
    ~exit_listener() = default;
};

class child_process {
public:
    virtual ~child_process() = default;
    virtual child_kind kind() const noexcept = 0;
    virtual const std::string& id() const noexcept = 0;
    // Starts a new instance and returns when it runs (true), or when its
    // init declined to start (ignore_start: false, nothing runs). Throws
    // error(start_failed) saying why if it cannot start.
    virtual bool start(std::weak_ptr<exit_listener> parent) = 0;
    // Stops the running instance as `how` says and returns when it ended.
    // `restart_follows`: calls keep queueing rather than failing.
    virtual void stop(const shutdown_spec& how, bool restart_follows) = 0;
    virtual bool is_running() const noexcept = 0;
    virtual std::uint64_t instance() const noexcept = 0;
    // No restart will follow: fail whatever waits for this child.
    virtual void discard() = 0;
    // Its spec is deleted: also give up its name (and a unit its keeper),
    // even if a handle still holds it, so the id can be used again.
    virtual void forget() { discard(); }
    // --- the unit registry (a unit's; a supervisor has none) ---
    // Where its supervisor placed it, before each start.
    virtual void place(const placement&) {}
    // It ended for good (no restart follows): the status the registry keeps,
    // or, when `remove_key`, its state, record and history are deleted.
    virtual void retire(unit_status, bool /*remove_key*/) {}
    // Why its last start was declined by the registry (permanently crashed), if it was.
    virtual std::optional<std::string> refused_start() const { return std::nullopt; }
};

// A fiber (or thread) with a mailbox of callables, served one at a time:
// the base of units and supervisors.
class actor {
public:
    explicit actor(std::string name) : name_(std::move(name)) {}
    KEEPSAKE_INLINE virtual ~actor();
    actor(const actor&) = delete;
    actor& operator=(const actor&) = delete;

    const std::string& name() const noexcept { return name_; }
    child_state state() const noexcept { return static_cast<child_state>(state_.load(std::memory_order_acquire)); }
    std::size_t queued() const noexcept { return mailbox_.size(); }

protected:
    mailbox mailbox_;
    reply_pool replies_;
    // The message being served. It lies in the serving fiber's outermost
    // frame (fiber_main), which outlives the unwinding of a crashed
    // instance: an idle actor carries a pointer, not 96 bytes. Null while
    // no fiber serves.
    message* inflight_ = nullptr;
    std::atomic<boost::fibers::context*> server_{nullptr};  // the fiber serving the mailbox
    std::atomic<boost::fibers::scheduler*> server_scheduler_{nullptr};  // ... and its thread's scheduler
    // Last, so the private lock after it shares its word.
    std::atomic<int> state_{static_cast<int>(child_state::not_running)};

    void set_state(child_state next) noexcept { state_.store(static_cast<int>(next), std::memory_order_release); }

    // Running again: after any drain of a caller that saw it stopped (a
    // worker and a drain must not both take from the mailbox).
    void set_running() noexcept;

    // Queues `job` (called as job(target, reply)) and waits up to `timeout`
    // (real time) for its answer.
    // `on_worker`: the job must run on the worker fiber, never in a lent turn.
    template <class R, class Job>
    R request(Job&& job, duration timeout, bool on_worker = false) {
        boost::fibers::context* caller = calling_fiber();
        check_accepting();
        std::optional<reply_value<R>> result;
        reply_cell* cell = push_call(std::forward<Job>(job), &result, on_worker);
        if (!await(*cell, caller, timeout)) throw timeout_error(timeout);
        const int outcome = cell->state.load(std::memory_order_acquire);
        // Thrown from this frame, not a helper's: each frame between a throw
        // and its catch is a step of the unwinder, in each of its two
        // phases (about 0.15 us here). And no object with a destructor is
        // alive at the throw (that frame would be a landing pad the
        // unwinder stops at and resumes from), so the crash's reason waits
        // in a string of this thread's, swapped out of the cell.
        if (outcome == reply_cell::crashed) {
            std::string& reason = crash_reason_buffer();
            reason.swap(cell->crash_reason);  // both keep a buffer: no allocation
            const bool restarted = cell->crash_restarted;
            replies_.release(cell);
            throw worker_crashed(name_, reason, restarted);  // no suspension before it copies the reason
        }
        if (outcome == reply_cell::failed) rethrow_failure(*cell);
        replies_.release(cell);
        if constexpr (!std::is_void_v<R>) return std::move(*result);
    }

    // The same, with a crash while serving it, a stopped actor or a timeout
    // returned rather than thrown.
    template <class R, class Job>
    call_result<R> try_request(Job&& job, duration timeout, bool on_worker = false) {
        boost::fibers::context* caller = calling_fiber();
        if (state() == child_state::not_running) return call_results::failed<R>(not_running_error());
        call_result<R> out;
        reply_cell* cell = push_call(std::forward<Job>(job), call_results::slot(out), on_worker);
        if (!await(*cell, caller, timeout)) return call_results::failed<R>(timeout_error(timeout));
        const int outcome = cell->state.load(std::memory_order_acquire);
        if (outcome == reply_cell::crashed)
            out = call_results::crashed<R>(name_, std::move(cell->crash_reason), cell->crash_restarted);
        if (outcome != reply_cell::failed) {
            replies_.release(cell);
            return out;
        }
        std::exception_ptr failure = std::move(cell->failure);
        replies_.release(cell);
        try {
            std::rethrow_exception(failure);
        } catch (const error& why) {  // not_running, from a stop that drained the mailbox
            return call_results::failed<R>(why);
        }
    }

    template <class Job>
    void post(Job&& job, bool on_worker = false) {
        check_accepting();
        mailbox_.push(std::forward<Job>(job), nullptr, on_worker);
        fail_if_stopped_meanwhile();
    }

    // Answers a call with a value (or completes a void one).
    template <class R, class Value>
    static void answer_value(reply_cell* reply, Value&& value) {
        if (reply == nullptr) return;
        answer(*reply, reply_cell::answered, [&](reply_cell& cell) {
            *static_cast<std::optional<reply_value<R>>*>(cell.result) = std::forward<Value>(value);
        });
    }

    // The in-flight message (or `served`, one served inside its handler's
    // yield) is done with (served or failed).
    void finish_inflight() noexcept {
        if (inflight_ != nullptr) finish(*inflight_);
    }
    void finish(message& served) noexcept {
        if (reply_cell* reply = served.reply()) replies_.release(reply);
        served.reset();
    }

    void fail_inflight(const std::exception_ptr& failure) {
        if (inflight_ != nullptr) fail(*inflight_, failure);
    }
    void fail(message& served, const std::exception_ptr& failure) {
        if (reply_cell* reply = served.reply()) answer_failure(*reply, failure);
        finish(served);
    }

    // The worker crashed serving the in-flight message: its caller learns
    // worker_crashed, with the reason (no exception is made here: the caller
    // makes one only if it wants it thrown).
    void crash_inflight(std::string_view reason, bool restarted) noexcept {
        if (inflight_ != nullptr) crash(*inflight_, reason, restarted);
    }
    void crash(message& served, std::string_view reason, bool restarted) noexcept {
        if (reply_cell* reply = served.reply()) answer_crash(*reply, reason, restarted);
        finish(served);
    }

    // Where a crash's reason waits for the throw that tells a caller of it
    // (see request): this thread's, so use it only where nothing suspends
    // between filling it and the throw.
    static std::string& crash_reason_buffer() noexcept {
        thread_local std::string reason;
        return reason;
    }

    // Serves at most `limit` queued messages on this fiber.
    std::size_t serve_queued(std::size_t limit) {
        std::size_t served = 0;
        while (served < limit && mailbox_.pop(*inflight_)) {
            inflight_->run(this);
            finish_inflight();
            ++served;
        }
        return served;
    }

    // Every queued call fails with not_running; casts are dropped. Only
    // while no worker serves the mailbox (it has one consumer); drains from
    // several threads take turns.
    void fail_pending() noexcept;

    void drain_failing() noexcept;

    // The error for a caller nobody will serve. Without memory for its
    // message, bad_alloc (from the exception runtime's emergency pool) still
    // wakes the caller.
    std::exception_ptr not_running_failure() const noexcept;

    error not_running_error() const;

private:
    futex_mutex draining_;  // fail_pending, and the switch back to running
    std::string name_;

    void check_accepting() const {
        if (state() == child_state::not_running) throw not_running_error();
    }

    void refuse_self_call(const boost::fibers::context* caller) const {
        if (caller != nullptr && server_.load(std::memory_order_relaxed) == caller)
            throw error(errc::invalid_argument, "'" + name_ +
                                                    "' called itself from its own worker; that would wait "
                                                    "forever (change the state directly instead)");
    }

    // The calling fiber (none for a plain thread: it is not even asked for
    // a Boost.Fiber context, a thread-local lookup and a scheduler made for
    // the thread on first use). Refuses a call from the actor's own worker.
    boost::fibers::context* calling_fiber() const {
        boost::fibers::context* caller = current_inbox() != nullptr ? boost::fibers::context::active() : nullptr;
        refuse_self_call(caller);
        return caller;
    }

    template <class Job>
    reply_cell* push_call(Job&& job, void* result, bool on_worker) {
        reply_cell* cell = replies_.acquire(result);
        mailbox_.push(std::forward<Job>(job), cell, on_worker);
        fail_if_stopped_meanwhile();
        return cell;
    }

    // A stop that raced with the push drained the mailbox before the
    // message arrived: drain again so nothing waits for a stopped actor.
    void fail_if_stopped_meanwhile() noexcept {
        if (state() == child_state::not_running) fail_if_still_stopped();
    }

    void fail_if_still_stopped() noexcept;

    // Waits for the answer; false (the cell given up) after `timeout`.
    bool await(reply_cell& cell, const boost::fibers::context* caller, duration timeout) {
        const bool same_thread =
            caller != nullptr && caller->get_scheduler() == server_scheduler_.load(std::memory_order_relaxed);
        // A timeout of a century or more waits forever (and cannot overflow).
        const auto deadline = timeout >= std::chrono::hours(24 * 365 * 100)
                                  ? no_deadline
                                  : wait_clock::now() + std::chrono::duration_cast<wait_clock::duration>(timeout);
        if (await_answer(cell, deadline, same_thread)) return true;
        replies_.release(&cell);
        return false;
    }

    error timeout_error(duration timeout) const {
        return error(errc::timeout, "a call to '" + name_ + "' got no answer within " +
                                        std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count()) +
                                        " ms; it may still be served later (raise the timeout, or use cast)");
    }

    // A call's failure other than a crash (not_running, from a stop that
    // drained the mailbox), thrown; the cell is given back first.
    [[noreturn]] void rethrow_failure(reply_cell& cell) {
        std::exception_ptr failure = std::move(cell.failure);
        replies_.release(&cell);
        std::rethrow_exception(failure);
    }
};

// An actor with a lifecycle a supervisor drives: each start runs a new
// instance on a fiber, and stop asks, waits up to the shutdown timeout, then
// forces (at the instance's next suspension point: fibers cannot be
// pre-empted). Units and supervisors are both this.
class supervised_actor : public actor, public child_process, public root_process, public named_process {
public:
    supervised_actor(runtime& where, std::string name) : actor(std::move(name)), runtime_(where) {}

    const std::string& id() const noexcept override { return name(); }
    bool is_running() const noexcept override { return fiber_alive_.load(std::memory_order_acquire); }
    bool accepts_calls() const noexcept override { return state() != child_state::not_running; }
    std::uint64_t instance() const noexcept override { return instance_.load(std::memory_order_acquire); }

    KEEPSAKE_INLINE bool start(std::weak_ptr<exit_listener> parent) override;

    // Starts it with no supervisor above it: when it ends by itself it stays
    // down (calls fail with not_running), and the runtime stops it when the
    // runtime goes. Its start is an event, by "runtime", as a child's start
    // is by its supervisor. False if its init declined (ignore_start).
    bool start_as_root();

    KEEPSAKE_INLINE void stop(const shutdown_spec& how, bool restart_follows) override;

    KEEPSAKE_INLINE void discard() override;

    KEEPSAKE_INLINE void stop_root() override;

    KEEPSAKE_INLINE void forget() override;

    runtime& runtime_of() const noexcept { return runtime_; }

    // Started as a root: waits until it ended (by itself, or stopped) and
    // returns how (stopped: shutdown). error(invalid_argument) for one that
    // is not a root (a supervisor's child is restarted, not waited for).
    exit_reason wait_root();

    duration uptime() const;

protected:
    runtime& runtime_;

    // One instance, on its fiber. Call report_started() once it runs; an
    // exception before that is a failed start.
    virtual exit_reason run_instance(std::uint64_t number) = 0;
    // Wake the instance so it sees a stop request.
    virtual void wake_for_stop() { mailbox_.wake(); }
    virtual std::shared_ptr<supervised_actor> self_pointer() = 0;
    // From the spec it was made from (read at start and at stop, so not
    // copied into each of them: every idle unit would carry 24 bytes).
    virtual shutdown_spec own_shutdown() const noexcept = 0;
    virtual std::size_t fiber_stack_size() const noexcept = 0;

    void report_started() { report_start(outcome::started, {}); }

    // Publishes what this actor did to `child` (itself, for a unit's worker
    // or a supervisor's own stop), stamped with the runtime's clock.
    void publish(event_kind kind, std::string_view child, std::uint64_t child_instance,
                 exit_kind reason_kind = exit_kind::normal, std::string_view reason = {}) const;
    void publish_by(std::string_view by, event_kind kind, std::string_view child, std::uint64_t child_instance,
                    exit_kind reason_kind = exit_kind::normal, std::string_view reason = {}) const;
    bool started() const noexcept { return started_; }
    bool stop_requested() const noexcept { return stop_requested_.load(std::memory_order_acquire); }
    bool forced() const noexcept { return forced_.load(std::memory_order_acquire); }
    bool stopped_by_parent() const noexcept { return stopped_by_parent_.load(std::memory_order_acquire); }

    // How a root's own end counts for runtime::wait, from the reason its
    // instance returned (a supervisor that gave up exits with shutdown, as
    // OTP's does, but for a program that is a crash). On its fiber.
    virtual exit_reason root_exit(const exit_reason& reason) const { return reason; }

private:
    enum class outcome : std::uint8_t { pending, started, ignored, failed };

    detail::signal lifecycle_;  // start outcome, fiber end
    std::weak_ptr<exit_listener> parent_;  // under lifecycle_; none for a root (its end discards it)
    // The flags packed beside the two enums, in two words: every idle unit
    // holds them.
    outcome start_outcome_ = outcome::pending;  // under lifecycle_
    bool root_ended_ = false;                   // under lifecycle_: runtime told
    bool root_exit_lost_ = false;               // under lifecycle_: out of memory when root_exit() was kept
    exit_kind root_exit_kind_ = exit_kind::normal;  // under lifecycle_: how the root ended, kept out of memory too
    bool started_ = false;  // the instance's fiber only
    std::atomic<bool> fiber_alive_{false};
    std::atomic<bool> stop_requested_{false};
    std::atomic<bool> forced_{false};
    std::atomic<bool> stopped_by_parent_{false};
    std::atomic<bool> root_{false};       // started by start_as_root
    std::atomic<bool> root_live_{false};  // a root that has not ended yet
    bool root_by_itself_ = false;         // under lifecycle_: it ended on its own, root_exit() says how
    std::atomic<std::uint64_t> instance_{0};
    std::atomic<std::int64_t> started_at_{0};
    // Why a start failed, how a root ended: made by the first that needs
    // them and kept (an idle unit carries a pointer, not 72 bytes).
    struct ending_notes {
        std::string start_error;
        exit_reason root_exit;
    };
    std::unique_ptr<ending_notes> notes_;  // under lifecycle_
    ending_notes& notes() {                // under lifecycle_
        if (!notes_) notes_ = std::make_unique<ending_notes>();
        return *notes_;
    }
    // How the root ended, under lifecycle_. Never throws: a root's end is
    // on its fiber's way out (out of memory, its kind is kept, not its text).
    void keep_root_exit(const exit_reason& how) noexcept {
        root_exit_kind_ = how.kind;
        try {
            notes().root_exit = how;
            root_exit_lost_ = false;
        } catch (...) {
            root_exit_lost_ = true;
        }
    }
    exit_reason root_exit() const {  // under lifecycle_
        if (root_exit_lost_) return exit_reason{root_exit_kind_, "(text lost)"};  // short: no allocation
        return notes_ ? notes_->root_exit : exit_reason{};
    }

    // Once per root: records how it ended (`how`, unless it ended by itself:
    // then its own reason) and tells the runtime; `counts` false for a start
    // that did not happen, which is no exit for runtime::wait.
    void end_root(const exit_reason& how, bool counts = true);

    void prepare_instance(std::weak_ptr<exit_listener> parent);

    void report_start(outcome result, std::string why);

    void request_stop();

    void force();

    bool wait_ended(duration deadline);

    void fiber_main(std::uint64_t number);

    // The instance ended before it reported started: it failed, or declined.
    void end_start(outcome result, const std::string& why);

    void end_instance(std::uint64_t number, const exit_reason& reason);
};

// Makes a unit's or supervisor's core and registers its name, so whereis
// finds it and a second one of that name is refused.
template <class Core, class Spec>
std::shared_ptr<Core> make_registered(runtime& where, Spec spec) {
    auto core = std::make_shared<Core>(where, std::move(spec));
    where.register_name(core->name(), typeid(Core), &Core::type_description, core);
    return core;
}

} // namespace detail
} // namespace keepsake

#ifdef KEEPSAKE_HEADER_ONLY
#include "keepsake/detail/child-inl.hpp"
#endif
