// keepsake/detail/reply_pool.hpp: where the answer to a call goes. A call
// carries a reply cell from its unit's pool; the cell outlives a caller that
// timed out, so a late reply never writes into a dead stack frame.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <new>
#include <string>
#include <string_view>
#include <type_traits>

#include <boost/fiber/operations.hpp>

#include "keepsake/clock.hpp"
#include "keepsake/error.hpp"
#include "keepsake/detail/futex.hpp"
#include "keepsake/detail/parking.hpp"

namespace keepsake {
namespace detail {

// Where the answer to one call goes. The worker claims the cell (waiting ->
// claimed), writes the result into the caller's frame, publishes it
// (answered / failed), then unparks the caller; a caller that timed out
// marks it abandoned first, and then the worker writes nothing.
struct reply_cell {
    enum status : int { waiting, claimed, answered, failed, crashed, abandoned };

    std::atomic<int> state{waiting};
    parker caller;                     // the caller sleeps here
    void* result = nullptr;            // the caller's std::optional<R>, while it waits
    std::exception_ptr failure;
    std::string crash_reason;          // crashed: the reason, for worker_crashed (the caller takes it)
    bool crash_restarted = false;
    std::atomic<int> holders{0};       // the caller and the message
    std::uint32_t index = 0;           // in its pool
    std::atomic<std::uint32_t> next_free{0};  // in the pool's free list: the next cell's index + 1

    bool settled() const noexcept { return state.load(std::memory_order_acquire) >= answered; }
};

// A unit's reply cells, reused. Taking and returning one is a single
// compare-and-swap on a free list (no lock: callers on any thread, and the
// worker, return cells). Cells never move or go away while the pool lives,
// so a cell is named by its index; the list's head word pairs the first
// index with a count of changes, so a pop whose view went stale (the ABA
// problem) fails its compare-and-swap and looks again.
class reply_pool {
public:
    reply_pool() = default;
    reply_pool(const reply_pool&) = delete;
    reply_pool& operator=(const reply_pool&) = delete;
    ~reply_pool() {
        delete[] first_.load(std::memory_order_relaxed);
        if (std::atomic<reply_cell*>* rest = rest_.load(std::memory_order_relaxed)) {
            for (std::uint32_t block = 1; block < blocks; ++block) delete[] rest[block - 1].load(std::memory_order_relaxed);
            delete[] rest;
        }
    }

    // A cell held by two: the caller and the message that will answer it.
    reply_cell* acquire(void* result) {
        reply_cell* cell = pop_free();
        if (cell == nullptr) cell = make_cell();
        cell->state.store(reply_cell::waiting, std::memory_order_relaxed);
        cell->caller.reset();
        cell->result = result;
        cell->failure = nullptr;
        cell->holders.store(2, std::memory_order_relaxed);
        return cell;
    }

