// keepsake/detail/parking.hpp: how a fiber or a plain thread waits for
// another thread without a lock.
//
// A parker is one waiting place (a reply's caller, a mailbox's consumer, a
// waiter on a signal). unpark() from any thread either leaves a permit or
// wakes whoever is parked:
// - a plain OS thread (no keepsake scheduler on it) sleeps on the parker's
//   own word with a futex;
// - a fiber on a keepsake thread is suspended, and only its own thread ever
//   resumes it. A waker on another thread posts the parker to that thread's
//   wake_inbox (a lock-free list) and wakes the thread's futex; the thread's
//   dispatcher then makes the fiber ready. Boost.Fiber's own cross-thread
//   wake-up (a remote ready queue behind its spinlock) is never used.
// Timed fiber parks are timers of the same inbox, so a timeout and a wake-up
// are decided on the fiber's own thread, by one compare-and-swap.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include <boost/fiber/context.hpp>
#include <boost/fiber/scheduler.hpp>
#include <boost/intrusive/set.hpp>

#include "keepsake/clock.hpp"
#include "keepsake/detail/futex.hpp"

namespace keepsake::detail {

class wake_inbox;

// The inbox of the calling thread's keepsake scheduler; null on a thread
// that runs none. A fiber that moves between threads (work sharing) must
// read the thread it runs on now, not a thread-local address computed
// before it was suspended: so this is never inlined, and the empty asm
// with a memory clobber keeps the compiler from deciding that two calls
// give the same address and reusing the first.
[[gnu::noinline]] inline wake_inbox*& current_inbox_slot() noexcept {
    static thread_local wake_inbox* current = nullptr;
    __asm__ __volatile__("" ::: "memory");
    return current;
}
inline wake_inbox* current_inbox() noexcept { return current_inbox_slot(); }

class parker {
public:
    parker() = default;
    parker(const parker&) = delete;
    parker& operator=(const parker&) = delete;

    // The waiting side (one waiter at a time): returns true at unpark() (or
    // at once for a permit left earlier, or spuriously), false once `until`
    // has passed.
    bool park_until(wait_point until);

    // Any thread. Leaves a permit if nobody is parked.
    void unpark() noexcept {
        int seen = state_.load(std::memory_order_relaxed);
        // Always a read-modify-write, even when nothing changes: the waiter
        // consumes the permit with one too, so it sees what was published
        // before this call.
        while (!state_.compare_exchange_weak(seen, after_unpark(seen), std::memory_order_acq_rel,
                                             std::memory_order_relaxed)) {
        }
        if (seen == parked_thread) futex_wake(state_, 1);
        else if (seen == parked_fiber) resume_fiber();
    }

    // Drops a permit nobody took, before the parker serves a new waiter.
    void reset() noexcept { state_.store(empty, std::memory_order_relaxed); }

private:
    friend class wake_inbox;
    enum : int { empty, notified, parked_thread, parked_fiber, waking };

    // Every unit's mailbox and every reply cell holds a parker: its members
    // are laid out to leave no padding, and the timer hook keeps its colour
    // in a pointer's low bit (64 bytes, not 80).
    using timer_hook = boost::intrusive::set_member_hook<boost::intrusive::optimize_size<true>>;

    std::atomic<int> state_{empty};
    bool timed_out_ = false;
    // While parked_fiber or waking: who to resume, on which thread.
    boost::fibers::context* fiber_ = nullptr;
    wake_inbox* home_ = nullptr;
    parker* next_posted_ = nullptr;  // in home_'s posted list, while waking
    // A timed fiber park: its deadline, among home_'s timers.
    wait_point deadline_{};
    timer_hook timer_hook_;

    static int after_unpark(int seen) noexcept {
        return seen == parked_fiber || seen == waking ? waking : notified;
    }

    bool take_permit() noexcept {
        int expected = notified;
        return state_.compare_exchange_strong(expected, empty, std::memory_order_acquire, std::memory_order_relaxed);
    }

