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

    listener_list() = default;
    listener_list(const listener_list&) = delete;
    listener_list& operator=(const listener_list&) = delete;
    ~listener_list() { delete body_.load(std::memory_order_acquire); }

    std::uint64_t add(handler on_event) {
        body& held = made();
        std::lock_guard<std::mutex> lock(held.mutex);
        auto next = std::make_shared<list>(held.current ? *held.current : list{});
        next->emplace_back(++held.last_id, std::move(on_event));
        held.current = std::move(next);
        held.any.store(true, std::memory_order_release);
        return held.last_id;
    }

    void remove(std::uint64_t id) {
        body* held = body_.load(std::memory_order_acquire);
        if (held == nullptr) return;
        std::lock_guard<std::mutex> lock(held->mutex);
        if (!held->current) return;
        auto next = std::make_shared<list>();
        for (const auto& entry : *held->current)
            if (entry.first != id) next->push_back(entry);
        held->any.store(!next->empty(), std::memory_order_release);
        held->current = std::move(next);
    }

    bool any() const noexcept {
        const body* held = body_.load(std::memory_order_acquire);
        return held != nullptr && held->any.load(std::memory_order_acquire);
    }

    // A handler's exception is logged and dropped: it is the listener's
    // failure, not the unit's or the supervisor's.
    void notify(Args... args) const {
        if (!any()) return;
        const body* held = body_.load(std::memory_order_acquire);
        if (held == nullptr) return;
        std::shared_ptr<const list> handlers;
        {
            std::lock_guard<std::mutex> lock(held->mutex);
            handlers = held->current;
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
    // Made by the first subscriber: most units never have one, and an idle
    // unit's two lists then cost a word each, not a mutex and a list.
    struct body {
        mutable std::mutex mutex;
        std::shared_ptr<const list> current;
        std::uint64_t last_id = 0;
        std::atomic<bool> any{false};  // read without the mutex, before each delivery
    };
    std::atomic<body*> body_{nullptr};

    body& made() {
        body* held = body_.load(std::memory_order_acquire);
        if (held != nullptr) return *held;
        auto fresh = std::make_unique<body>();
        if (body_.compare_exchange_strong(held, fresh.get(), std::memory_order_acq_rel, std::memory_order_acquire))
            return *fresh.release();
        return *held;  // another thread's subscriber made it first
    }
};

} // namespace detail
} // namespace keepsake
