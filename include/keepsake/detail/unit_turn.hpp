// keepsake/detail/unit_turn.hpp: a unit's borrowed turn (declared in
// detail/unit_core.hpp): a direct call runs its message on the caller's
// fiber, standing in for the idle worker, with the worker's crash handling
// (restart in place from the last commit, or the instance's end handed to
// the worker). See unit_spec::direct_calls.
#pragma once

#include "keepsake/detail/unit_core.hpp"

namespace keepsake {
namespace detail {

// Takes the turn (see the declaration): the caller's fiber stands in as
// the server while it runs its own message.
template <class State, class Handler>
inline bool unit_core<State, Handler>::borrow_turn() {
    if (!spec_->direct_calls || current_inbox() == nullptr) return false;  // a plain thread never runs it
    boost::fibers::context* caller = boost::fibers::context::active();
    if (caller->get_scheduler() != server_scheduler_.load(std::memory_order_relaxed)) return false;
    if (caller == server_.load(std::memory_order_relaxed)) return false;
    if (state() != child_state::running || context_stop_requested() || ended_in_turn() || !mailbox_.try_borrow())
        return false;
    lender_ = server_.exchange(caller, std::memory_order_relaxed);
    return true;
}

template <class State, class Handler>
inline void unit_core<State, Handler>::return_turn() {
    server_.store(lender_, std::memory_order_relaxed);
    mailbox_.give_back(ended_in_turn() || context_stop_requested());
}

template <class State, class Handler>
inline bool unit_core<State, Handler>::serve_backlog_in_turn() {
    while (mailbox_.pop(*inflight_, true)) {
        if (serve_inflight()) {
            finish_inflight();
        } else if (!restart_in_turn()) {
            return false;
        }
        if (context_stop_requested()) {
            return_turn();
            return false;
        }
    }
    if (mailbox_.front_on_worker()) {
        return_turn();
        return false;
    }
    return true;
}

template <class State, class Handler>
inline bool unit_core<State, Handler>::restart_in_turn() {
    for (;;) {
        if (std::optional<exit_reason> ended = on_crash(crash_reason())) {
            end_instance_in_turn(std::move(*ended));
            return false;
        }
        // A restart that throws (the init hook) is another crash, as on
        // the worker; one it declines ends the instance.
        try {
            hand_over_state(instance());
            return true;
        } catch (const ignore_start& declined) {
            end_instance_in_turn(exit_reason{exit_kind::normal, declined.reason()});
            return false;
        } catch (const std::exception& thrown) {
            set_crash_reason(thrown.what());
        } catch (...) {
            set_crash_reason("an exception not derived from std::exception");
        }
    }
}

template <class State, class Handler>
inline void unit_core<State, Handler>::end_instance_in_turn(exit_reason ended) {
    try {
        made_crash_notes().ended_in_turn = std::move(ended);
    } catch (...) {  // out of memory: the turn goes back, and the caller learns bad_alloc
        return_turn();
        throw;
    }
    return_turn();
    // As a queued call's caller would, go on once the worker took it.
    while (ended_in_turn()) boost::this_fiber::yield();
}

template <class State, class Handler>
template <bool Try, class R, class Invoke>
inline std::conditional_t<Try, call_result<R>, R> unit_core<State, Handler>::serve_borrowed(Invoke&& invoke,
                                                                                   bool read_only) {
    // The unit a fatal signal is blamed on, set and put back by hand: an
    // object with a destructor alive at the throw would slow the crash.
    unit_record_slots* const outer = running_unit();
    running_unit() = registration_.entry();
    try {
        if constexpr (std::is_void_v<R>) {
            invoke();
            running_unit() = outer;
            after_message(read_only);
            return_turn();
            if constexpr (Try) return call_results::answered<R>(std::monostate{});
            else return;
        } else {
            R result = invoke();
            running_unit() = outer;
            after_message(read_only);
            return_turn();
            if constexpr (Try) return call_results::answered<R>(std::move(result));
            else return result;
        }
    } catch (const std::exception& thrown) {
        set_crash_reason(thrown.what());
    } catch (...) {
        set_crash_reason("an exception not derived from std::exception");
    }
    running_unit() = outer;
    if constexpr (Try) {
        std::string reason;
        const bool restarted = restart_after_call(reason);
        return call_results::crashed<R>(name(), std::move(reason), restarted);
    } else {
        // No string of this frame alive at the throw (see actor::request).
        std::string& reason = this->crash_reason_buffer();
        const bool restarted = restart_after_call(reason);
        throw worker_crashed(name(), reason, restarted);
    }
}

// The crash's reason is kept meanwhile: a failing restart (the init hook)
// overwrites crash_reason(), and an instance that ends yields to its worker.
template <class State, class Handler>
inline bool unit_core<State, Handler>::restart_after_call(std::string& reason) {
    std::string kept(crash_reason());
    const bool restarted = restart_in_turn();
    if (restarted) return_turn();
    reason.swap(kept);
    return restarted;
}

} // namespace detail
} // namespace keepsake
