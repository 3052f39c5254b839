// keepsake/detail/spinlock.hpp: a lock for a few instructions' worth of work
// (a mailbox push or pop). Waiting spins briefly, then yields the thread.
#pragma once

#include <atomic>
#include <thread>

namespace keepsake {
namespace detail {

class spinlock {
public:
    void lock() noexcept {
        for (unsigned spins = 0; locked_.exchange(true, std::memory_order_acquire); ++spins) {
            while (locked_.load(std::memory_order_relaxed)) {
                if (++spins > 64) std::this_thread::yield();
            }
        }
    }
    bool try_lock() noexcept { return !locked_.exchange(true, std::memory_order_acquire); }
    void unlock() noexcept { locked_.store(false, std::memory_order_release); }

private:
    std::atomic<bool> locked_{false};
};

} // namespace detail
} // namespace keepsake
