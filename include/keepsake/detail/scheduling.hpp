// keepsake/detail/scheduling.hpp: keepsake's fiber scheduling algorithms.
// Both take their wake-ups from other threads through the thread's
// wake_inbox (detail/parking.hpp) and sleep on a futex when idle: no
// Boost.Fiber spinlock is on the way between threads. counting_round_robin
// also counts the ready fibers other than the thread's own (main and
// dispatcher), so a pumped runtime can tell when it has nothing left to run.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <deque>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include <boost/fiber/algo/algorithm.hpp>
#include <boost/fiber/scheduler.hpp>
#include <boost/fiber/context.hpp>
#include <boost/fiber/type.hpp>

#include "keepsake/detail/blame.hpp"
#include "keepsake/detail/parking.hpp"

namespace keepsake {
namespace detail {

// A pumped runtime's time budget (runtime::run_for), set on its thread.
struct pump_budget {
    boost::fibers::context* pump = nullptr;  // the context running run_for; null: no budget
    std::chrono::steady_clock::time_point until{};
};

// What keepsake's algorithms share: the thread's wake inbox, drained by
// the dispatcher, and a futex sleep when nothing is ready.
class waking_algorithm : public boost::fibers::algo::algorithm {
public:
    waking_algorithm() : inbox_(wake_inbox::join_this_thread()) {}
    ~waking_algorithm() override { wake_inbox::leave_this_thread(inbox_); }
    waking_algorithm(const waking_algorithm&) = delete;
    waking_algorithm& operator=(const waking_algorithm&) = delete;

    // Only the dispatcher calls this; its next pick_next delivers.
    void suspend_until(const std::chrono::steady_clock::time_point& until) noexcept override {
        inbox_.sleep_until(until);
        dispatcher_next_ = true;
    }

    void notify() noexcept override { inbox_.notify(); }

protected:
    // Called first in pick_next. Only the dispatcher delivers: it runs
    // between fibers, so none of them is half-way into a park. It is the
    // one calling when the last pick returned it (or it just slept): known
    // without asking Boost.Fiber for the active context, a thread-local
    // lookup that would cost more than the rest of a pick.
    void take_wake_ups() noexcept {
        if (!dispatcher_next_) return;
        dispatcher_next_ = false;
        inbox_.deliver();
    }

    boost::fibers::context* picked(boost::fibers::context* next) noexcept {
        running_unit() = nullptr;  // a switch: whoever runs next marks itself (detail/blame.hpp)
        if (next != nullptr && next->is_context(boost::fibers::type::dispatcher_context)) dispatcher_next_ = true;
        return next;
    }

    static bool is_worker(boost::fibers::context* ctx) noexcept {
        return ctx->is_context(boost::fibers::type::worker_context);
    }

    wake_inbox& inbox() noexcept { return inbox_; }

private:
    wake_inbox& inbox_;
    bool dispatcher_next_ = false;
};

class counting_round_robin final : public waking_algorithm {
public:
    // Shared: the algorithm stays installed on the thread after the runtime
    // that installed it is gone.
    explicit counting_round_robin(std::shared_ptr<std::atomic<std::size_t>> ready_workers,
                                  std::shared_ptr<pump_budget> budget = nullptr)
        : ready_workers_(std::move(ready_workers)), budget_(std::move(budget)) {}

    void awakened(boost::fibers::context* ctx) noexcept override {
        if (is_worker(ctx)) ready_workers_->fetch_add(1, std::memory_order_relaxed);
        ctx->ready_link(ready_);
    }

    boost::fibers::context* pick_next() noexcept override {
        take_wake_ups();
        if (boost::fibers::context* pump = spent_budget_pump()) return pump;
        if (ready_.empty()) return nullptr;
        boost::fibers::context* next = &ready_.front();
        ready_.pop_front();
        if (is_worker(next)) ready_workers_->fetch_sub(1, std::memory_order_relaxed);
        return picked(next);
    }

    bool has_ready_fibers() const noexcept override { return !ready_.empty(); }

private:
    // The clock is read every few picks only: it costs as much as a switch.
    static constexpr unsigned picks_per_clock_read = 8;

    std::shared_ptr<std::atomic<std::size_t>> ready_workers_;
    std::shared_ptr<pump_budget> budget_;
    boost::fibers::scheduler::ready_queue_type ready_;
    unsigned picks_ = 0;

