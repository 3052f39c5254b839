// keepsake/unit.hpp: a supervised unit: a keeper (the committed state, in
// shared memory) paired with a restartable worker fiber and a mailbox.
//
// The worker runs the user's code against a live copy of the state and
// commits it to the keeper. When the worker crashes (an exception escapes),
// the unit restarts it in place on the same fiber, from the newest commit:
// the message that crashed is answered with worker_crashed, the messages
// queued behind it stay and are served by the restarted worker. Past its
// restart intensity (1000 restarts in 10 s by default) the unit gives up and
// its supervisor decides.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include "keepsake/call_result.hpp"
#include "keepsake/clock.hpp"
#include "keepsake/detail/unit_core.hpp"
#include "keepsake/error.hpp"
#include "keepsake/runtime.hpp"
#include "keepsake/unit_context.hpp"
#include "keepsake/unit_spec.hpp"

namespace keepsake {

// A handle to a unit; cheap to copy, safe to use from any thread.
template <class State, class Handler = no_handler>
class unit {
public:
    using core_type = detail::unit_core<State, Handler>;

    unit() = default;
    explicit unit(std::shared_ptr<core_type> core) : core_(std::move(core)) {}

    // Runs a message on the worker and returns its result: a callable
    // (State&) / (const State&) / (State&, unit_context<State>&), or a typed
    // message for the unit's handler. Throws worker_crashed if the worker
    // crashed serving it, error(not_running) if the unit is stopped,
    // error(timeout) after the spec's call_timeout.
    template <class Message>
    auto call(Message&& message) {
        if constexpr (check_message<Message>()) return core().call(std::forward<Message>(message), core().call_timeout());
    }

    template <class Message>
    auto call_for(Message&& message, duration timeout) {
        if constexpr (check_message<Message>()) return core().call(std::forward<Message>(message), timeout);
    }

    // As call, but returns a call_result<R> rather than throwing when the
    // worker crashed serving the message (code() worker_crashed, reason(),
    // restarted()), the unit is stopped (not_running) or no answer came in
    // time (timeout): a crash then costs one exception, the handler's own,
    // where call adds a second for its caller. The crash is otherwise the
    // same: the unit restarts from its last commit, with the same events and
    // crash report. A self-call or an empty handle still throws.
    template <class Message>
    auto try_call(Message&& message) {
        if constexpr (check_message<Message>())
            return core().try_call(std::forward<Message>(message), core().call_timeout());
    }

    template <class Message>
    auto try_call_for(Message&& message, duration timeout) {
        if constexpr (check_message<Message>()) return core().try_call(std::forward<Message>(message), timeout);
    }

    // Queues a message and returns at once.
    template <class Message>
    void cast(Message&& message) {
        if constexpr (check_message<Message>()) core().cast(std::forward<Message>(message));
    }

    const std::string& name() const { return core().name(); }
    child_state state() const { return core().state(); }
    unit_stats stats() const { return core().stats(); }
    // For a unit started with start_unit: blocks until it ended (gave up,
    // stopped itself, or stopped) and returns how; as supervisor::wait.
    exit_reason wait() { return core().wait_root(); }

    // Called on the worker after each commit with the previous and the new
    // committed state, in commit order.
    std::uint64_t on_state_changed(std::function<void(const State&, const State&)> listener) {
        return core().add_state_listener(std::move(listener));
    }
    // Called on the worker each time it ends (crash or stop), with the
    // reason and the worker's state at that moment.
    std::uint64_t on_terminate(std::function<void(const exit_reason&, const State&)> listener) {
        return core().add_terminate_listener(std::move(listener));
    }
    void remove_listener(std::uint64_t id) { core().remove_listener(id); }

    explicit operator bool() const noexcept { return static_cast<bool>(core_); }
    const std::shared_ptr<core_type>& shared_core() const noexcept { return core_; }

private:
    std::shared_ptr<core_type> core_;

