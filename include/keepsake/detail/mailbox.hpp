// keepsake/detail/mailbox.hpp: a unit's mailbox. It belongs to the unit, not
// to the worker fiber, so the messages queued behind one that crashed are
// still there for the restarted worker.
//
// Messages are type-erased callables stored in place (no allocation unless
// a callable is larger than the inline buffer) in a ring that any thread
// pushes to without a lock; when the ring is full a ring twice its size
// follows it, so a warmed-up mailbox allocates nothing. Calls carry a reply
// cell from a per-unit pool; the cell outlives a caller that timed out, so a
// late reply never writes into a dead stack frame. Nothing between threads
// spins on a lock: waits sleep on parkers (detail/parking.hpp).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <boost/fiber/operations.hpp>

#include "keepsake/clock.hpp"
#include "keepsake/error.hpp"
#include "keepsake/detail/futex.hpp"
#include "keepsake/detail/parking.hpp"
#include "keepsake/detail/reply_pool.hpp"
#include "keepsake/detail/signal.hpp"

namespace keepsake {
namespace detail {

// One queued message: a callable run against the unit (`target`).
class message {
public:
    static constexpr std::size_t inline_size = 64;

    message() = default;
    message(const message&) = delete;
    message& operator=(const message&) = delete;
    ~message() { reset(); }

    template <class Callable>
    void emplace(Callable&& callable, reply_cell* reply, bool on_worker = false) {
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
        on_worker_ = on_worker;
    }

    // Whether emplace(Callable) cannot throw, so it may build the message
    // straight in a claimed ring slot (a slot claimed and never published
    // would hold up the whole ring).
    template <class Callable>
    static constexpr bool emplaces_without_throwing() noexcept {
        using stored = std::decay_t<Callable>;
        return fits<stored>() && std::is_nothrow_constructible_v<stored, Callable&&>;
    }

    // Moves `from` into this (empty) message, leaving `from` empty.
    void take(message& from) noexcept {
        ops_ = from.ops_;
        reply_ = from.reply_;
        on_worker_ = from.on_worker_;
        if (ops_ != nullptr) ops_->relocate(from.storage_, storage_);
        from.ops_ = nullptr;
        from.reply_ = nullptr;
    }

    bool empty() const noexcept { return ops_ == nullptr; }
    bool on_worker() const noexcept { return on_worker_; }  // it takes the worker's context
    reply_cell* reply() const noexcept { return reply_; }

    void run(void* target) { ops_->run(storage_, target, reply_); }

    void reset() noexcept {
        if (ops_ != nullptr) ops_->drop(storage_);
        ops_ = nullptr;
        reply_ = nullptr;
        on_worker_ = false;
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

public:
    // A mailbox ring's turn counter for this slot (unused elsewhere); it
    // sits in what would be padding, so a slot stays 96 bytes.
    std::atomic<std::uint64_t> sequence{0};

private:
    const operations* ops_ = nullptr;
    reply_cell* reply_ = nullptr;
    bool on_worker_ = false;
    alignas(std::max_align_t) unsigned char storage_[inline_size];
};

// A ring of message slots for many producers and one consumer (Dmitry
// Vyukov's bounded queue: each slot's sequence says whose turn it is, so a
// push is a compare-and-swap on the tail and an exchange on the slot, and a
// pop is plain loads and stores). Positions count every message the mailbox ever took; a full
// ring is closed at its tail, and the ring after it (twice as large) starts
// at that position.
struct mailbox_ring {
    static constexpr std::uint64_t closed = std::uint64_t{1} << 63;  // in tail: full, go to next

    mailbox_ring(std::size_t capacity, std::uint64_t first)
        : slots(new message[capacity]), mask(capacity - 1), base(first), tail(first) {
        for (std::size_t index = 0; index < capacity; ++index)
            slots[index].sequence.store(first + index, std::memory_order_relaxed);
    }

    // The seed: a ring of one slot nobody writes (a message no lap ever
    // publishes: its sequence stays 0), closed at position 0, so the first
    // push makes the first real ring after it. A unit that is only called
    // directly never makes one (192 B of slots and the ring saved).
    struct seed_tag {};
    explicit mailbox_ring(seed_tag) noexcept : slots(never_written()), mask(0), base(0), tail(closed) {}

    mailbox_ring(const mailbox_ring&) = delete;
    mailbox_ring& operator=(const mailbox_ring&) = delete;
    ~mailbox_ring() {
        if (mask != 0) delete[] slots;  // a real ring has 2 slots or more; the seed's is not its own
    }

