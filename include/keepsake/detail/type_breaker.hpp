// keepsake/detail/type_breaker.hpp: the circuit breaker of a unit type
// (unit_types.hpp): crashes of all units of the type within a window, in
// this process; past the limit, new starts of the type are refused for a
// cooldown.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "keepsake/error.hpp"

namespace keepsake {

// `crashes` crashes of units of one type within `window` (steady clock, this
// process) refuse new starts of the type for `cooldown`: start_child throws
// errc::start_failed carrying errc::circuit_open's message, and the bus gets
// a circuit_open event. 0: off.
struct circuit_breaker {
    std::uint32_t crashes = 0;
    std::chrono::milliseconds window = std::chrono::minutes(1);
    std::chrono::milliseconds cooldown = std::chrono::seconds(30);
};

namespace detail {

class type_breaker {
public:
    type_breaker(std::string type, circuit_breaker rule) : type_(std::move(type)), rule_(rule) {}

    // A crash of a unit of the type; true if it just opened the breaker.
    bool note_crash() {
        if (rule_.crashes == 0) return false;
        const auto now = std::chrono::steady_clock::now();
        std::lock_guard<std::mutex> lock(mutex_);
        crash_times_.push_back(now);
        while (!crash_times_.empty() && now - crash_times_.front() > rule_.window) crash_times_.pop_front();
        if (crash_times_.size() < rule_.crashes || now < open_until_) return false;
        open_until_ = now + rule_.cooldown;
        crash_times_.clear();
        return true;
    }

    // Throws errc::circuit_open while the breaker is open. Called on a new
    // worker's stack: the message is built out of line, so that this frame
    // stays small and touches no stack page the worker would not.
    void check() const {
        std::chrono::steady_clock::time_point open_until;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            open_until = open_until_;
        }
        const auto now = std::chrono::steady_clock::now();
        if (now < open_until) refuse(open_until - now);
    }

    const std::string& type() const noexcept { return type_; }

private:
    [[noreturn, gnu::noinline, gnu::cold]] void refuse(std::chrono::steady_clock::duration left_open) const {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(left_open).count();
        throw error(errc::circuit_open, "unit type '" + type_ + "' crashed " + std::to_string(rule_.crashes) +
                                            " times within " + std::to_string(rule_.window.count()) +
                                            " ms: its new starts are refused for " + std::to_string(left) +
                                            " ms more (circuit breaker); fix the cause, or raise "
                                            "unit_type_options::breaker");
    }

    std::string type_;
    circuit_breaker rule_;
    mutable std::mutex mutex_;
    std::deque<std::chrono::steady_clock::time_point> crash_times_;
    std::chrono::steady_clock::time_point open_until_{};
};

// The breakers of the registered types, by type name.
class type_breakers {
public:
    static type_breakers& instance() {
        static type_breakers* const everyone = new type_breakers();
        return *everyone;
    }
    void set(const std::string& type, std::shared_ptr<type_breaker> breaker) {
        std::lock_guard<std::mutex> lock(mutex_);
        breakers_[type] = std::move(breaker);
    }
    std::shared_ptr<type_breaker> find(const std::string& type) const {
        std::lock_guard<std::mutex> lock(mutex_);
        auto found = breakers_.find(type);
        return found == breakers_.end() ? nullptr : found->second;
    }

private:
    mutable std::mutex mutex_;
    std::map<std::string, std::shared_ptr<type_breaker>> breakers_;
};

} // namespace detail
} // namespace keepsake
