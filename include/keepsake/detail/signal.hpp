// keepsake/detail/signal.hpp: a condition that fibers and plain threads wait
// on, with deadlines on the runtime's clock (real or manual).
#pragma once

#include <chrono>
#include <mutex>

#include <boost/fiber/condition_variable.hpp>

#include "keepsake/detail/fiber_mutex.hpp"

#include "keepsake/clock.hpp"

namespace keepsake {
namespace detail {

inline constexpr duration forever = duration::max();

class signal final : public clock_waiter {
public:
    using lock_type = std::unique_lock<fiber_mutex>;

    // Change what waiters test while holding this lock, then notify.
    lock_type lock() { return lock_type(mutex_); }

    void notify_all() {
        std::lock_guard<fiber_mutex> guard(mutex_);
        cv_.notify_all();
    }

    // Waits once for a notify, with `lock` (from lock()) held.
    void wait(lock_type& lock) { cv_.wait(lock); }

    template <class Predicate>
    void wait(Predicate ready) {
        lock_type lock(mutex_);
        cv_.wait(lock, ready);
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
            lock_type lock(mutex_);
            const std::chrono::steady_clock::time_point until(
                std::chrono::duration_cast<std::chrono::steady_clock::duration>(deadline));
            return cv_.wait_until(lock, until, ready);
        }
        const auto& manual = static_cast<const manual_clock&>(time);
        manual.add_waiter(this);
        bool result = false;
        {
            lock_type lock(mutex_);
            while (!(result = ready()) && time.now() < deadline) cv_.wait(lock);
        }
        // After the lock is released: clock_moved() takes it under the
        // clock's own lock, so holding both here could deadlock.
        manual.remove_waiter(this);
        return result;
    }

    void clock_moved() override { notify_all(); }

private:
    fiber_mutex mutex_;
    boost::fibers::condition_variable_any cv_;
};

} // namespace detail
} // namespace keepsake
