// keepsake/detail/committers.hpp: the runtimes of this process, each able to
// stop its units if any of them keeps its state in a given segment. An
// exporter's destructor asks them before its last pass, so the commits units
// make while they stop reach the store, whichever of the runtime and the
// exporter was declared first.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

namespace keepsake {
namespace detail {

class committers {
public:
    // Stops the units that keep their state in `segment` (a segment_impl),
    // if the runtime has any.
    using stopper = std::function<void(const void* segment)>;

    // Never destroyed: a runtime may outlive static destruction.
    static committers& instance() {
        static committers* const everyone = new committers();
        return *everyone;
    }

    std::uint64_t add(stopper stop) {
        auto made = std::make_shared<entry>();
        made->stop = std::move(stop);
        std::lock_guard<std::mutex> lock(mutex_);
        made->id = ++last_id_;
        entries_.push_back(std::move(made));
        return last_id_;
    }

    // Once it returns, the stopper is not running and never runs again.
    void remove(std::uint64_t id) {
        std::shared_ptr<entry> removed;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            for (auto each = entries_.begin(); each != entries_.end(); ++each)
                if ((*each)->id == id) {
                    removed = std::move(*each);
                    entries_.erase(each);
                    break;
                }
        }
        if (!removed) return;
        std::lock_guard<std::mutex> wait(removed->running);
        removed->gone = true;
    }

    // No lock of the list is held while units stop (that takes time, and
    // may start or end runtimes): each entry has its own.
    void stop_units_in(const void* segment) {
        std::vector<std::shared_ptr<entry>> now;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            now = entries_;
        }
        for (const auto& each : now) {
            std::lock_guard<std::mutex> running(each->running);
            if (!each->gone) each->stop(segment);
        }
    }

private:
    struct entry {
        std::uint64_t id = 0;
        stopper stop;
        std::mutex running;
        bool gone = false;  // under running
    };

    std::mutex mutex_;
    std::vector<std::shared_ptr<entry>> entries_;
    std::uint64_t last_id_ = 0;
};

} // namespace detail
} // namespace keepsake
