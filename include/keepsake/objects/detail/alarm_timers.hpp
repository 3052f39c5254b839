// keepsake/objects/detail/alarm_timers.hpp: when a directory's housekeeping
// must next look at an object's alarms.
//
// A timer is a hint, never the truth: the truth is the alarms committed
// with each object's state. A timer names an object and when to look (and,
// for a retry, which alarm and which attempt); when it is due the directory
// reads the object's committed alarms and fires those due. A timer for an
// alarm since cancelled or moved later finds nothing due; so timers are
// only added (cheaply, from handlers, before the commit) and never searched
// for removal.
#pragma once

#include <cstdint>
#include <limits>
#include <mutex>
#include <optional>
#include <queue>
#include <string>
#include <utility>
#include <vector>

#include "keepsake/detail/futex.hpp"

namespace keepsake::detail {

class alarm_timers {
public:
    struct timer {
        std::int64_t due_ns = 0;  // alarm clock
        std::string key;          // the object's key in its directory
        std::string alarm;        // empty: every alarm of the object due by then
        std::uint32_t attempt = 0;
    };

    // Adds a timer; true if it is now the earliest (the housekeeping should
    // wake sooner than it planned).
    bool add(std::string key, std::int64_t due_ns, std::string alarm = {}, std::uint32_t attempt = 0) {
        std::lock_guard<futex_mutex> held(mutex_);
        const bool earliest = heap_.empty() || due_ns < heap_.top().due_ns;
        heap_.push(timer{due_ns, std::move(key), std::move(alarm), attempt});
        return earliest;
    }

    // The earliest timer due at `now_ns`, taken out.
    std::optional<timer> take_due(std::int64_t now_ns) {
        std::lock_guard<futex_mutex> held(mutex_);
        if (heap_.empty() || heap_.top().due_ns > now_ns) return std::nullopt;
        timer due = heap_.top();
        heap_.pop();
        return due;
    }

    // When the earliest timer is due (alarm clock), if any.
    std::optional<std::int64_t> earliest() const {
        std::lock_guard<futex_mutex> held(mutex_);
        if (heap_.empty()) return std::nullopt;
        return heap_.top().due_ns;
    }

    std::size_t size() const {
        std::lock_guard<futex_mutex> held(mutex_);
        return heap_.size();
    }

private:
    struct later {
        bool operator()(const timer& a, const timer& b) const noexcept { return a.due_ns > b.due_ns; }
    };
    mutable futex_mutex mutex_;
    std::priority_queue<timer, std::vector<timer>, later> heap_;
};

} // namespace keepsake::detail
