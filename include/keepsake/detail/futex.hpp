// keepsake/detail/futex.hpp: Linux futexes, for waits between threads that
// never spin on a lock whose holder may be descheduled.
//
// Boost.Fiber 1.74's internal spinlock never backs off (boostorg/fiber issue
// 254): a thread waiting on a descheduled holder spins out its whole time
// slice, and on a busy machine a cross-thread call went from 20 us to
// milliseconds. Here a thread that must wait sleeps in the kernel with
// FUTEX_WAIT until the other side's FUTEX_WAKE: the mutex after a few dozen
// pauses, a parked thread at once. (Watching a flag for 20 us before
// sleeping was tried: a call took 2 us when caller and callee each had a
// core, and 47 us when they shared one, the watcher holding the core its
// waker needed. A busy machine is the case that matters.) Linux only
// (syscall(SYS_futex)), as keepsake is. Every hand-off also goes through
// std::atomic operations, so ThreadSanitizer sees it without annotations.
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <ctime>

namespace keepsake::detail {

using wait_clock = std::chrono::steady_clock;  // CLOCK_MONOTONIC, as futexes count
using wait_point = wait_clock::time_point;
inline constexpr wait_point no_deadline = wait_point::max();

static_assert(sizeof(std::atomic<int>) == sizeof(int) && std::atomic<int>::is_always_lock_free,
              "a futex is a plain int: std::atomic<int> must be one");

inline void pause_briefly() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

inline int* futex_address(std::atomic<int>& word) noexcept { return reinterpret_cast<int*>(&word); }

// Sleeps while `word` holds `expected`, until a futex_wake or `until`.
// Returns false once `until` has passed; returns early spuriously too, so
// callers look at `word` again.
inline bool futex_wait(std::atomic<int>& word, int expected, wait_point until) noexcept {
    if (until == no_deadline) {
        ::syscall(SYS_futex, futex_address(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
        return true;
    }
    // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC time (FUTEX_WAIT a
    // relative one, which a retry after a spurious wake-up would stretch).
    const auto since_epoch = until.time_since_epoch();
    const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
    timespec at{};
    at.tv_sec = static_cast<std::time_t>(seconds.count());
    at.tv_nsec = static_cast<long>(std::chrono::duration_cast<std::chrono::nanoseconds>(since_epoch - seconds).count());
    const long result = ::syscall(SYS_futex, futex_address(word), FUTEX_WAIT_BITSET_PRIVATE, expected, &at, nullptr,
                                  FUTEX_BITSET_MATCH_ANY);
    return !(result == -1 && errno == ETIMEDOUT);
}

inline void futex_wake(std::atomic<int>& word, int count) noexcept {
    ::syscall(SYS_futex, futex_address(word), FUTEX_WAKE_PRIVATE, count, nullptr, nullptr, 0);
}

// A mutex for short critical sections that may be contended from several
// threads: a brief spin, then sleep in the kernel (Drepper's "Futexes are
// tricky", mutex 3). Its holder must not suspend a fiber while holding it:
// the thread would then sleep for the holder, which runs on that thread.
class futex_mutex {
public:
    futex_mutex() = default;
    futex_mutex(const futex_mutex&) = delete;
    futex_mutex& operator=(const futex_mutex&) = delete;

    void lock() noexcept {
        int expected = unlocked;
        if (!state_.compare_exchange_strong(expected, locked, std::memory_order_acquire, std::memory_order_relaxed))
            lock_contended();
    }

    bool try_lock() noexcept {
        int expected = unlocked;
        return state_.compare_exchange_strong(expected, locked, std::memory_order_acquire, std::memory_order_relaxed);
    }

    void unlock() noexcept {
        if (state_.exchange(unlocked, std::memory_order_release) == contended) futex_wake(state_, 1);
    }

private:
    enum : int { unlocked, locked, contended };
    static constexpr int brief_spins = 40;
    std::atomic<int> state_{unlocked};

    void lock_contended() noexcept {
        for (int spin = 0; spin < brief_spins; ++spin) {
            pause_briefly();
            if (state_.load(std::memory_order_relaxed) == unlocked && try_lock()) return;
        }
        while (state_.exchange(contended, std::memory_order_acquire) != unlocked) futex_wait(state_, contended, no_deadline);
    }
};

// One thread's own sleep (Rust's std::thread::park on a futex): unpark()
// before park_until() leaves a permit, so a wake-up is never lost. One
// sleeper; any number of wakers.
class thread_parker {
public:
    // Returns at unpark(), at `until`, or spuriously.
    void park_until(wait_point until) noexcept {
        if (state_.fetch_sub(1, std::memory_order_acquire) == notified) return;  // the permit
        for (;;) {
            const bool in_time = futex_wait(state_, parked, until);
            int expected = notified;
            if (state_.compare_exchange_strong(expected, empty, std::memory_order_acquire)) return;
            if (!in_time) {
                state_.exchange(empty, std::memory_order_acquire);
                return;
            }
        }
    }

    void unpark() noexcept {
        if (state_.exchange(notified, std::memory_order_release) == parked) futex_wake(state_, 1);
    }

    bool has_permit() const noexcept { return state_.load(std::memory_order_acquire) == notified; }

private:
    enum : int { parked = -1, empty = 0, notified = 1 };
    std::atomic<int> state_{empty};
};

} // namespace keepsake::detail