    bool park_thread(wait_point until) noexcept;
    bool park_fiber(wake_inbox& home, wait_point until);
    void resume_fiber() noexcept;
};

// Per keepsake thread: fibers of this thread that other threads woke, the
// thread's timed parks, and its futex sleep when it has nothing to run.
// Inboxes are never freed (a pool reuses them): a waker may still touch one
// a moment after its thread ended, which then costs at most a spurious
// wake-up of the next thread using it.
class wake_inbox {
public:
    // The calling thread's inbox, made on its first keepsake scheduler and
    // kept (counted) while any is installed on the thread.
    static wake_inbox& join_this_thread() {
        wake_inbox*& current = current_inbox_slot();
        if (current == nullptr) current = pool().take();
        ++current->schedulers_;
        return *current;
    }

    // A scheduler of this thread is gone; the last one gives the inbox back.
    static void leave_this_thread(wake_inbox& inbox) noexcept {
        if (--inbox.schedulers_ != 0) return;
        wake_inbox*& current = current_inbox_slot();
        if (current == &inbox) current = nullptr;
        pool().give_back(inbox);
    }

    // Any thread: `woken` (a fiber parked on this thread) is to be resumed.
    void post(parker& woken) noexcept {
        parker* first = posted_.load(std::memory_order_relaxed);
        do {
            woken.next_posted_ = first;
        } while (!posted_.compare_exchange_weak(first, &woken, std::memory_order_release, std::memory_order_relaxed));
        sleeper_.unpark();
    }

    // This thread, between fibers (its dispatcher): resumes the fibers other
    // threads woke, in the order they were woken, and fires due timers.
    void deliver() noexcept {
        if (posted_.load(std::memory_order_relaxed) != nullptr) deliver_posted();
        if (!timers_.empty()) fire_timers();
    }

    // This thread: resumes a fiber whose wake-up it owns (the parker is waking).
    void resume(parker& woken) noexcept {
        if (woken.timer_hook_.is_linked()) timers_.erase(timers_.iterator_to(woken));
        boost::fibers::context* fiber = woken.fiber_;
        woken.timed_out_ = false;
        woken.state_.store(parker::empty, std::memory_order_release);
        fiber->get_scheduler()->schedule(fiber);  // this thread's scheduler
    }

    // This thread's dispatcher, with nothing to run: sleeps until a post, a
    // notify(), the next timer or `until`.
    void sleep_until(wait_point until) noexcept {
        if (!timers_.empty() && timers_.begin()->deadline_ < until) until = timers_.begin()->deadline_;
        if (posted_.load(std::memory_order_acquire) != nullptr) return;
        sleeper_.park_until(until);
    }

    void notify() noexcept { sleeper_.unpark(); }

    void add_timer(parker& timed) { timers_.insert(timed); }
    void remove_timer(parker& timed) noexcept { timers_.erase(timers_.iterator_to(timed)); }

private:
    struct by_deadline {
        bool operator()(const parker& a, const parker& b) const noexcept { return a.deadline_ < b.deadline_; }
    };
    using timer_set = boost::intrusive::multiset<
        parker, boost::intrusive::member_hook<parker, parker::timer_hook, &parker::timer_hook_>,
        boost::intrusive::compare<by_deadline>>;

    class inbox_pool {
    public:
        wake_inbox* take() {
            std::lock_guard<std::mutex> guard(mutex_);
            if (free_.empty()) {
                all_.push_back(std::make_unique<wake_inbox>());
                return all_.back().get();
            }
            wake_inbox* reused = free_.back();
            free_.pop_back();
            return reused;
        }
        void give_back(wake_inbox& inbox) noexcept {
            std::lock_guard<std::mutex> guard(mutex_);
            try {
                free_.push_back(&inbox);
            } catch (...) {
                // No memory to list it: it stays unused, which is safe.
            }
        }

