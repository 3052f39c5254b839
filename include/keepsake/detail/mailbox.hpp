// keepsake/detail/mailbox.hpp: a unit's mailbox. It belongs to the unit, not
// to the worker fiber, so the messages queued behind one that crashed are
// still there for the restarted worker.
//
// Messages are type-erased callables stored in place (no allocation unless
// a callable is larger than the inline buffer); the ring grows by doubling
// and never shrinks, so a warmed-up mailbox allocates nothing. Calls carry a
// reply cell from a per-unit pool; the cell outlives a caller that timed out,
// so a late reply never writes into a dead stack frame.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#include <boost/fiber/condition_variable.hpp>
#include <boost/fiber/operations.hpp>

#include "keepsake/clock.hpp"
#include "keepsake/detail/fiber_mutex.hpp"
#include "keepsake/detail/signal.hpp"
#include "keepsake/detail/spinlock.hpp"

namespace keepsake {
namespace detail {

// Where the answer to one call goes. The worker claims the cell (waiting ->
// claimed), writes the result into the caller's frame, then publishes it
// (answered / failed); a caller that timed out marks it abandoned first, and
// then the worker writes nothing. The fiber mutex and condition variable are
// touched only when the caller actually went to sleep.
struct reply_cell {
    enum status : int { waiting, claimed, answered, failed, abandoned };

    std::atomic<int> state{waiting};
    std::atomic<bool> sleeper{false};  // the caller is blocked on answered_cv
    fiber_mutex mutex;
    boost::fibers::condition_variable_any answered_cv;
    void* result = nullptr;            // the caller's std::optional<R>, while it waits
    std::exception_ptr failure;
    std::atomic<int> holders{0};       // the caller and the message
    reply_cell* next_free = nullptr;

    bool settled() const noexcept { return state.load(std::memory_order_acquire) >= answered; }
};

class reply_pool {
public:
    reply_pool() = default;
    reply_pool(const reply_pool&) = delete;
    reply_pool& operator=(const reply_pool&) = delete;

    // A cell held by two: the caller and the message that will answer it.
    reply_cell* acquire(void* result) {
        reply_cell* cell = nullptr;
        {
            std::lock_guard<spinlock> guard(lock_);
            if (free_ != nullptr) {
                cell = free_;
                free_ = cell->next_free;
            }
        }
        if (cell == nullptr) cell = make_cell();
        cell->state.store(reply_cell::waiting, std::memory_order_relaxed);
        cell->sleeper.store(false, std::memory_order_relaxed);
        cell->result = result;
        cell->failure = nullptr;
        cell->holders.store(2, std::memory_order_relaxed);
        return cell;
    }

