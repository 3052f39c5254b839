// keepsake/unit_context.hpp: what a worker's code sees of its unit, and
// how the unit tells the kinds of messages apart.
#pragma once

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "keepsake/clock.hpp"
#include "keepsake/keeper.hpp"
#include "keepsake/table.hpp"

namespace keepsake {

template <class State>
class unit_context;

namespace detail {

// Thrown at a suspension point of a worker whose shutdown timed out. Not a
// std::exception, so `catch (const std::exception&)` lets it through.
struct forced_stop {};

// Thrown by unit_context::crash().
class crash_request : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

template <class F, class = void>
struct has_plain_call_operator : std::false_type {};
template <class F>
struct has_plain_call_operator<F, std::void_t<decltype(&F::operator())>> : std::true_type {};

// Does `f` take the state read-only? Generic lambdas count as writers (their
// bodies are not instantiated just to ask).
template <class F, class State, class Context>
constexpr bool reads_only() {
    if constexpr (std::is_pointer_v<F> || has_plain_call_operator<F>::value)
        return std::is_invocable_v<F&, const State&> || std::is_invocable_v<F&, const State&, Context&>;
    else
        return false;
}

template <class F, class State, class Context>
constexpr bool is_state_callable() {
    return std::is_invocable_v<F&, State&> || std::is_invocable_v<F&, State&, Context&>;
}

template <class F, class State, class Context>
auto invoke_on_state(F& f, State& state, Context& context) -> decltype(auto) {
    if constexpr (std::is_invocable_v<F&, State&, Context&>) return f(state, context);
    else return f(state);
}

template <class F, class State, class Context>
using state_call_result = decltype(invoke_on_state(std::declval<F&>(), std::declval<State&>(), std::declval<Context&>()));

template <class Handler, class Message, class State, class Context>
auto invoke_handler(Handler& handler, const Message& message, State& state, Context& context) -> decltype(auto) {
    if constexpr (std::is_invocable_v<Handler&, State&, const Message&, Context&>) return handler(state, message, context);
    else return handler(state, message);
}

// Whether the unit's handler takes a typed message, and what it answers
// (SFINAE-friendly, unlike invoke_handler's deduced return type).
template <class Handler, class Message, class State, class Context>
struct handles {
    static constexpr bool with_context = std::is_invocable_v<Handler&, State&, const Message&, Context&>;
    static constexpr bool value = with_context || std::is_invocable_v<Handler&, State&, const Message&>;
};

template <class Handler, class Message, class State, class Context, bool WithContext>
struct handler_answer {
    using type = std::invoke_result_t<Handler&, State&, const Message&, Context&>;
};
template <class Handler, class Message, class State, class Context>
struct handler_answer<Handler, Message, State, Context, false> {
    using type = std::invoke_result_t<Handler&, State&, const Message&>;
};

// The checks behind unit::call and unit::cast, so a message the unit cannot
// serve fails with one sentence rather than deep inside the machinery.
template <class Message, class State, class Handler, class Context>
struct message_check {
    static constexpr bool callable = is_state_callable<Message, State, Context>();
    static constexpr bool handled = handles<Handler, Message, State, Context>::value;
    static constexpr bool known = callable || handled;

    template <class M, bool = is_state_callable<M, State, Context>(), bool = handles<Handler, M, State, Context>::value>
    struct answer_of { using type = void; };
    template <class M, bool Handled>
    struct answer_of<M, true, Handled> { using type = state_call_result<M, State, Context>; };
    template <class M>
    struct answer_of<M, false, true> {
        using type = typename handler_answer<Handler, M, State, Context,
                                             handles<Handler, M, State, Context>::with_context>::type;
    };

    static constexpr bool by_value = !std::is_reference_v<typename answer_of<Message>::type>;
    static constexpr bool ok = known && by_value;
};

template <class State, class Handler>
class unit_core;

} // namespace detail

// What a worker's code sees: the live state, commit, and the suspension
// points (where queued messages are served and stop requests take effect).
template <class State>
class unit_context {
public:
    State& state() noexcept { return *state_; }
    const std::string& name() const noexcept { return host_->context_name(); }
    // Commits the state now; returns its generation.
    std::uint64_t commit() { return host_->context_commit(); }
    // Serves queued messages, lets other fibers run.
    void yield() { host_->context_yield(); }
    // Serves queued messages, then sleeps on the runtime's clock (ends early
    // when a stop is requested).
    void sleep_for(duration span) { host_->context_sleep(span); }
    bool stop_requested() const noexcept { return host_->context_stop_requested(); }
    // Crashes the worker on purpose: it restarts from the last commit.
    [[noreturn]] void crash(const std::string& reason) { throw detail::crash_request(reason); }
    // The unit's side table `name` (keepsake/table.hpp): committed with the
    // state, in one step, by the unit's commits; after a crash it is as it
    // was at the last commit, as the state is.
    template <class Key, class Value, class Hash = std::hash<Key>>
    side_table<Key, Value, Hash>& table(const std::string& name) {
        return host_->context_keeper().template table<Key, Value, Hash>(name);
    }
    // Ends the worker with reason shutdown, as OTP's exit(shutdown): the
    // current message is served, committed and answered, then the worker
    // ends (a loop worker sees stop_requested()). A normal exit: a transient
    // unit is not restarted, a permanent one is.
    void stop_self() { host_->context_stop_self(); }

    // The worker side of a unit (implemented by the unit).
    class host {
    public:
        virtual const std::string& context_name() const noexcept = 0;
        virtual std::uint64_t context_commit() = 0;
        virtual void context_yield() = 0;
        virtual void context_sleep(duration span) = 0;
        virtual bool context_stop_requested() const noexcept = 0;
        virtual keeper<State>& context_keeper() = 0;
        virtual void context_stop_self() noexcept = 0;

    protected:
        ~host() = default;
    };

    unit_context(host& owner, State& state) : host_(&owner), state_(&state) {}

private:
    host* host_;
    State* state_;
};

} // namespace keepsake