    private:
        std::mutex mutex_;
        std::vector<std::unique_ptr<wake_inbox>> all_;
        std::vector<wake_inbox*> free_;
    };

    // Never destroyed: a late waker, or a runtime that outlives static
    // destruction, may still reach it.
    static inbox_pool& pool() {
        static inbox_pool* const made = new inbox_pool;
        return *made;
    }

    std::atomic<parker*> posted_{nullptr};  // newest first
    thread_parker sleeper_;
    timer_set timers_;                      // this thread's only
    int schedulers_ = 0;                    // this thread's only

    void deliver_posted() noexcept {
        parker* newest = posted_.exchange(nullptr, std::memory_order_acquire);
        parker* oldest = nullptr;
        while (newest != nullptr) {  // reverse: first woken, first resumed
            parker* next = newest->next_posted_;
            newest->next_posted_ = oldest;
            oldest = newest;
            newest = next;
        }
        while (oldest != nullptr) {
            parker* next = oldest->next_posted_;
            resume(*oldest);
            oldest = next;
        }
    }

    // A due timer resumes its fiber unless a waker got there first (then
    // the wake-up, posted or on its way, resumes it).
    void fire_timers() noexcept {
        const wait_point now = wait_clock::now();
        while (!timers_.empty() && timers_.begin()->deadline_ <= now) {
            parker& due = *timers_.begin();
            timers_.erase(timers_.begin());
            boost::fibers::context* fiber = due.fiber_;
            int expected = parker::parked_fiber;
            if (!due.state_.compare_exchange_strong(expected, parker::empty, std::memory_order_acq_rel,
                                                    std::memory_order_relaxed))
                continue;
            due.timed_out_ = true;
            fiber->get_scheduler()->schedule(fiber);
        }
    }
};

inline bool parker::park_until(wait_point until) {
    if (take_permit()) return true;
    if (wake_inbox* home = current_inbox()) return park_fiber(*home, until);
    return park_thread(until);
}

inline bool parker::park_thread(wait_point until) noexcept {
    int expected = empty;
    if (!state_.compare_exchange_strong(expected, parked_thread, std::memory_order_acq_rel, std::memory_order_acquire)) {
        state_.exchange(empty, std::memory_order_acquire);  // a permit came meanwhile
        return true;
    }
    for (;;) {
        const bool in_time = futex_wait(state_, parked_thread, until);
        if (state_.load(std::memory_order_relaxed) == notified) {
            state_.exchange(empty, std::memory_order_acquire);
            return true;
        }
        if (!in_time) {
            expected = parked_thread;
            if (state_.compare_exchange_strong(expected, empty, std::memory_order_acquire)) return false;
            state_.exchange(empty, std::memory_order_acquire);  // woken just now
            return true;
        }
    }
}

inline bool parker::park_fiber(wake_inbox& home, wait_point until) {
    fiber_ = boost::fibers::context::active();
    home_ = &home;
    timed_out_ = false;
    deadline_ = until;
    // Nothing else runs on this thread until the suspension below, so the
    // timer cannot fire before the fiber is parked.
    if (until != no_deadline) home.add_timer(*this);
    int expected = empty;
    if (!state_.compare_exchange_strong(expected, parked_fiber, std::memory_order_acq_rel, std::memory_order_acquire)) {
        if (until != no_deadline) home.remove_timer(*this);
        state_.exchange(empty, std::memory_order_acquire);  // a permit came meanwhile
        return true;
    }
    fiber_->suspend();
    return !timed_out_;
}

// The waker owns this wake-up (it moved the parker to waking); fiber_ and
// home_ stay as they are until the fiber runs again.
inline void parker::resume_fiber() noexcept {
    wake_inbox* home = home_;
    if (home == current_inbox()) home->resume(*this);
    else home->post(*this);
}

} // namespace keepsake::detail
