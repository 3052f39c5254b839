// keepsake/detail/scheduling.hpp: Boost.Fiber's round robin, counting the
// ready fibers other than the thread's own (main and dispatcher) so a
// pumped runtime can tell when it has nothing left to run.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <utility>

#include <boost/fiber/algo/round_robin.hpp>
#include <boost/fiber/context.hpp>
#include <boost/fiber/type.hpp>

namespace keepsake {
namespace detail {

class counting_round_robin final : public boost::fibers::algo::round_robin {
public:
    // Shared: the algorithm stays installed on the thread after the runtime
    // that installed it is gone.
    explicit counting_round_robin(std::shared_ptr<std::atomic<std::size_t>> ready_workers)
        : ready_workers_(std::move(ready_workers)) {}

    void awakened(boost::fibers::context* ctx) noexcept override {
        if (is_worker(ctx)) ready_workers_->fetch_add(1, std::memory_order_relaxed);
        round_robin::awakened(ctx);
    }

    boost::fibers::context* pick_next() noexcept override {
        boost::fibers::context* next = round_robin::pick_next();
        if (next != nullptr && is_worker(next)) ready_workers_->fetch_sub(1, std::memory_order_relaxed);
        return next;
    }

private:
    std::shared_ptr<std::atomic<std::size_t>> ready_workers_;

    static bool is_worker(boost::fibers::context* ctx) noexcept {
        return ctx->is_context(boost::fibers::type::worker_context);
    }
};

} // namespace detail
} // namespace keepsake