    void release(reply_cell* cell) noexcept {
        if (cell->holders.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
        std::lock_guard<spinlock> guard(lock_);
        cell->next_free = free_;
        free_ = cell;
    }

private:
    spinlock lock_;
    reply_cell* free_ = nullptr;
    std::vector<std::unique_ptr<reply_cell>> cells_;

    reply_cell* make_cell() {
        auto made = std::make_unique<reply_cell>();
        std::lock_guard<spinlock> guard(lock_);
        cells_.push_back(std::move(made));
        return cells_.back().get();
    }
};

// Answers a waiting caller (or does nothing if it gave up waiting).
template <class Fill>
void answer(reply_cell& cell, reply_cell::status outcome, Fill fill) {
    int expected = reply_cell::waiting;
    if (!cell.state.compare_exchange_strong(expected, reply_cell::claimed, std::memory_order_acquire)) return;
    fill(cell);
    cell.state.store(outcome, std::memory_order_release);
    // Dekker with the caller: publish, then look for a sleeper; the caller
    // announces itself, then looks at the state (both under the mutex).
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (cell.sleeper.load(std::memory_order_relaxed)) {
        std::lock_guard<fiber_mutex> guard(cell.mutex);
        cell.answered_cv.notify_all();
    }
}

inline void answer_failure(reply_cell& cell, std::exception_ptr failure) {
    answer(cell, reply_cell::failed, [&](reply_cell& target) { target.failure = std::move(failure); });
}

// Waits for the answer: a few yields first (a worker on this thread usually
// answers within one), then sleeps until `deadline` (real time). Returns
// false if it gave up; the cell is then abandoned.
inline bool await_answer(reply_cell& cell, std::chrono::steady_clock::time_point deadline) {
    for (int spins = 0; spins < 4; ++spins) {
        if (cell.settled()) return true;
        boost::this_fiber::yield();
    }
    std::unique_lock<fiber_mutex> lock(cell.mutex);
    cell.sleeper.store(true, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (cell.answered_cv.wait_until(lock, deadline, [&] { return cell.settled(); })) return true;
    int expected = reply_cell::waiting;
    if (cell.state.compare_exchange_strong(expected, reply_cell::abandoned, std::memory_order_acq_rel)) return false;
    // The worker claimed it just now: the answer is moments away.
    cell.answered_cv.wait(lock, [&] { return cell.settled(); });
    return true;
}

// One queued message: a callable run against the unit (`target`).
class message {
public:
    static constexpr std::size_t inline_size = 64;

    message() = default;
    message(const message&) = delete;
    message& operator=(const message&) = delete;
    ~message() { reset(); }

    template <class Callable>
    void emplace(Callable&& callable, reply_cell* reply) {
        using stored = std::decay_t<Callable>;
        if constexpr (fits<stored>()) {
            ::new (static_cast<void*>(storage_)) stored(std::forward<Callable>(callable));
            ops_ = &inline_ops<stored>;
        } else {
            auto* heap = new stored(std::forward<Callable>(callable));
            std::memcpy(storage_, &heap, sizeof heap);
            ops_ = &heap_ops<stored>;
        }
        reply_ = reply;
    }

    // Moves `from` into this (empty) message, leaving `from` empty.
    void take(message& from) noexcept {
        ops_ = from.ops_;
        reply_ = from.reply_;
        if (ops_ != nullptr) ops_->relocate(from.storage_, storage_);
        from.ops_ = nullptr;
        from.reply_ = nullptr;
    }

    bool empty() const noexcept { return ops_ == nullptr; }
    reply_cell* reply() const noexcept { return reply_; }

    void run(void* target) { ops_->run(storage_, target, reply_); }

    void reset() noexcept {
        if (ops_ != nullptr) ops_->drop(storage_);
        ops_ = nullptr;
        reply_ = nullptr;
    }

private:
    struct operations {
        void (*run)(void* callable, void* target, reply_cell* reply);
        void (*relocate)(void* from, void* to) noexcept;
        void (*drop)(void* callable) noexcept;
    };

    template <class Stored>
    static constexpr bool fits() noexcept {
        return sizeof(Stored) <= inline_size && alignof(Stored) <= alignof(std::max_align_t) &&
               std::is_nothrow_move_constructible_v<Stored>;
    }

    template <class Stored>
    static Stored* heap_pointer(void* storage) noexcept {
        Stored* heap = nullptr;
        std::memcpy(&heap, storage, sizeof heap);
        return heap;
    }

    template <class Stored>
    static inline const operations inline_ops{
        [](void* callable, void* target, reply_cell* reply) { (*static_cast<Stored*>(callable))(target, reply); },
        [](void* from, void* to) noexcept {
            ::new (to) Stored(std::move(*static_cast<Stored*>(from)));
            static_cast<Stored*>(from)->~Stored();
        },
        [](void* callable) noexcept { static_cast<Stored*>(callable)->~Stored(); },
    };

    template <class Stored>
    static inline const operations heap_ops{
        [](void* callable, void* target, reply_cell* reply) { (*heap_pointer<Stored>(callable))(target, reply); },
        [](void* from, void* to) noexcept { std::memcpy(to, from, sizeof(Stored*)); },
        [](void* callable) noexcept { delete heap_pointer<Stored>(callable); },
    };

    const operations* ops_ = nullptr;
    reply_cell* reply_ = nullptr;
    alignas(std::max_align_t) unsigned char storage_[inline_size];
};

// Many producers (any thread), one consumer (the worker fiber).
//
// The consumer may also *lend* its turn: while it is parked idle on an empty
// mailbox, a caller on the worker's own thread can take the turn, run its
// message on its own fiber (no queueing, no context switch) and give the
// turn back. While the turn is lent the consumer pops nothing, so messages
// are still served one at a time and in order.
class mailbox {
public:
    mailbox() : ring_(new message[initial_capacity]), capacity_(initial_capacity) {}
    mailbox(const mailbox&) = delete;
    mailbox& operator=(const mailbox&) = delete;

    template <class Callable>
    void push(Callable&& callable, reply_cell* reply) {
        bool wake_consumer = false;
        {
            std::lock_guard<spinlock> guard(lock_);
            if (count_ == capacity_) grow();
            ring_[(head_ + count_) & (capacity_ - 1)].emplace(std::forward<Callable>(callable), reply);
            ++count_;
            size_.store(count_, std::memory_order_relaxed);
            // Under the lock the consumer announces its sleep, so no fence is
            // needed; while the turn is lent, give_back() wakes it instead.
            wake_consumer = consumer_waiting_ && !lent_;
            if (wake_consumer) consumer_waiting_ = false;
        }
        if (wake_consumer) wake();
    }

    // Moves the oldest message into `out`; false if there is none, or if
    // the consumer's turn is lent.
    bool pop(message& out) noexcept {
        std::lock_guard<spinlock> guard(lock_);
        if (count_ == 0 || lent_) return false;
        out.take(ring_[head_]);
        head_ = (head_ + 1) & (capacity_ - 1);
        --count_;
        size_.store(count_, std::memory_order_relaxed);
        return true;
    }

    std::size_t size() const noexcept { return size_.load(std::memory_order_relaxed); }

    // The consumer waits for a message or for `wake_anyway()` to hold, or
    // until `deadline` on `time` (forever: no deadline). Returns false if
    // the deadline passed first. `lendable`: callers may borrow the turn
    // while it sleeps.
    template <class Predicate>
    bool wait_until(const clock& time, duration deadline, Predicate wake_anyway, bool lendable = false) {
        auto ready = [&] { return has_work() || wake_anyway(); };
        if (lendable) set_consumer(false, true);
        // A producer on this thread usually runs next: one yield saves the
        // sleep and the wake-up (an idle consumer then blocks, so a pumped
        // runtime sees nothing ready).
        if (!ready()) boost::this_fiber::yield();
        bool woken = ready();
        if (!woken) {
            set_consumer(true, lendable);
            woken = waiting_.wait_until(time, deadline, ready);
        }
        set_consumer(false, false);
        return woken;
    }

    // Wakes the consumer (after changing what its predicate reads).
    void wake() { waiting_.notify_all(); }

    // Takes the consumer's turn if it sleeps idle on an empty mailbox and
    // nobody holds the turn; the caller must be on the consumer's thread.
    bool try_borrow() noexcept {
        std::lock_guard<spinlock> guard(lock_);
        if (!consumer_idle_ || lent_ || count_ != 0) return false;
        lent_ = true;
        lent_flag_.store(true, std::memory_order_relaxed);
        return true;
    }

    // Gives the turn back, waking the consumer if messages came meanwhile
    // or `wake_anyway` (it has something else to see).
    void give_back(bool wake_anyway) {
        bool wake_consumer = false;
        {
            std::lock_guard<spinlock> guard(lock_);
            lent_ = false;
            lent_flag_.store(false, std::memory_order_relaxed);
            wake_consumer = consumer_waiting_ && (count_ != 0 || wake_anyway);
            if (wake_consumer) consumer_waiting_ = false;
        }
        if (wake_consumer) wake();
    }

    bool lent() const noexcept { return lent_flag_.load(std::memory_order_relaxed); }

private:
    static constexpr std::size_t initial_capacity = 64;

    spinlock lock_;
    std::unique_ptr<message[]> ring_;
    std::size_t capacity_;
    std::size_t head_ = 0;
    std::size_t count_ = 0;
    bool consumer_waiting_ = false;  // under lock_: it sleeps on waiting_
    bool consumer_idle_ = false;     // under lock_: ... and may lend its turn
    bool lent_ = false;              // under lock_: a caller holds the turn
    std::atomic<std::size_t> size_{0};
    std::atomic<bool> lent_flag_{false};  // lent_, for predicates
    signal waiting_;

    bool has_work() const noexcept { return size() != 0 && !lent(); }

    void set_consumer(bool waiting, bool idle) noexcept {
        std::lock_guard<spinlock> guard(lock_);
        consumer_waiting_ = waiting;
        consumer_idle_ = idle;
    }

    void grow() {
        std::unique_ptr<message[]> larger(new message[capacity_ * 2]);
        for (std::size_t index = 0; index < count_; ++index)
            larger[index].take(ring_[(head_ + index) & (capacity_ - 1)]);
        ring_ = std::move(larger);
        capacity_ *= 2;
        head_ = 0;
    }
};

} // namespace detail
} // namespace keepsake
