// keepsake/detail/signal.hpp: a condition that fibers and plain threads wait
// on, with deadlines on the runtime's clock (real or manual).
//
// Used for lifecycles (start, stop, fiber ends, launching fibers): cold
// paths, possibly between threads. Its lock is a futex_mutex held for a few
// instructions (never across a suspension); each waiter sleeps on its own
// parker, so a waiter on another thread never spins (detail/parking.hpp).
#pragma once

#include <chrono>
#include <mutex>

#include "keepsake/clock.hpp"
#include "keepsake/detail/futex.hpp"
#include "keepsake/detail/parking.hpp"

namespace keepsake {
namespace detail {

inline constexpr duration forever = duration::max();

// The real-clock time point of a deadline on `time` (which must be real).
inline wait_point real_time_point(duration deadline) {
    if (deadline == forever) return no_deadline;
    return wait_point(std::chrono::duration_cast<wait_clock::duration>(deadline));
}

// While alive: unparks `who` each time a manual clock moves (nothing for
// the real clock, whose deadlines are timers).
class unpark_on_tick final : public clock_waiter {
public:
    unpark_on_tick(const clock& time, parker& who, bool wanted = true)
        : manual_(wanted && time.is_manual() ? &static_cast<const manual_clock&>(time) : nullptr), who_(who) {
        if (manual_ != nullptr) manual_->add_waiter(this);
    }
    unpark_on_tick(const unpark_on_tick&) = delete;
    unpark_on_tick& operator=(const unpark_on_tick&) = delete;
    ~unpark_on_tick() {
        if (manual_ != nullptr) manual_->remove_waiter(this);
    }

    void clock_moved() override { who_.unpark(); }

private:
    const manual_clock* manual_;
    parker& who_;
};

class signal final : public clock_waiter {
public:
    using lock_type = std::unique_lock<futex_mutex>;

    signal() = default;
    signal(const signal&) = delete;
    signal& operator=(const signal&) = delete;

    // Change what waiters test while holding this lock, then notify.
    lock_type lock() { return lock_type(mutex_); }

    void notify_all() {
        lock_type held(mutex_);
        while (first_ != nullptr) {
            waiter* woken = first_;
            unlink(*woken);
            woken->wake.unpark();  // under the lock: the waiter cannot leave before this is done
        }
    }

    // Waits once for a notify, with `held` (from lock()) held.
    void wait(lock_type& held) { wait_once(held, no_deadline); }

    template <class Predicate>
    void wait(Predicate ready) {
        lock_type held(mutex_);
        while (!ready()) wait_once(held, no_deadline);
    }

    // Waits until ready() or the clock reaches `deadline` (forever: no
    // deadline). Returns ready(): false means the deadline passed first.
    template <class Predicate>
    bool wait_until(const clock& time, duration deadline, Predicate ready) {
        if (deadline == forever) {
            wait(ready);
            return true;
        }
        if (!time.is_manual()) {
            const wait_point until = real_time_point(deadline);
            lock_type held(mutex_);
            while (!ready())
                if (!wait_once(held, until)) return ready();
            return true;
        }
        const auto& manual = static_cast<const manual_clock&>(time);
        manual.add_waiter(this);
        bool result = false;
        {
            lock_type held(mutex_);
            while (!(result = ready()) && time.now() < deadline) wait_once(held, no_deadline);
        }
        // After the lock is released: clock_moved() takes it under the
        // clock's own lock, so holding both here could deadlock.
        manual.remove_waiter(this);
        return result;
    }

    void clock_moved() override { notify_all(); }

private:
    struct waiter {
        parker wake;
        waiter* previous = nullptr;
        waiter* next = nullptr;
        bool listed = false;
    };

    futex_mutex mutex_;
    waiter* first_ = nullptr;  // under mutex_
    waiter* last_ = nullptr;

    // Unlocks, sleeps until notified or `until`, locks again. False once
    // `until` has passed.
    bool wait_once(lock_type& held, wait_point until) {
        waiter me;
        link(me);
        held.unlock();
        const bool in_time = me.wake.park_until(until);
        held.lock();
        if (me.listed) unlink(me);
        return in_time;
    }

    void link(waiter& added) noexcept {
        added.previous = last_;
        added.next = nullptr;
        (last_ != nullptr ? last_->next : first_) = &added;
        last_ = &added;
        added.listed = true;
    }

    void unlink(waiter& gone) noexcept {
        (gone.previous != nullptr ? gone.previous->next : first_) = gone.next;
        (gone.next != nullptr ? gone.next->previous : last_) = gone.previous;
        gone.listed = false;
    }
};

} // namespace detail
} // namespace keepsake