    message& at(std::uint64_t position) noexcept { return slots[(position - base) & mask]; }
    const message& at(std::uint64_t position) const noexcept { return slots[(position - base) & mask]; }
    std::size_t capacity() const noexcept { return mask + 1; }

    // Read only (its sequence), by every seed; never destroyed, so a
    // mailbox that outlives static destruction still finds it.
    static message* never_written() noexcept {
        alignas(message) static unsigned char storage[sizeof(message)];
        static message* const slot = new (storage) message();
        return slot;
    }

    message* slots;
    const std::uint64_t mask;
    const std::uint64_t base;                       // the position of slots[0] on the first lap
    std::atomic<std::uint64_t> tail;                // the next position to claim (| closed)
    std::atomic<mailbox_ring*> next{nullptr};       // linked once closed
};

// Many producers (any thread), one consumer (the worker fiber).
//
// The consumer may also *lend* its turn: while it is parked idle, a caller on
// the worker's own thread can take the turn, serve what is queued and then
// its own message on its own fiber (no context switch), and give the turn
// back. While the turn is lent the consumer pops nothing, so messages are
// still served one at a time and in order. Messages that must run on the
// worker (`on_worker`) are never served in a lent turn.
class mailbox {
public:
    mailbox()
        : tail_(&seed_), head_ring_(&seed_), reading_(seed_) {}
    mailbox(const mailbox&) = delete;
    mailbox& operator=(const mailbox&) = delete;
    ~mailbox() {
        for (mailbox_ring* ring = seed_.next.load(std::memory_order_relaxed); ring != nullptr;) {
            mailbox_ring* next = ring->next.load(std::memory_order_relaxed);
            delete ring;
            ring = next;
        }
    }

    template <class Callable>
    void push(Callable&& callable, reply_cell* reply, bool on_worker = false) {
        if constexpr (message::emplaces_without_throwing<Callable>()) {
            std::uint64_t position = 0;
            message& slot = claim(position);
            slot.emplace(std::forward<Callable>(callable), reply, on_worker);
            publish(slot, position);
        } else {
            message made;  // built first: a throw here leaves the ring untouched
            made.emplace(std::forward<Callable>(callable), reply, on_worker);
            std::uint64_t position = 0;
            message& slot = claim(position);
            slot.take(made);
            publish(slot, position);
        }
    }

    // Moves the oldest message into `out`; false if there is none (or it is
    // still being written), or if the consumer's turn is lent (unless the
    // borrower asks). A borrower never gets a message that must run on the
    // worker. Inlined (as claim is): it is most of a cast's cost.
    [[gnu::always_inline]] bool pop(message& out, bool by_borrower = false) noexcept {
        if (!by_borrower && lent()) return false;
        const std::uint64_t position = head_.load(std::memory_order_relaxed);
        message* front = consumer_front(position);
        if (front == nullptr || (by_borrower && front->on_worker())) return false;
        out.take(*front);
        front->sequence.store(position + reading_.capacity(), std::memory_order_release);  // the slot's next lap
        head_.store(position + 1, std::memory_order_relaxed);
        return true;
    }

    // For the turn's holder: the oldest message must run on the worker.
    bool front_on_worker() noexcept {
        message* front = consumer_front(head_.load(std::memory_order_relaxed));
        return front != nullptr && front->on_worker();
    }

    // Messages claimed and not yet taken (some may still be being written).
    std::size_t size() const noexcept {
        const std::uint64_t taken = head_.load(std::memory_order_seq_cst);
        return static_cast<std::size_t>(claimed() - taken);
    }

    // The consumer waits for a message or for `wake_anyway()` to hold, or
    // until `deadline` on `time` (forever: no deadline). Returns false if
    // the deadline passed first. `lendable`: callers may borrow the turn
    // while it sleeps.
    template <class Predicate>
    bool wait_until(const clock& time, duration deadline, Predicate wake_anyway, bool lendable = false) {
        auto ready = [&] { return has_work() || wake_anyway(); };
        if (lendable) flags_.fetch_or(idle, std::memory_order_acq_rel);
        // A producer on this thread usually runs next: one yield saves the
        // sleep and the wake-up (an idle consumer then blocks, so a pumped
        // runtime sees nothing ready).
        if (!ready()) boost::this_fiber::yield();
        const bool woken = ready() || sleep(time, deadline, ready);
        flags_.fetch_and(~(idle | waiting), std::memory_order_acq_rel);
        return woken;
    }

