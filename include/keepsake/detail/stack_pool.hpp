// keepsake/detail/stack_pool.hpp: the runtime's fiber stacks, kept for
// reuse. A fiber that ends hands its stack back; the next fiber of the
// runtime takes it instead of mapping a new one (an mmap, an mprotect and a
// page fault for each page it touches first, about 12 µs a guarded stack).
//
// Stacks are carved from mappings of several stacks each (up to 4 MiB), with
// one guard page at the bottom of each stack when asked (an mprotect of that
// page of the big mapping: an overflow is a segfault, not corruption). Linux
// counts a mapping per run of pages with the same protection, so guarded
// stacks still cost two mappings each (vm.max_map_count, 65 530 by default,
// still caps a process near 32 000 guarded stacks); unguarded ones cost one
// mapping per carving (about 256 stacks of 16 KiB). What carving saves is
// the mmap per stack (guarded) or the heap's bookkeeping and its first touch
// (unguarded, where the stacks came from malloc).
//
// Memory: a pooled stack keeps the pages its last fiber touched (its data
// too): up to `max_pooled` stacks' dirty pages stay resident while no fiber
// uses them, at most max_pooled x stack size and typically a few pages each.
// That is the trade for a start without page faults. Stacks handed back
// past the bound give their memory back at once: a guarded one is unmapped
// (it is two mappings of its own); an unguarded one lies inside a bigger
// mapping, which unmapping it would split (one more mapping a hole, and a
// failure past vm.max_map_count), so its pages are dropped (MADV_DONTNEED)
// and its address range is kept for a later fiber. Every mapping goes with
// the pool (after the last fiber that uses one has ended: each allocator
// copy holds the pool).
//
// Used from any thread of a runtime: a plain std::mutex, held for a few
// loads and stores (never across a system call), so a descheduled holder
// makes the others sleep, not spin.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

#include <boost/context/stack_context.hpp>

namespace keepsake::detail {

struct stack_pool_stats {
    std::size_t fresh = 0;     // stacks carved for the first time (new pages)
    std::size_t reused = 0;    // stacks handed out again from the pool
    std::size_t pooled = 0;    // ended fibers' stacks kept now, for reuse
    std::size_t released = 0;  // stacks handed back past the bound: unmapped, or their pages dropped
    std::size_t recycled = 0;  // unguarded stacks whose pages were dropped, handed out again
    std::size_t mappings = 0;  // mmap calls made (each carved into stacks)
};

class stack_pool {
public:
    // `stack_size` is rounded up to whole pages; a guard page is added below
    // it when `guard_page`. `max_pooled` stacks are kept at most.
    stack_pool(std::size_t stack_size, bool guard_page, std::size_t max_pooled)
        : page_(page_size()),
          usable_((std::max<std::size_t>(stack_size, 1) + page_ - 1) / page_ * page_),
          stride_(usable_ + (guard_page ? page_ : 0)),
          per_mapping_(std::max<std::size_t>(1, (std::size_t{4} << 20) / stride_)),
          guard_page_(guard_page),
          max_pooled_(max_pooled) {
        free_.reserve(std::min<std::size_t>(max_pooled_, 1024));
    }

    stack_pool(const stack_pool&) = delete;
    stack_pool& operator=(const stack_pool&) = delete;

    ~stack_pool() {
        if (guard_page_) {
            for (char* base : free_) ::munmap(base, stride_);
            if (next_ != end_) ::munmap(next_, static_cast<std::size_t>(end_ - next_));
        } else {
            // Nothing was unmapped from these: each is whole.
            for (const auto& mapping : mappings_) ::munmap(mapping.first, mapping.second);
        }
    }

    // Boost.Context's StackAllocator: sp is the top, size counts the guard
    // page (as boost::context::protected_fixedsize_stack does).
    boost::context::stack_context allocate() {
        bool fresh = false;
        char* base = take(fresh);
        if (base == nullptr) base = carve();
        else if (fresh) guard(base);
        boost::context::stack_context made;
        made.size = stride_;
        made.sp = base + stride_;
        return made;
    }

    void deallocate(boost::context::stack_context& stack) noexcept {
        char* base = static_cast<char*>(stack.sp) - stack.size;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (free_.size() < max_pooled_) {
                try {
                    free_.push_back(base);
                    return;
                } catch (...) {  // no room for the pointer: release the stack
                }
            }
            ++stats_.released;
        }
        if (guard_page_) {
            ::munmap(base, stride_);
            return;
        }
        // Dropped before another thread can take it from dropped_.
        ::madvise(base, stride_, MADV_DONTNEED);
        std::lock_guard<std::mutex> lock(mutex_);
        try {
            dropped_.push_back(base);
        } catch (...) {  // no room for the pointer: the range stays unused until the pool goes
        }
    }

