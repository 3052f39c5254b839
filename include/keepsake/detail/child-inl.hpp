// keepsake/detail/child-inl.hpp: the code of actors and supervised actors
// (units and supervisors) that is not on a message's path. Included by
// detail/child.hpp in header-only mode; compiled once by src/keepsake.cpp
// in the compiled mode.
#pragma once

#ifndef KEEPSAKE_HEADER_ONLY
#include "keepsake/detail/child.hpp"
#endif

namespace keepsake {
namespace detail {

KEEPSAKE_INLINE actor::~actor() { fail_pending(); }

KEEPSAKE_INLINE void actor::set_running() noexcept {
    std::lock_guard<futex_mutex> guard(draining_);
    set_state(child_state::running);
}

KEEPSAKE_INLINE void actor::fail_pending() noexcept {
    std::lock_guard<futex_mutex> guard(draining_);
    drain_failing();
}

KEEPSAKE_INLINE void actor::drain_failing() noexcept {
    message pending;
    while (mailbox_.pop(pending)) {
        if (reply_cell* reply = pending.reply()) {
            answer_failure(*reply, not_running_failure());
            replies_.release(reply);
        }
        pending.reset();
    }
}

KEEPSAKE_INLINE std::exception_ptr actor::not_running_failure() const noexcept {
    try {
        return std::make_exception_ptr(not_running_error());
    } catch (...) {
        return std::make_exception_ptr(std::bad_alloc());
    }
}

KEEPSAKE_INLINE error actor::not_running_error() const {
    return error(errc::not_running, "'" + name_ +
                                        "' is not running: it was stopped, or it gave up and nothing "
                                        "restarted it. Start it again before calling it: "
                                        "supervisor::restart_child for a child of a supervisor, "
                                        "start_unit or start_supervisor for one started on its own");
}

KEEPSAKE_INLINE void actor::fail_if_still_stopped() noexcept {
    std::lock_guard<futex_mutex> guard(draining_);
    if (state() == child_state::not_running) drain_failing();
}

KEEPSAKE_INLINE bool supervised_actor::start(std::weak_ptr<exit_listener> parent) {
    if (is_running()) throw error(errc::already_started, "'" + name() + "' is already running");
    const std::uint64_t number = instance_.fetch_add(1, std::memory_order_acq_rel) + 1;
    prepare_instance(std::move(parent));
    set_running();
    // The fiber holds the actor while it runs. It takes that hold first
    // thing, not in the body it is given: a pointer and a number fit in a
    // std::function (no allocation per start), and the actor lives until
    // then, as this call waits for the start's outcome.
    runtime_.spawn(
        [this, number] {
            const std::shared_ptr<supervised_actor> held = self_pointer();
            fiber_main(number);
        },
        fiber_stack_size());
    runtime_.wait_until(lifecycle_, forever, [&] { return start_outcome_ != outcome::pending; });
    if (start_outcome_ == outcome::failed) {
        auto lock = lifecycle_.lock();
        const bool kept = notes_ && !notes_->start_error.empty();
        throw error(errc::start_failed, "'" + name() + "' failed to start: " +
                                            (kept ? notes_->start_error : std::string("(its reason was lost)")));
    }
    if (start_outcome_ == outcome::started) return true;
    discard();
    return false;
}

KEEPSAKE_INLINE bool supervised_actor::start_as_root() {
    root_.store(true, std::memory_order_release);
    // Counted before its fiber runs: it may end before start returns.
    runtime_.root_began();
    root_live_.store(true, std::memory_order_release);
    bool running = false;
    try {
        // No parent: a root that ends by itself is discarded (end_instance).
        running = start({});
    } catch (...) {
        end_root(exit_reason{exit_kind::crashed, "it failed to start"}, false);
        throw;
    }
    if (!running) {
        end_root(exit_reason{exit_kind::normal, "its init declined to start (ignore_start)"}, false);
        return false;
    }
    runtime_.add_root(self_pointer());
    publish_by("runtime", event_kind::started, name(), instance());
    return true;
}

KEEPSAKE_INLINE void supervised_actor::stop(const shutdown_spec& how, bool restart_follows) {
    stopped_by_parent_.store(true, std::memory_order_release);
    if (is_running()) {
        if (how.how == shutdown_spec::mode::brutal_kill) force();
        else request_stop();
        const duration deadline =
            how.how == shutdown_spec::mode::timeout ? runtime_.clock().now() + how.limit : forever;
        if (!wait_ended(deadline)) {
            force();
            wait_ended(forever);
        }
    }
    if (restart_follows) {
        set_state(child_state::restarting);
    } else {
        set_state(child_state::not_running);
        fail_pending();
    }
}

KEEPSAKE_INLINE void supervised_actor::discard() {
    set_state(child_state::not_running);
    fail_pending();
}

KEEPSAKE_INLINE void supervised_actor::stop_root() {
    stop(own_shutdown(), false);
    // A root that ended by itself first keeps its own reason.
    end_root(exit_reason{exit_kind::shutdown, "stopped (stop_unit, stop_supervisor, or the runtime's shutdown)"});
}

KEEPSAKE_INLINE void supervised_actor::end_root(const exit_reason& how, bool counts) {
    if (!root_live_.exchange(false, std::memory_order_acq_rel)) return;
    exit_reason told;
    {
        auto lock = lifecycle_.lock();
        if (!root_by_itself_) keep_root_exit(how);
        root_ended_ = true;
        told = root_exit();
    }
    lifecycle_.notify_all();
    runtime_.root_ended(counts ? &told : nullptr);
}

KEEPSAKE_INLINE exit_reason supervised_actor::wait_root() {
    if (!root_.load(std::memory_order_acquire))
        throw error(errc::invalid_argument, "'" + name() +
                                                "' was not started on its own (start_supervisor, start_unit): "
                                                "its supervisor restarts it, so there is no end to wait for; "
                                                "wait for the root above it, or for the runtime (runtime::wait)");
    runtime_.check_waiting_thread("wait");
    lifecycle_.wait([&] { return root_ended_; });
    auto lock = lifecycle_.lock();
    return root_exit();
}

KEEPSAKE_INLINE void supervised_actor::forget() {
    discard();
    runtime_.unregister_name(name(), this);
}

KEEPSAKE_INLINE duration supervised_actor::uptime() const {
    return is_running() ? runtime_.clock().now() - duration(started_at_.load(std::memory_order_relaxed))
                        : duration::zero();
}

KEEPSAKE_INLINE void supervised_actor::publish(event_kind kind, std::string_view child, std::uint64_t child_instance,
                                                exit_kind reason_kind, std::string_view reason) const {
    publish_by(name(), kind, child, child_instance, reason_kind, reason);
}

KEEPSAKE_INLINE void supervised_actor::publish_by(std::string_view by, event_kind kind, std::string_view child,
                                                   std::uint64_t child_instance, exit_kind reason_kind,
                                                   std::string_view reason) const {
    if (!runtime_.events().any()) return;  // not even the clock read: a crash's path is hot
    event what;
    what.kind = kind;
    what.supervisor = by;
    what.child = child;
    what.instance = child_instance;
    what.reason_kind = reason_kind;
    what.reason = reason;
    what.at = runtime_.clock().now();
    runtime_.events().publish(what);
}

KEEPSAKE_INLINE void supervised_actor::prepare_instance(std::weak_ptr<exit_listener> parent) {
    auto lock = lifecycle_.lock();
    parent_ = std::move(parent);
    start_outcome_ = outcome::pending;
    if (notes_) notes_->start_error.clear();
    started_ = false;
    stop_requested_.store(false, std::memory_order_relaxed);
    forced_.store(false, std::memory_order_relaxed);
    stopped_by_parent_.store(false, std::memory_order_relaxed);
    fiber_alive_.store(true, std::memory_order_release);
    started_at_.store(runtime_.clock().now().count(), std::memory_order_relaxed);
}

KEEPSAKE_INLINE void supervised_actor::report_start(outcome result, std::string why) {
    {
        auto lock = lifecycle_.lock();
        // Kept first, and never thrown from: start() waits for the outcome.
        try {
            if (notes_ || !why.empty()) notes().start_error = std::move(why);
        } catch (...) {  // out of memory: start() says the reason was lost
        }
        start_outcome_ = result;
        started_ = result == outcome::started;
    }
    lifecycle_.notify_all();
}

KEEPSAKE_INLINE void supervised_actor::request_stop() {
    stop_requested_.store(true, std::memory_order_release);
    wake_for_stop();
}

KEEPSAKE_INLINE void supervised_actor::force() {
    forced_.store(true, std::memory_order_release);
    request_stop();
}

KEEPSAKE_INLINE bool supervised_actor::wait_ended(duration deadline) {
    return runtime_.wait_until(lifecycle_, deadline, [&] { return !is_running(); });
}

KEEPSAKE_INLINE void supervised_actor::fiber_main(std::uint64_t number) {
    message served;  // what inflight_ points to while this fiber serves
    inflight_ = &served;
    boost::fibers::context* self = boost::fibers::context::active();
    server_scheduler_.store(self->get_scheduler(), std::memory_order_relaxed);
    server_.store(self, std::memory_order_relaxed);
    exit_reason reason;
    try {
        reason = run_instance(number);
    } catch (const ignore_start& declined) {
        if (!started_) return end_start(outcome::ignored, declined.reason());
        reason = exit_reason{exit_kind::normal, declined.reason()};
    } catch (const std::exception& thrown) {
        if (!started_) return end_start(outcome::failed, thrown.what());
        reason = exit_reason{exit_kind::crashed, thrown.what()};
    } catch (...) {
        if (!started_) return end_start(outcome::failed, "an exception not derived from std::exception");
        reason = exit_reason{exit_kind::crashed, "an exception not derived from std::exception"};
    }
    end_instance(number, reason);
}

KEEPSAKE_INLINE void supervised_actor::end_start(outcome result, const std::string& why) {
    server_.store(nullptr, std::memory_order_relaxed);
    finish_inflight();
    inflight_ = nullptr;  // before the fiber is marked ended: the next instance's fiber sets its own
    fiber_alive_.store(false, std::memory_order_release);
    report_start(result, why);
}

KEEPSAKE_INLINE void supervised_actor::end_instance(std::uint64_t number, const exit_reason& reason) {
    server_.store(nullptr, std::memory_order_relaxed);
    if (inflight_ != nullptr && !inflight_->empty()) fail_inflight(not_running_failure());  // never left, but never lost
    inflight_ = nullptr;
    // Read before the fiber is marked ended: a stopper may start the
    // next instance (with a new handler) as soon as it sees that.
    const bool by_parent = stopped_by_parent();
    const std::weak_ptr<exit_listener> parent = by_parent ? std::weak_ptr<exit_listener>{} : parent_;
    if (!by_parent) set_state(child_state::restarting);
    // A root that ended by itself: its reason is recorded before the fiber
    // is marked ended, so a stop_root that sees the end keeps it; the
    // runtime is told after, so a wait that returns sees it not running.
    const bool root_by_itself = !by_parent && root_live_.load(std::memory_order_acquire);
    exit_reason root_how = root_by_itself ? root_exit(reason) : exit_reason{};
    {
        auto lock = lifecycle_.lock();
        if (root_by_itself) {
            keep_root_exit(root_how);
            root_by_itself_ = true;
        }
        fiber_alive_.store(false, std::memory_order_release);
    }
    lifecycle_.notify_all();
    if (root_by_itself) end_root(root_how);
    if (by_parent) return;
    if (root_.load(std::memory_order_acquire)) return discard();  // a root stays down
    if (const auto listener = parent.lock()) listener->on_child_exit(this, number, reason);
}

} // namespace detail
} // namespace keepsake
