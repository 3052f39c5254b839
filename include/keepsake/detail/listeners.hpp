// keepsake/detail/listeners.hpp: subscribers that may come and go on any
// thread while events are delivered. Delivery takes a snapshot of the list
// (copy on write), so a handler may subscribe or unsubscribe.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "keepsake/log.hpp"

namespace keepsake {
namespace detail {

template <class... Args>
class listener_list {
public:
    using handler = std::function<void(Args...)>;

    std::uint64_t add(handler on_event) {
        std::lock_guard<std::mutex> lock(mutex_);
        auto next = std::make_shared<list>(current_ ? *current_ : list{});
        next->emplace_back(++last_id_, std::move(on_event));
        current_ = std::move(next);
        any_.store(true, std::memory_order_release);
        return last_id_;
    }

    void remove(std::uint64_t id) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!current_) return;
        auto next = std::make_shared<list>();
        for (const auto& entry : *current_)
            if (entry.first != id) next->push_back(entry);
        any_.store(!next->empty(), std::memory_order_release);
        current_ = std::move(next);
    }

    bool any() const noexcept { return any_.load(std::memory_order_acquire); }

    // A handler's exception is logged and dropped: it is the listener's
    // failure, not the unit's or the supervisor's.
    void notify(Args... args) const {
        if (!any()) return;
        std::shared_ptr<const list> handlers;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            handlers = current_;
        }
        if (!handlers) return;
        for (const auto& entry : *handlers) {
            try {
                entry.second(args...);
            } catch (...) {
                log(spdlog::level::err, [] { return std::string("a keepsake listener threw; ignored"); });
            }
        }
    }

private:
    using list = std::vector<std::pair<std::uint64_t, handler>>;
    mutable std::mutex mutex_;
    std::shared_ptr<const list> current_;
    std::uint64_t last_id_ = 0;
    std::atomic<bool> any_{false};
};

} // namespace detail
} // namespace keepsake