    // Once run_for's budget is spent, its context goes next, ahead of its
    // turn: with a thousand fibers ready it would otherwise wait for all of
    // them to run once.
    boost::fibers::context* spent_budget_pump() noexcept {
        if (!budget_ || budget_->pump == nullptr || !budget_->pump->ready_is_linked()) return nullptr;
        if (++picks_ % picks_per_clock_read != 0 || std::chrono::steady_clock::now() < budget_->until) return nullptr;
        boost::fibers::context* pump = budget_->pump;
        pump->ready_unlink();
        if (is_worker(pump)) ready_workers_->fetch_sub(1, std::memory_order_relaxed);
        return pump;
    }
};

// Work sharing between a runtime's threads (runtime_options::share_work):
// one ready queue per runtime, so a fiber made ready on a busy thread runs
// on whichever thread is free. Boost.Fiber's own shared_work keeps a single
// queue for the whole process (every runtime would share it), does not wake
// a sleeping thread when work arrives, and lets always-ready fibers starve
// the dispatcher (so wake-ups from other threads are never taken in); this
// one does none of that. The queue's lock is a std::mutex, held for a few
// instructions: a thread that finds it taken sleeps in the kernel (glibc's
// mutex does not spin), it never spins on a descheduled holder.
struct shared_ready_pool {
    std::mutex mutex;
    std::deque<boost::fibers::context*> ready;  // detached worker contexts
    std::vector<wake_inbox*> sleeping;          // threads waiting for work (inboxes outlive them)
};

class sharing_algorithm final : public waking_algorithm {
public:
    explicit sharing_algorithm(std::shared_ptr<shared_ready_pool> pool) : pool_(std::move(pool)) {}

    void awakened(boost::fibers::context* ctx) noexcept override {
        if (ctx->is_context(boost::fibers::type::pinned_context)) {  // main and dispatcher stay home
            ctx->ready_link(local_);
            return;
        }
        ctx->detach();
        wake_inbox* wake = nullptr;
        {
            std::lock_guard<std::mutex> lock(pool_->mutex);
            pool_->ready.push_back(ctx);
            if (!pool_->sleeping.empty()) {
                wake = pool_->sleeping.back();
                pool_->sleeping.pop_back();
            }
        }
        if (wake != nullptr && wake != &inbox()) wake->notify();
    }

    // The thread's own contexts (main, and the dispatcher, which takes in
    // fibers woken from other threads) take every other turn while both
    // queues have work: fibers that are always ready would otherwise starve
    // them.
    boost::fibers::context* pick_next() noexcept override {
        take_wake_ups();
        own_turn_ = !own_turn_;
        if (own_turn_ && !local_.empty()) return picked(pop_local());
        boost::fibers::context* next = nullptr;
        {
            std::lock_guard<std::mutex> lock(pool_->mutex);
            if (!pool_->ready.empty()) {
                next = pool_->ready.front();
                pool_->ready.pop_front();
            }
        }
        if (next != nullptr) {
            boost::fibers::context::active()->attach(next);
            return next;
        }
        return local_.empty() ? nullptr : picked(pop_local());
    }

    bool has_ready_fibers() const noexcept override {
        if (!local_.empty()) return true;
        std::lock_guard<std::mutex> lock(pool_->mutex);
        return !pool_->ready.empty();
    }

    void suspend_until(const std::chrono::steady_clock::time_point& until) noexcept override {
        {
            // Listed as sleeping under the pool's lock, after looking at the
            // queue: a fiber queued after that look wakes this thread.
            std::lock_guard<std::mutex> lock(pool_->mutex);
            if (!pool_->ready.empty()) return;
            pool_->sleeping.push_back(&inbox());
        }
        waking_algorithm::suspend_until(until);
        std::lock_guard<std::mutex> lock(pool_->mutex);
        auto& sleeping = pool_->sleeping;
        sleeping.erase(std::remove(sleeping.begin(), sleeping.end(), &inbox()), sleeping.end());
    }

private:
    std::shared_ptr<shared_ready_pool> pool_;
    boost::fibers::scheduler::ready_queue_type local_;
    bool own_turn_ = false;

    boost::fibers::context* pop_local() noexcept {
        boost::fibers::context* next = &local_.front();
        local_.pop_front();
        return next;
    }
};

} // namespace detail
} // namespace keepsake
