// keepsake/detail/fiber_mutex.hpp: Boost.Fiber's mutex, made visible to
// ThreadSanitizer.
//
// Debian's libboost_fiber is not built with TSan, so the hand-off that its
// mutex makes between OS threads is invisible to it, and everything that
// mutex protects looks like a data race. Under TSan this wrapper tells it
// about the hand-off (a release at unlock, an acquire at lock); otherwise it
// is the plain mutex. Wait on it with boost::fibers::condition_variable_any.
#pragma once

#include <boost/fiber/mutex.hpp>

#if defined(__SANITIZE_THREAD__)
#define KEEPSAKE_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KEEPSAKE_TSAN 1
#endif
#endif

#ifdef KEEPSAKE_TSAN
extern "C" void __tsan_acquire(void* address);
extern "C" void __tsan_release(void* address);
#endif

namespace keepsake {
namespace detail {

class fiber_mutex {
public:
    void lock() {
        mutex_.lock();
        acquired();
    }

    bool try_lock() {
        if (!mutex_.try_lock()) return false;
        acquired();
        return true;
    }

    void unlock() {
        releasing();
        mutex_.unlock();
    }

private:
    boost::fibers::mutex mutex_;

#ifdef KEEPSAKE_TSAN
    void acquired() noexcept { __tsan_acquire(this); }
    void releasing() noexcept { __tsan_release(this); }
#else
    void acquired() noexcept {}
    void releasing() noexcept {}
#endif
};

} // namespace detail
} // namespace keepsake