    // Wakes the consumer (after changing what its predicate reads).
    void wake() noexcept { consumer_.unpark(); }

    // Takes the consumer's turn if it is parked idle and nobody holds the
    // turn; the caller must be on the consumer's thread.
    bool try_borrow() noexcept {
        unsigned seen = flags_.load(std::memory_order_relaxed);
        do {
            if ((seen & idle) == 0 || (seen & lent_bit) != 0) return false;
        } while (!flags_.compare_exchange_weak(seen, seen | lent_bit, std::memory_order_acq_rel,
                                               std::memory_order_relaxed));
        return true;
    }

    // Gives the turn back, waking the consumer if messages came meanwhile
    // or `wake_anyway` (it has something else to see).
    void give_back(bool wake_anyway) {
        // seq_cst: a producer that saw the turn lent did not wake the
        // consumer; this sees its message in size() instead.
        const unsigned before = flags_.fetch_and(~lent_bit, std::memory_order_seq_cst);
        if ((before & waiting) != 0 && (wake_anyway || size() != 0)) wake_waiting_consumer();
    }

    bool lent() const noexcept { return (flags_.load(std::memory_order_acquire) & lent_bit) != 0; }

private:
    static constexpr std::size_t initial_capacity = 2;  // the first ring's, made by the first push; a burst doubles it
    // flags_: the consumer is parked (or about to be) and wants a wake-up;
    // it may lend its turn; a borrower holds the turn.
    static constexpr unsigned waiting = 1, idle = 2, lent_bit = 4;

    mailbox_ring seed_{mailbox_ring::seed_tag{}};  // every ring follows it, oldest first
    std::atomic<mailbox_ring*> tail_;            // the ring producers claim in
    std::atomic<unsigned> flags_{0};
    parker consumer_;
    // The consumer's (and a borrower's, while it holds the turn); atomic so
    // that size() and has_work() may look from elsewhere.
    std::atomic<mailbox_ring*> head_ring_;
    std::atomic<std::uint64_t> head_{0};
    // The head ring's slots, copied: one pointer less to follow per pop.
    struct ring_view {
        message* slots;
        std::uint64_t mask;
        std::uint64_t base;
        explicit ring_view(mailbox_ring& ring) : slots(ring.slots), mask(ring.mask), base(ring.base) {}
        message& at(std::uint64_t position) const noexcept { return slots[(position - base) & mask]; }
        std::uint64_t capacity() const noexcept { return mask + 1; }
    } reading_;

    // A slot at the tail, for this producer alone. The first try is inline:
    // it succeeds unless producers race or the ring is full.
    [[gnu::always_inline]] message& claim(std::uint64_t& position) {
        mailbox_ring* ring = tail_.load(std::memory_order_acquire);
        std::uint64_t at = ring->tail.load(std::memory_order_relaxed);
        if ((at & mailbox_ring::closed) == 0) {
            message& slot = ring->at(at);
            if (slot.sequence.load(std::memory_order_acquire) == at &&
                ring->tail.compare_exchange_strong(at, at + 1, std::memory_order_seq_cst, std::memory_order_relaxed)) {
                position = at;
                return slot;
            }
        }
        return claim_contended(position);
    }

    [[gnu::noinline]] message& claim_contended(std::uint64_t& position) {
        mailbox_ring* ring = tail_.load(std::memory_order_acquire);
        for (;;) {
            std::uint64_t at = ring->tail.load(std::memory_order_relaxed);
            if ((at & mailbox_ring::closed) != 0) {
                ring = follow(ring, at);
                continue;
            }
            message& slot = ring->at(at);
            const auto lag = static_cast<std::int64_t>(slot.sequence.load(std::memory_order_acquire) - at);
            if (lag == 0) {
                if (ring->tail.compare_exchange_weak(at, at + 1, std::memory_order_seq_cst, std::memory_order_relaxed)) {
                    position = at;
                    return slot;
                }
            } else if (lag < 0) {
                // Full: the slot still holds the message of the lap before.
                ring->tail.compare_exchange_strong(at, at | mailbox_ring::closed, std::memory_order_acq_rel,
                                                   std::memory_order_relaxed);
            }
            // Otherwise another producer took `at` first: look again.
        }
    }