    stack_pool_stats stats() const {
        std::lock_guard<std::mutex> lock(mutex_);
        stack_pool_stats now = stats_;
        now.pooled = free_.size();
        return now;
    }

    std::size_t stack_size() const noexcept { return stride_; }
    std::size_t stacks_per_mapping() const noexcept { return per_mapping_; }
    bool guard_page() const noexcept { return guard_page_; }

private:
    static std::size_t page_size() noexcept {
        const long size = ::sysconf(_SC_PAGESIZE);
        return size > 0 ? static_cast<std::size_t>(size) : 4096;
    }

    // A pooled stack (the one handed back last: its pages are the warmest),
    // an unguarded one whose pages were dropped, or a fresh one from the
    // newest mapping's rest (`fresh`: its guard page is still to be made);
    // null when none.
    char* take(bool& fresh) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!free_.empty()) {
            char* base = free_.back();
            free_.pop_back();
            ++stats_.reused;
            return base;
        }
        if (!dropped_.empty()) {
            char* base = dropped_.back();
            dropped_.pop_back();
            ++stats_.recycled;
            return base;
        }
        if (next_ == end_) return nullptr;
        char* base = next_;
        next_ += stride_;
        ++stats_.fresh;
        fresh = true;
        return base;
    }

    // Maps a new run of stacks (outside the lock) and takes its first.
    char* carve() {
        const std::size_t bytes = per_mapping_ * stride_;
        void* mapped = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
        if (mapped == MAP_FAILED) throw std::bad_alloc();
#ifdef MADV_NOHUGEPAGE
        // A huge page would make the first touch of one stack fault in 2 MiB.
        ::madvise(mapped, bytes, MADV_NOHUGEPAGE);
#endif
        char* base = static_cast<char*>(mapped);
        std::pair<char*, char*> unused{nullptr, nullptr};  // what another thread's carving left
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (!guard_page_) {
                try {
                    mappings_.emplace_back(base, bytes);
                } catch (...) {
                    ::munmap(mapped, bytes);
                    throw;
                }
            }
            unused = {next_, end_};
            next_ = base + stride_;
            end_ = base + bytes;
            ++stats_.fresh;
            ++stats_.mappings;
        }
        // Unguarded, the rest stays mapped (unmapping it would split the
        // mapping) and unused until the pool goes: at most one carving's rest
        // each time two threads carve at once.
        if (guard_page_ && unused.first != unused.second)
            ::munmap(unused.first, static_cast<std::size_t>(unused.second - unused.first));
        return guard(base);
    }

    // The stack's bottom page becomes its guard: a fault, not corruption,
    // when it overflows.
    char* guard(char* base) {
        if (guard_page_ && ::mprotect(base, page_, PROT_NONE) != 0) {
            ::munmap(base, stride_);
            throw std::bad_alloc();  // ENOMEM: past vm.max_map_count
        }
        return base;
    }

    const std::size_t page_;
    const std::size_t usable_;
    const std::size_t stride_;
    const std::size_t per_mapping_;
    const bool guard_page_;
    const std::size_t max_pooled_;
    mutable std::mutex mutex_;
    std::vector<char*> free_;      // under mutex_: bases of pooled stacks, newest last
    std::vector<char*> dropped_;   // under mutex_: unguarded stacks released past the bound (no pages)
    std::vector<std::pair<char*, std::size_t>> mappings_;  // under mutex_: every mapping, unguarded only
    char* next_ = nullptr;         // under mutex_: the newest mapping's uncarved rest
    char* end_ = nullptr;
    stack_pool_stats stats_;       // under mutex_ (pooled is free_.size())
};

// What a fiber holds: the pool, shared, so a stack handed back after the
// runtime went (a fiber's stack is released after its last line) still
// finds it.
class pooled_stack_allocator {
public:
    explicit pooled_stack_allocator(std::shared_ptr<stack_pool> pool) noexcept : pool_(std::move(pool)) {}

    boost::context::stack_context allocate() { return pool_->allocate(); }
    void deallocate(boost::context::stack_context& stack) noexcept { pool_->deallocate(stack); }

private:
    std::shared_ptr<stack_pool> pool_;
};

} // namespace keepsake::detail
