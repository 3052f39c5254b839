// keepsake/clock.hpp: the time source of a runtime: the real monotonic clock,
// or a manual clock that tests advance without sleeping.
//
// Restart intensity, commit intervals, loop sleeps and shutdown timeouts all
// read the runtime's clock, so a test driven by a manual clock is exact and
// never waits. Call timeouts are the exception: a blocked caller is waiting
// on real time, so they always use the real clock.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <vector>

namespace keepsake {

// Something that waits on a manual clock and re-checks its deadline when the
// clock moves.
class clock_waiter {
public:
    virtual void clock_moved() = 0;

protected:
    ~clock_waiter() = default;
};

using duration = std::chrono::nanoseconds;

class clock {
public:
    virtual ~clock() = default;
    // Time since the clock's epoch; never goes back.
    virtual duration now() const noexcept = 0;
    virtual bool is_manual() const noexcept { return false; }
};

class steady_clock final : public clock {
public:
    duration now() const noexcept override {
        return std::chrono::duration_cast<duration>(std::chrono::steady_clock::now().time_since_epoch());
    }
};

// Time moves only when advance() is called. Fibers waiting on this clock
// (sleep_for, shutdown timeouts) are woken by advance().
class manual_clock final : public clock {
public:
    explicit manual_clock(duration start = duration::zero()) : now_(start.count()) {}

    duration now() const noexcept override { return duration(now_.load(std::memory_order_acquire)); }
    bool is_manual() const noexcept override { return true; }

    void advance(duration step) {
        if (step < duration::zero()) step = duration::zero();
        now_.fetch_add(step.count(), std::memory_order_acq_rel);
        wake_waiters();
    }

    // Registered waiters are told (on the thread calling advance) each time
    // the clock moves. The list is locked while they are told, so a waiter
    // is never told after remove_waiter() returned.
    void add_waiter(clock_waiter* waiter) const {
        std::lock_guard<std::mutex> lock(mutex_);
        waiters_.push_back(waiter);
    }
    // Removes one registration (a waiter may be registered more than once).
    void remove_waiter(clock_waiter* waiter) const {
        std::lock_guard<std::mutex> lock(mutex_);
        auto found = std::find(waiters_.begin(), waiters_.end(), waiter);
        if (found != waiters_.end()) waiters_.erase(found);
    }

private:
    std::atomic<std::int64_t> now_;
    mutable std::mutex mutex_;
    mutable std::vector<clock_waiter*> waiters_;

    void wake_waiters() {
        std::lock_guard<std::mutex> lock(mutex_);
        for (clock_waiter* waiter : waiters_) waiter->clock_moved();
    }
};

} // namespace keepsake
