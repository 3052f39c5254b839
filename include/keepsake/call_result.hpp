// keepsake/call_result.hpp: worker_crashed, the error a caller gets when the
// worker crashed serving its call, and call_result, what unit::try_call
// returns instead of throwing: the call's value, or why there is none.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

#include "keepsake/error.hpp"

namespace keepsake {

// The error a caller gets when the worker crashed while serving its call.
// `restarted`: the unit restarted its worker in place (false: it gave up,
// or it is stopping).
class worker_crashed : public error {
public:
    worker_crashed(const std::string& unit, const std::string& reason, bool restarted = true)
        : error(errc::worker_crashed, describe(unit, reason, restarted)), reason_(reason), restarted_(restarted) {}
    const std::string& reason() const noexcept { return reason_; }
    bool restarted() const noexcept { return restarted_; }

    // The message: what() of the error for such a crash.
    static std::string describe(std::string_view unit, std::string_view reason, bool restarted) {
        constexpr std::string_view head = "unit '";
        constexpr std::string_view middle = "' crashed while serving this call: ";
        constexpr std::string_view retry = "; the unit restarts from its last commit, so the call may be retried";
        constexpr std::string_view last =
            "; this was its last crash: the unit gave up (more restarts than its intensity allows) or is "
            "stopping, so its supervisor decides what follows (a unit of start_unit stays stopped)";
        const std::string_view tail = restarted ? retry : last;
        std::string text;  // one allocation
        text.reserve(head.size() + unit.size() + middle.size() + reason.size() + tail.size());
        text.append(head).append(unit).append(middle).append(reason).append(tail);
        return text;
    }

private:
    std::string reason_;
    bool restarted_;
};

namespace detail {

// A value or nothing, so call<void> and call<R> share one path.
template <class R>
using reply_value = std::conditional_t<std::is_void_v<R>, std::monostate, R>;

struct call_results;

} // namespace detail

// What unit::try_call returns: the call's value (ok()), or the error call()
// would have thrown (a crash while serving it, a stopped unit, a timeout),
// reported without an exception: a crash then costs the handler's own throw
// and nothing more.
template <class R>
class call_result {
public:
    using value_type = R;

    bool ok() const noexcept { return value_.has_value(); }
    explicit operator bool() const noexcept { return ok(); }

    // Why there is no value (when !ok()): errc::worker_crashed,
    // errc::not_running or errc::timeout.
    errc code() const noexcept { return code_; }
    // The worker crashed serving the call (worker_crashed).
    bool crashed() const noexcept { return !ok() && code_ == errc::worker_crashed; }
    // A crash's reason (worker_crashed::reason(): the what() of the
    // exception that escaped), or the other error's message.
    const std::string& reason() const noexcept { return reason_; }
    // After a crash: the unit restarted its worker from its last commit
    // (false: it gave up, or it is stopping).
    bool restarted() const noexcept { return restarted_; }
    // The error's full message, as the exception call() throws has it.
    std::string message() const { return crashed() ? worker_crashed::describe(unit_, reason_, restarted_) : reason_; }

    // The value; without one, throws what call() would have thrown
    // (worker_crashed after a crash, else keepsake::error with code()).
    decltype(auto) value() & {
        if (!ok()) throw_error();
        if constexpr (!std::is_void_v<R>) return (*value_);
    }
    decltype(auto) value() const& {
        if (!ok()) throw_error();
        if constexpr (!std::is_void_v<R>) return (*value_);
    }
    decltype(auto) value() && {
        if (!ok()) throw_error();
        if constexpr (!std::is_void_v<R>) return std::move(*value_);
    }

    // Throws the error (when !ok()) as call() would have.
    [[noreturn]] void throw_error() const {
        if (code_ == errc::worker_crashed) throw worker_crashed(unit_, reason_, restarted_);
        throw error(code_, reason_);
    }

private:
    friend struct detail::call_results;

    std::optional<detail::reply_value<R>> value_;
    errc code_ = errc::worker_crashed;
    bool restarted_ = false;
    std::string reason_;
    std::string unit_;  // a crash's unit, for message()
};

namespace detail {

// Makes call_results (for the unit's and actor's calling paths).
struct call_results {
    // Where a queued call's answer is written.
    template <class R>
    static std::optional<reply_value<R>>* slot(call_result<R>& out) noexcept {
        return &out.value_;
    }

    template <class R, class Value>
    static call_result<R> answered(Value&& value) {
        call_result<R> out;
        out.value_.emplace(std::forward<Value>(value));
        return out;
    }

    template <class R>
    static call_result<R> failed(const error& why) {
        call_result<R> out;
        out.code_ = why.code();
        out.reason_ = why.what();
        return out;
    }

    template <class R>
    static call_result<R> crashed(const std::string& unit, std::string reason, bool restarted) {
        call_result<R> out;
        out.code_ = errc::worker_crashed;
        out.restarted_ = restarted;
        out.reason_ = std::move(reason);
        out.unit_ = unit;
        return out;
    }
};

} // namespace detail
} // namespace keepsake