    // One clear error for a message this unit cannot serve; false then, so
    // the call is not instantiated and no second error follows.
    template <class Message>
    static constexpr bool check_message() {
        using check = detail::message_check<std::decay_t<Message>, State, Handler, unit_context<State>>;
        static_assert(check::known,
                      "keepsake: the unit cannot serve this message: it is neither a callable taking State& (or "
                      "const State&, or State& and unit_context<State>&) nor a type the unit's Handler has an "
                      "operator()(State&, const Message&) for; add that overload to the handler, or check the "
                      "message's type and the unit's State");
        static_assert(!check::known || check::by_value,
                      "keepsake: a message's result must be a value, not a reference: a reference would point "
                      "into the unit's state, which the worker goes on changing (and a crash rolls back) after "
                      "the answer; return a copy (declare the handler or lambda '-> T', or return by value)");
        return check::ok;
    }

    core_type& core() const {
        if (!core_) throw error(errc::not_found, "empty keepsake::unit handle");
        return *core_;
    }
};

namespace detail {

// Registers a made core's name (a supervisor makes cores for its children;
// start_unit for a unit of its own); metrics find it there too.
template <class State, class Handler>
std::shared_ptr<unit_core<State, Handler>> registered_unit_core(runtime& where,
                                                                std::shared_ptr<unit_core<State, Handler>> core) {
    where.register_name(core->name(), typeid(unit_core<State, Handler>), &unit_core<State, Handler>::type_description,
                        core);
    return core;
}

// `name`: the unit's own, for a spec it shares with others (empty: the spec's).
template <class State, class Handler>
std::shared_ptr<unit_core<State, Handler>> make_unit_core(runtime& where,
                                                          std::shared_ptr<const unit_spec<State, Handler>> spec,
                                                          std::string name = {}) {
    // A State unit_spec refuses (its static_assert says why) makes no core:
    // its errors would only follow that one.
    if constexpr (std::is_copy_constructible_v<State> && std::is_copy_assignable_v<State>) {
        if (name.empty()) name = spec->name;
        return registered_unit_core(where,
                                    std::make_shared<unit_core<State, Handler>>(where, std::move(spec), std::move(name)));
    } else {
        return nullptr;
    }
}

// A spec of the unit's own (start_unit): its handler is moved, not copied.
template <class State, class Handler>
std::shared_ptr<unit_core<State, Handler>> make_unit_core(runtime& where, unit_spec<State, Handler> spec) {
    if constexpr (std::is_copy_constructible_v<State> && std::is_copy_assignable_v<State>) {
        return registered_unit_core(where, std::make_shared<unit_core<State, Handler>>(where, std::move(spec)));
    } else {
        return nullptr;
    }
}

// Starts an object's core (object_directory) as a root, from the
// directory's shared spec, under the object's name.
template <class State, class Handler>
unit<State, Handler> start_unit_sharing(runtime& where, std::shared_ptr<const unit_spec<State, Handler>> spec,
                                        std::string name) {
    // Not held by name in the runtime: its directory reserved its key space
    // (runtime::reserve_key_space) and finds it.
    auto core = std::make_shared<unit_core<State, Handler>>(where, std::move(spec), std::move(name));
    core->start_as_root();
    return unit<State, Handler>(core);
}

} // namespace detail

// Starts a unit with no supervisor above it. When it gives up it stops, and
// calls to it fail with not_running. The runtime stops it when it goes. If
// its init declines (ignore_start), the handle's state() is not_running.
template <class State, class Handler>
unit<State, Handler> start_unit(runtime& where, unit_spec<State, Handler> spec) {
    if constexpr (!std::is_copy_constructible_v<State> || !std::is_copy_assignable_v<State>) {
        return {};  // refused by unit_spec's static_assert
    } else {
        auto core = detail::make_unit_core(where, std::move(spec));
        core->start_as_root();
        return unit<State, Handler>(core);
    }
}

// Stops a unit started with start_unit (by its shutdown spec).
template <class State, class Handler>
void stop_unit(runtime& where, unit<State, Handler>& which) {
    if (!which) return;
    which.shared_core()->stop_root();
    where.remove_root(which.shared_core().get());
}

// The unit registered under `name`, if it accepts calls (running, or being
// restarted by its supervisor); nothing for a stopped unit, as OTP's whereis
// for a process that ended. Throws type_mismatch, naming the State and
// Handler it was started with, if the name holds other types.
template <class State, class Handler = no_handler>
std::optional<unit<State, Handler>> whereis(const runtime& where, const std::string& name) {
    auto core = where.find_registered<detail::unit_core<State, Handler>>(name);
    if (!core || !core->accepts_calls()) return std::nullopt;
    return unit<State, Handler>(std::move(core));
}

} // namespace keepsake
