// keepsake/restart_policy.hpp: the OTP vocabulary of a child: when it is
// restarted, how it is stopped, and how many restarts are too many.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "keepsake/clock.hpp"
#include "keepsake/error.hpp"

namespace keepsake {

enum class restart_type {
    permanent,  // always restarted, even after a normal exit
    transient,  // restarted only after a crash
    temporary,  // never restarted; its spec is dropped when it exits
};

inline const char* to_string(restart_type type) noexcept {
    switch (type) {
    case restart_type::permanent: return "permanent";
    case restart_type::transient: return "transient";
    case restart_type::temporary: return "temporary";
    }
    return "unknown";
}

// How a supervisor stops a child: ask, wait up to a timeout, then force.
struct shutdown_spec {
    enum class mode { timeout, infinity, brutal_kill };
    mode how = mode::timeout;
    duration limit = std::chrono::seconds(5);

    static shutdown_spec after(duration limit) { return {mode::timeout, limit}; }
    static shutdown_spec infinity() { return {mode::infinity, duration::zero()}; }
    static shutdown_spec brutal_kill() { return {mode::brutal_kill, duration::zero()}; }
};

// Thrown by a unit's init hook to decline to start: OTP's init returning
// `ignore`. The start succeeds with nothing running: a supervisor keeps a
// permanent or transient child as not running (restart_child starts it
// again) and drops a temporary one, or any child of a dynamic supervisor;
// start_unit returns a handle to a unit that is not running. Thrown on a
// restart the unit makes by itself after a crash, it ends the unit's
// instance as a normal exit. Not a std::exception, so that a hook catching
// std::exception lets it through.
class ignore_start {
public:
    explicit ignore_start(std::string reason = "its init hook declined to start (ignore_start)")
        : reason_(std::move(reason)) {}
    const std::string& reason() const noexcept { return reason_; }

private:
    std::string reason_;
};

// At most max_restarts restarts within any period.
struct restart_intensity {
    std::uint32_t max_restarts = 3;
    duration period = std::chrono::seconds(5);
};

namespace detail {

inline constexpr std::uint32_t max_restart_limit = 1u << 20;

// `owner()` describes whose limits they are; it is called only for an error
// (a unit checks its spec at every start: no strings built for a valid one).
template <class Owner>
void check_intensity(const restart_intensity& limits, Owner&& owner) {
    if (limits.period <= duration::zero())
        throw error(errc::invalid_argument, owner() + ": restart intensity period must be positive");
    if (limits.max_restarts > max_restart_limit)
        throw error(errc::invalid_argument, owner() + ": max_restarts above " + std::to_string(max_restart_limit) +
                                                " is not supported; use a shorter period");
}

// A timeout below zero has no meaning (OTP accepts a non-negative integer,
// infinity or brutal_kill): refused rather than taken as brutal_kill.
template <class Owner>
void check_shutdown(const shutdown_spec& how, Owner&& owner) {
    if (how.how == shutdown_spec::mode::timeout && how.limit < duration::zero())
        throw error(errc::invalid_argument,
                    owner() + ": shutdown timeout is negative (" +
                        std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(how.limit).count()) +
                        " ms); give shutdown_spec::after(0 or more), brutal_kill() or infinity()");
}

// OTP's restart log: before each automatic restart, record now and drop
// entries older than now - period (an entry exactly period old still
// counts); more than max_restarts entries left means give up. A ring that
// starts small and doubles only when more restarts fall in one window, so a
// warmed-up log never allocates and an idle unit costs 24 bytes (every unit
// and supervisor holds one: a pointer and 32-bit positions, not a vector and
// two size_t; the limits are its owner's spec's, given at each restart, not
// a copy in every log).
class restart_log {
public:
    // Records a restart at `now`; false means `limits` are exceeded. The
    // same limits every time (its owner's).
    bool allow(duration now, const restart_intensity& limits) {
        while (count_ != 0 && now - times_[head_] > limits.period) {
            head_ = (head_ + 1) % capacity_;
            --count_;
        }
        if (count_ >= limits.max_restarts) return false;
        if (count_ == capacity_) grow(limits.max_restarts);
        times_[(head_ + count_) % capacity_] = now;
        ++count_;
        return true;
    }

    void clear() noexcept { head_ = count_ = 0; }

private:
    std::unique_ptr<duration[]> times_;
    std::uint32_t capacity_ = 0;
    std::uint32_t head_ = 0;
    std::uint32_t count_ = 0;

    // Called with count_ == capacity_ < max_restarts (max_restart_limit
    // bounds it), so the new capacity is larger and never past the limit.
    void grow(std::uint32_t max_restarts) {
        const std::uint32_t larger = std::min(std::max(capacity_ * 2, 8u), max_restarts);
        auto moved = std::make_unique<duration[]>(larger);
        for (std::uint32_t index = 0; index < count_; ++index) moved[index] = times_[(head_ + index) % capacity_];
        times_ = std::move(moved);
        capacity_ = larger;
        head_ = 0;
    }
};

} // namespace detail
} // namespace keepsake
