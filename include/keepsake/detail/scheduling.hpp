// keepsake/detail/scheduling.hpp: Boost.Fiber's round robin, counting the
// ready fibers other than the thread's own (main and dispatcher) so a
// pumped runtime can tell when it has nothing left to run.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <utility>

#include <boost/fiber/algo/round_robin.hpp>
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

} // namespace detail
} // namespace keepsake
