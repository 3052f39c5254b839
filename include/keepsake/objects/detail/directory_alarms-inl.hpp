// keepsake/objects/detail/directory_alarms-inl.hpp: object_directory's
// alarms and its housekeeping fiber (included by directory-inl.hpp).
#pragma once

#include <algorithm>
#include <chrono>
#include <string>

#include "keepsake/log.hpp"

namespace keepsake {

template <class State, class Handler>
std::size_t object_directory<State, Handler>::fire_due() {
    std::size_t fired = 0;
    for (;;) {
        const std::int64_t now_ns = alarm_clock_now(runtime_.clock()).count();
        auto due = timers_.take_due(now_ns);
        if (!due) return fired;
        fired += deliver_alarms(*due, now_ns);
    }
}

// A timer is due: the object's committed alarms say what fires (a timer is
// only a hint). Reading them wakes nothing, so a deleted object or a
// cancelled alarm costs no activation.
template <class State, class Handler>
std::size_t object_directory<State, Handler>::deliver_alarms(const detail::alarm_timers::timer& due,
                                                             std::int64_t now_ns) {
    std::optional<held_type> held;
    try {
        held = reads_.read(due.key);
    } catch (const std::exception& failure) {
        detail::log(spdlog::level::err, [&] {
            return "object '" + due.key + "' of directory '" + spec_.name +
                   "': its alarms cannot be read, none fires: " + failure.what();
        });
        return 0;
    }
    if (!held) return 0;
    std::size_t fired = 0;
    for (const auto& slot : held->alarms) {
        if (!slot.used()) continue;
        const std::string name(slot.name_view());
        const bool retry = !due.alarm.empty();
        if (retry && name != due.alarm) continue;
        if (slot.due_ns > now_ns) {
            timers_.add(due.key, slot.due_ns);  // moved later since: look again then
            continue;
        }
        if (!retry) {
            auto lock = shared_->changed.lock();
            if (backing_off_.count({due.key, name}) != 0) continue;  // its retry timer fires it
        }
        fired += fire_one(due.key, name, slot.due_ns, retry ? due.attempt : 0);
    }
    return fired;
}

template <class State, class Handler>
std::size_t object_directory<State, Handler>::fire_one(const std::string& key, const std::string& alarm,
                                                      std::int64_t due_ns, std::uint32_t attempt) {
    std::optional<call_result<detail::alarm_outcome>> answer;
    try {
        lease held = acquire(key);
        answer = held.object().try_call(detail::alarm_due{alarm, attempt});
    } catch (const error& failure) {
        if (failure.code() == errc::not_owner) return 0;  // it moved: its owner fires it
        retry_or_drop(key, alarm, due_ns, attempt, failure.what());
        return 0;
    } catch (const std::exception& failure) {
        retry_or_drop(key, alarm, due_ns, attempt, failure.what());
        return 0;
    }
    if (!answer->ok()) {
        retry_or_drop(key, alarm, due_ns, attempt, answer->message());
        return 0;
    }
    {
        auto lock = shared_->changed.lock();
        backing_off_.erase({key, alarm});
        if (answer->value() == detail::alarm_outcome::fired) ++stats_.alarms_fired;
    }
    if (answer->value() == detail::alarm_outcome::no_handler)
        detail::log(spdlog::level::err, [&] {
            return "object '" + key + "' of directory '" + spec_.name + "': alarm '" + alarm +
                   "' is dropped: the handler takes no keepsake::alarm_fired";
        });
    return answer->value() == detail::alarm_outcome::fired ? 1 : 0;
}

// Its handler crashed (or the object could not start): retried after
// retry.first, doubling, retry.retries times; then dropped and reported.
template <class State, class Handler>
void object_directory<State, Handler>::retry_or_drop(const std::string& key, const std::string& alarm,
                                                     std::int64_t due_ns, std::uint32_t attempt,
                                                     const std::string& why) {
    if (attempt < spec_.retry.retries) {
        const std::int64_t delay = spec_.retry.first.count() << std::min<std::uint32_t>(attempt, 30);
        {
            auto lock = shared_->changed.lock();
            backing_off_.insert({key, alarm});
            ++stats_.alarm_retries;
        }
        if (timers_.add(key, alarm_clock_now(runtime_.clock()).count() + delay, alarm, attempt + 1)) shared_->kick();
        publish(event_kind::alarm_retry, key, alarm, attempt + 1);
        return;
    }
    bool dropped = false;
    try {
        lease held = acquire(key);
        dropped = held.object().call(detail::drop_alarm{alarm, due_ns});
    } catch (const std::exception&) {
        // It stays committed: the next load (a restart) tries it again.
    }
    {
        auto lock = shared_->changed.lock();
        backing_off_.erase({key, alarm});
        ++stats_.alarms_failed;
    }
    publish(event_kind::alarm_failed, key, alarm, attempt);
    detail::log(spdlog::level::err, [&] {
        return "object '" + key + "' of directory '" + spec_.name + "': alarm '" + alarm + "' failed " +
               std::to_string(attempt + 1) + " times and is " + (dropped ? "dropped" : "left committed") +
               "; last: " + why;
    });
}

// The alarms an object brought with it when it started (a cluster node
// that claimed it: its timers were another node's).
template <class State, class Handler>
void object_directory<State, Handler>::load_alarms_of(const std::string& key) {
    try {
        auto held = reads_.read(key);
        if (!held) return;
        bool sooner = false;
        for (const auto& slot : held->alarms)
            if (slot.used()) sooner = timers_.add(key, slot.due_ns) || sooner;
        if (sooner) shared_->kick();
    } catch (const std::exception& failure) {
        detail::log(spdlog::level::err, [&] {
            return "object '" + key + "' of directory '" + spec_.name +
                   "': its alarms cannot be read, none will fire: " + failure.what();
        });
    }
}

// Every alarm its objects hold, in the segment and (for objects not there)
// the store: the timers a new directory starts with.
template <class State, class Handler>
void object_directory<State, Handler>::load_alarms() {
    for (const std::string& key : reads_.keys()) {
        if (spec_.guard != nullptr && !spec_.guard->serves(spec_.name, key)) continue;  // another node's
        try {
            auto held = reads_.read(key);
            if (!held) continue;
            for (const auto& slot : held->alarms)
                if (slot.used()) timers_.add(key, slot.due_ns);
        } catch (const std::exception& failure) {
            detail::log(spdlog::level::err, [&] {
                return "object '" + key + "' of directory '" + spec_.name +
                       "': its alarms cannot be read, none will fire: " + failure.what();
            });
        }
    }
}

template <class State, class Handler>
duration object_directory<State, Handler>::next_wake() const {
    const duration now = runtime_.clock().now();
    duration wake = detail::forever;
    {
        auto held = shared_->changed.lock();
        if (spec_.hibernate_after != duration::zero())
            wake = std::min(wake, (oldest_ != nullptr ? oldest_->last_active : now) + spec_.hibernate_after);
        if (spec_.shutdown_after != duration::zero() && spec_.durable != nullptr && !hibernated_.empty())
            wake = std::min(wake, hibernated_.front().second + spec_.shutdown_after);
    }
    if (auto due = timers_.earliest()) {
        const duration until = duration(*due) - alarm_clock_now(runtime_.clock());
        wake = std::min(wake, now + std::max(until, duration::zero()));
    }
    return wake;
}

template <class State, class Handler>
void object_directory<State, Handler>::housekeep() {
    load_alarms();
    for (;;) {
        runtime_.wait_until(shared_->changed, next_wake(), [&] { return shared_->stopping || shared_->kicked; });
        {
            auto held = shared_->changed.lock();
            if (shared_->stopping) break;
            shared_->kicked = false;
        }
        try {
            fire_due();
            hibernate_idle();
            shut_down_idle();
        } catch (const std::exception& failure) {
            detail::log(spdlog::level::err, [&] {
                return "object directory '" + spec_.name + "': housekeeping failed, retried: " + failure.what();
            });
        }
    }
    {
        auto held = shared_->changed.lock();
        shared_->done = true;
    }
    shared_->changed.notify_all();
}

template <class State, class Handler>
void object_directory<State, Handler>::close() {
    {
        auto held = shared_->changed.lock();
        if (closed_) return;
        closed_ = true;
        shared_->stopping = true;
    }
    shared_->changed.notify_all();
    // Until no entry is left: a stop another caller began (terminate,
    // collect_idle) ends with its entry erased, and an object it put back
    // (casts were still queued) is active again, and stopped here.
    for (;;) {
        runtime_.wait_until(shared_->changed, detail::forever, [&] {
            if (housekeeping_started_ && !shared_->done) return false;
            for (const auto& each : entries_)
                if (each.second.now != phase::active) return false;
            return true;
        });
        std::vector<entry*> active;
        {
            auto held = shared_->changed.lock();
            if (entries_.empty()) return;
            for (auto& each : entries_) {
                if (each.second.now != phase::active) continue;  // another stop owns it
                each.second.now = phase::stopping;
                unlink(each.second);
                active.push_back(&each.second);
            }
        }
        for (entry* each : active) stop_entry(*each, stop_kind::terminated);
    }
}

} // namespace keepsake