    // The ring after a closed one, linked by whichever producer gets there
    // first (a race makes one extra ring, dropped at once): nobody waits for
    // the producer that closed it.
    mailbox_ring* follow(mailbox_ring* full, std::uint64_t closed_tail) {
        mailbox_ring* next = full->next.load(std::memory_order_acquire);
        if (next == nullptr) {
            auto made = std::make_unique<mailbox_ring>(std::max(initial_capacity, full->capacity() * 2),
                                                       closed_tail & ~mailbox_ring::closed);
            if (full->next.compare_exchange_strong(next, made.get(), std::memory_order_acq_rel, std::memory_order_acquire))
                next = made.release();
        }
        tail_.compare_exchange_strong(full, next, std::memory_order_acq_rel, std::memory_order_relaxed);
        return next;
    }

    void publish(message& slot, std::uint64_t position) {
        // An exchange (a full barrier), then the look at flags_: with the
        // consumer's announce-then-look in sleep(), one of the two sees the
        // other, so a wake-up is never lost.
        slot.sequence.exchange(position + 1, std::memory_order_seq_cst);
        const unsigned seen = flags_.load(std::memory_order_seq_cst);
        // While the turn is lent, give_back() wakes the consumer instead.
        if ((seen & waiting) != 0 && (seen & lent_bit) == 0) wake_waiting_consumer();
    }

    // Only the one that clears `waiting` unparks: one wake-up per sleep.
    void wake_waiting_consumer() noexcept {
        if ((flags_.fetch_and(~waiting, std::memory_order_acq_rel) & waiting) != 0) consumer_.unpark();
    }

    // All claimed positions, in the newest ring.
    std::uint64_t claimed() const noexcept {
        const mailbox_ring* ring = tail_.load(std::memory_order_acquire);
        for (;;) {
            const std::uint64_t at = ring->tail.load(std::memory_order_seq_cst);
            const mailbox_ring* next = ring->next.load(std::memory_order_acquire);
            if ((at & mailbox_ring::closed) == 0 || next == nullptr) return at & ~mailbox_ring::closed;
            ring = next;
        }
    }

    // The oldest published message (at `position`, the head), for the
    // consumer or the turn's holder, moving on past drained closed rings;
    // null if none yet.
    message* consumer_front(std::uint64_t position) noexcept {
        for (;;) {
            message& slot = reading_.at(position);
            if (slot.sequence.load(std::memory_order_acquire) == position + 1) return &slot;
            mailbox_ring* next = drained_successor(*head_ring_.load(std::memory_order_relaxed), position);
            if (next == nullptr) return nullptr;
            head_ring_.store(next, std::memory_order_relaxed);
            reading_ = ring_view(*next);
        }
    }

    // The ring after `ring` if `ring` is closed and every position in it
    // was taken; else null (empty, or a message still being written).
    static mailbox_ring* drained_successor(const mailbox_ring& ring, std::uint64_t position) noexcept {
        const std::uint64_t tail = ring.tail.load(std::memory_order_acquire);
        if ((tail & mailbox_ring::closed) == 0 || (tail & ~mailbox_ring::closed) != position) return nullptr;
        return ring.next.load(std::memory_order_acquire);
    }

    // A published message waits for the consumer (a look from the
    // consumer's predicate, which may run while a borrower holds the turn:
    // it only reads).
    bool has_work() const noexcept {
        if (lent()) return false;
        const std::uint64_t position = head_.load(std::memory_order_relaxed);
        for (const mailbox_ring* ring = head_ring_.load(std::memory_order_relaxed); ring != nullptr;) {
            if (ring->at(position).sequence.load(std::memory_order_seq_cst) == position + 1)
                return true;
            ring = drained_successor(*ring, position);
        }
        return false;
    }

    // Sleeps until ready(), a wake() or the deadline; false at the deadline.
    template <class Ready>
    bool sleep(const clock& time, duration deadline, Ready ready) {
        unpark_on_tick ticks(time, consumer_, deadline != forever);
        const wait_point until = time.is_manual() ? no_deadline : real_time_point(deadline);
        for (;;) {
            // Announced, then looked: a push after the look sees `waiting`.
            // Armed again after every wake-up: a borrower may have served
            // the messages that woke it, and the next push must wake it.
            flags_.fetch_or(waiting, std::memory_order_seq_cst);
            if (ready()) return true;
            if (time.is_manual() && time.now() >= deadline) return false;
            if (!consumer_.park_until(until)) return ready();
        }
    }
};

} // namespace detail
} // namespace keepsake
