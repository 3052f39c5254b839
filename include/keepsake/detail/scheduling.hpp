// keepsake/detail/scheduling.hpp: Boost.Fiber's round robin, counting the
// ready fibers other than the thread's own (main and dispatcher) so a
// pumped runtime can tell when it has nothing left to run.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include <boost/fiber/algo/algorithm.hpp>
#include <boost/fiber/algo/round_robin.hpp>
#include <boost/fiber/scheduler.hpp>
#include <boost/fiber/context.hpp>
#include <boost/fiber/type.hpp>

namespace keepsake {
namespace detail {

// A pumped runtime's time budget (runtime::run_for), set on its thread.
struct pump_budget {
    boost::fibers::context* pump = nullptr;  // the context running run_for; null: no budget
    std::chrono::steady_clock::time_point until{};
};

class counting_round_robin final : public boost::fibers::algo::round_robin {
public:
    // Shared: the algorithm stays installed on the thread after the runtime
    // that installed it is gone.
    explicit counting_round_robin(std::shared_ptr<std::atomic<std::size_t>> ready_workers,
                                  std::shared_ptr<pump_budget> budget = nullptr)
        : ready_workers_(std::move(ready_workers)), budget_(std::move(budget)) {}

    void awakened(boost::fibers::context* ctx) noexcept override {
        if (is_worker(ctx)) ready_workers_->fetch_add(1, std::memory_order_relaxed);
        round_robin::awakened(ctx);
    }

    boost::fibers::context* pick_next() noexcept override {
        if (boost::fibers::context* pump = spent_budget_pump()) return pump;
        boost::fibers::context* next = round_robin::pick_next();
        if (next != nullptr && is_worker(next)) ready_workers_->fetch_sub(1, std::memory_order_relaxed);
        return next;
    }

private:
    // The clock is read every few picks only: it costs as much as a switch.
    static constexpr unsigned picks_per_clock_read = 8;

    std::shared_ptr<std::atomic<std::size_t>> ready_workers_;
    std::shared_ptr<pump_budget> budget_;
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

    static bool is_worker(boost::fibers::context* ctx) noexcept {
        return ctx->is_context(boost::fibers::type::worker_context);
    }
};

// Work sharing between a runtime's threads (runtime_options::share_work):
// one ready queue per runtime, so a fiber made ready on a busy thread runs
// on whichever thread is free. Boost.Fiber's own shared_work keeps a single
// queue for the whole process (every runtime would share it), does not wake
// a sleeping thread when work arrives, and lets always-ready fibers starve
// the dispatcher (so wake-ups from other threads are never taken in); this
// one does none of that.
class sharing_algorithm;

struct shared_ready_pool {
    std::mutex mutex;
    std::deque<boost::fibers::context*> ready;  // detached worker contexts
    std::vector<sharing_algorithm*> sleeping;   // threads waiting for work
};

class sharing_algorithm final : public boost::fibers::algo::algorithm {
public:
    explicit sharing_algorithm(std::shared_ptr<shared_ready_pool> pool) : pool_(std::move(pool)) {}
    sharing_algorithm(const sharing_algorithm&) = delete;
    sharing_algorithm& operator=(const sharing_algorithm&) = delete;

    void awakened(boost::fibers::context* ctx) noexcept override {
        if (ctx->is_context(boost::fibers::type::pinned_context)) {  // main and dispatcher stay home
            ctx->ready_link(local_);
            return;
        }
        ctx->detach();
        sharing_algorithm* wake = nullptr;
        {
            std::lock_guard<std::mutex> lock(pool_->mutex);
            pool_->ready.push_back(ctx);
            if (!pool_->sleeping.empty()) {
                wake = pool_->sleeping.back();
                pool_->sleeping.pop_back();
            }
        }
        if (wake != nullptr && wake != this) wake->notify();
    }

    // The thread's own contexts (main, and the dispatcher, which moves
    // fibers woken from other threads into the queue) take every other turn
    // while both queues have work: fibers that are always ready would
    // otherwise starve them.
    boost::fibers::context* pick_next() noexcept override {
        own_turn_ = !own_turn_;
        if (own_turn_ && !local_.empty()) return pop_local();
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
        return local_.empty() ? nullptr : pop_local();
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
            pool_->sleeping.push_back(this);
        }
        {
            std::unique_lock<std::mutex> lock(mutex_);
            if (until == std::chrono::steady_clock::time_point::max())
                woken_.wait(lock, [&] { return notified_; });
            else
                woken_.wait_until(lock, until, [&] { return notified_; });
            notified_ = false;
        }
        std::lock_guard<std::mutex> lock(pool_->mutex);
        auto& sleeping = pool_->sleeping;
        sleeping.erase(std::remove(sleeping.begin(), sleeping.end(), this), sleeping.end());
    }

    boost::fibers::context* pop_local() noexcept {
        boost::fibers::context* next = &local_.front();
        local_.pop_front();
        return next;
    }

    void notify() noexcept override {
        std::lock_guard<std::mutex> lock(mutex_);
        notified_ = true;
        woken_.notify_all();
    }

private:
    std::shared_ptr<shared_ready_pool> pool_;
    boost::fibers::scheduler::ready_queue_type local_;
    bool own_turn_ = false;
    std::mutex mutex_;
    std::condition_variable woken_;
    bool notified_ = false;
};

} // namespace detail
} // namespace keepsake