    void release(reply_cell* cell) noexcept {
        if (cell->holders.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
        std::uint64_t head = free_.load(std::memory_order_relaxed);
        do {
            cell->next_free.store(static_cast<std::uint32_t>(head & index_mask), std::memory_order_relaxed);
        } while (!free_.compare_exchange_weak(head, changed(head, cell->index + 1), std::memory_order_release,
                                              std::memory_order_relaxed));
    }

private:
    // Block b holds first_block << b cells: 24 blocks hold the 2^24 - 1
    // cells the head word can name, each a caller waiting at once. The
    // first block is small: an idle unit keeps it (152 B a cell).
    static constexpr std::uint32_t first_block = 2;
    static constexpr std::uint64_t index_mask = (std::uint64_t{1} << 24) - 1;  // the rest counts changes
    static constexpr std::uint32_t max_cells = static_cast<std::uint32_t>(index_mask);
    static constexpr std::uint32_t blocks = 24;

    std::atomic<std::uint64_t> free_{0};  // (changes << 24) | (first free index + 1); 0: none
    // Block 0 here; the table of blocks 1 to 23 is made when block 1 is:
    // most units never have more than first_block callers waiting at once,
    // and an idle unit then keeps two words, not 24.
    std::atomic<reply_cell*> first_{nullptr};
    std::atomic<std::atomic<reply_cell*>*> rest_{nullptr};
    static_assert(std::uint64_t{first_block} * ((std::uint64_t{1} << blocks) - 1) >= max_cells,
                  "the blocks must hold every cell the head word can name");
    futex_mutex growing_;                 // make_cell
    std::uint32_t made_ = 0;              // under growing_

    static std::uint64_t changed(std::uint64_t head, std::uint64_t first) noexcept {
        return ((head >> 24) + 1) << 24 | first;
    }

    static std::uint32_t block_of(std::uint32_t index) noexcept {
        return 31u - static_cast<std::uint32_t>(__builtin_clz(index / first_block + 1));
    }
    static std::uint32_t block_start(std::uint32_t block) noexcept { return first_block * ((1u << block) - 1); }

    // A made cell's block (its index came from the free list, published
    // after the block was).
    reply_cell* block_at(std::uint32_t block) const noexcept {
        if (block == 0) return first_.load(std::memory_order_acquire);
        return rest_.load(std::memory_order_acquire)[block - 1].load(std::memory_order_acquire);
    }

    reply_cell& at(std::uint32_t index) const noexcept {
        const std::uint32_t block = block_of(index);
        return block_at(block)[index - block_start(block)];
    }

    reply_cell* pop_free() noexcept {
        std::uint64_t head = free_.load(std::memory_order_acquire);
        while ((head & index_mask) != 0) {
            reply_cell& cell = at(static_cast<std::uint32_t>(head & index_mask) - 1);
            const std::uint64_t next = changed(head, cell.next_free.load(std::memory_order_relaxed));
            if (free_.compare_exchange_weak(head, next, std::memory_order_acquire, std::memory_order_acquire))
                return &cell;
        }
        return nullptr;
    }

    reply_cell* make_cell() {
        std::lock_guard<futex_mutex> guard(growing_);
        if (made_ == max_cells)
            throw error(errc::limit_reached, "more than " + std::to_string(max_cells) +
                                                 " calls wait on one unit at once; use casts, or fewer callers");
        const std::uint32_t block = block_of(made_);
        if (made_ == block_start(block)) {
            // (A block that failed to allocate is tried again: the table stays.)
            if (block == 1 && rest_.load(std::memory_order_relaxed) == nullptr)
                rest_.store(new std::atomic<reply_cell*>[blocks - 1](), std::memory_order_release);
            auto* cells = new reply_cell[std::size_t{first_block} << block];
            if (block == 0) first_.store(cells, std::memory_order_release);
            else rest_.load(std::memory_order_relaxed)[block - 1].store(cells, std::memory_order_release);
        }
        reply_cell& cell = block_at(block)[made_ - block_start(block)];
        cell.index = made_++;
        return &cell;
    }
};

// Answers a waiting caller (or does nothing if it gave up waiting). A fill
// that returns a status changes the outcome.
template <class Fill>
void answer(reply_cell& cell, reply_cell::status outcome, Fill fill) {
    int expected = reply_cell::waiting;
    if (!cell.state.compare_exchange_strong(expected, reply_cell::claimed, std::memory_order_acquire)) return;
    if constexpr (std::is_same_v<decltype(fill(cell)), reply_cell::status>) {
        outcome = fill(cell);
    } else {
        fill(cell);
    }
    cell.state.store(outcome, std::memory_order_release);
    cell.caller.unpark();  // the message still holds the cell: it stays valid meanwhile
}

inline void answer_failure(reply_cell& cell, std::exception_ptr failure) {
    answer(cell, reply_cell::failed, [&](reply_cell& target) { target.failure = std::move(failure); });
}

// Answers a caller whose call crashed the worker. Without memory for the
// reason, bad_alloc (from the exception runtime's emergency pool) still
// wakes the caller.
inline void answer_crash(reply_cell& cell, std::string_view reason, bool restarted) noexcept {
    answer(cell, reply_cell::crashed, [&](reply_cell& target) {
        target.crash_restarted = restarted;
        try {
            target.crash_reason.assign(reason);
            return reply_cell::crashed;
        } catch (...) {
            target.failure = std::make_exception_ptr(std::bad_alloc());
            return reply_cell::failed;
        }
    });
}

// Waits for the answer until `deadline` (real time). A caller on the
// worker's own thread first yields a few times (the worker usually answers
// within one); any other caller parks at once. Returns false if it gave up;
// the cell is then abandoned.
inline bool await_answer(reply_cell& cell, wait_point deadline, bool worker_on_this_thread) {
    for (int spins = 0; worker_on_this_thread && spins < 4; ++spins) {
        if (cell.settled()) return true;
        boost::this_fiber::yield();
    }
    while (!cell.settled()) {
        if (cell.caller.park_until(deadline)) continue;
        if (cell.settled()) return true;
        int expected = reply_cell::waiting;
        if (cell.state.compare_exchange_strong(expected, reply_cell::abandoned, std::memory_order_acq_rel)) return false;
        // The worker claimed it just now: the answer is moments away.
        while (!cell.settled()) cell.caller.park_until(no_deadline);
    }
    return true;
}

} // namespace detail
} // namespace keepsake
