// keepsake/objects/detail/directory-inl.hpp: object_directory's activation,
// hibernation, shutdown, alarms and housekeeping (included by directory.hpp).
#pragma once

#include <algorithm>
#include <chrono>
#include <string>
#include <utility>

#include "keepsake/detail/unit_record.hpp"
#include "keepsake/log.hpp"

namespace keepsake {

// --- activation ------------------------------------------------------------

template <class State, class Handler>
typename object_directory<State, Handler>::lease object_directory<State, Handler>::acquire(const std::string& key) {
    check_object_key(key);
    const duration deadline = runtime_.clock().now() + spec_.start_timeout;
    for (;;) {
        auto held = shared_->changed.lock();
        if (closed_)
            throw error(errc::not_running, "object directory '" + spec_.name + "' is closed; no object starts in it");
        auto found = entries_.find(key);
        if (found == entries_.end()) {
            if (spec_.max_active != 0 && entries_.size() >= spec_.max_active) {
                held.unlock();
                if (!evict_one())
                    throw error(errc::limit_reached,
                                "object directory '" + spec_.name + "' has max_active = " +
                                    std::to_string(spec_.max_active) +
                                    " objects active and every one is busy; raise max_active or retry later");
                continue;
            }
            auto at = entries_.try_emplace(key).first;
            at->second.in_flight = 1;
            held.unlock();
            return lease(*this, start_object(key, at));
        }
        entry& which = found->second;
        if (which.now == phase::active) {
            if (which.in_flight == 0 && !which.handle.shared_core()->accepts_calls()) {
                // It gave up (restart intensity) and stopped: start it again.
                which.now = phase::stopping;
                unlink(which);
                held.unlock();
                stop_entry(which, stop_kind::idle);
                continue;
            }
            ++which.in_flight;
            which.last_active = runtime_.clock().now();
            unlink(which);
            link_newest(which);
            return lease(*this, which);
        }
        // Starting or stopping: wait for it (singleflight).
        if (which.waiters >= spec_.max_waiters)
            throw error(errc::overloaded, "object '" + key + "' of directory '" + spec_.name + "' already has " +
                                              std::to_string(which.waiters) +
                                              " callers waiting for it to start; retry later, or raise "
                                              "directory_spec::max_waiters");
        ++which.waiters;
        held.unlock();
        const bool ready = runtime_.wait_until(shared_->changed, deadline, [&] {
            auto now = entries_.find(key);
            return closed_ || now == entries_.end() || now->second.now == phase::active;
        });
        {
            auto again = shared_->changed.lock();
            auto now = entries_.find(key);
            if (now != entries_.end() && now->second.waiters > 0) --now->second.waiters;
        }
        if (!ready)
            throw error(errc::timeout, "object '" + key + "' of directory '" + spec_.name + "' did not start within " +
                                           std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                              spec_.start_timeout)
                                                              .count()) +
                                           " ms (directory_spec::start_timeout); retry later");
    }
}

template <class State, class Handler>
void object_directory<State, Handler>::release(entry& held) {
    bool stopper_waits = false;
    {
        auto lock = shared_->changed.lock();
        --held.in_flight;
        held.last_active = runtime_.clock().now();
        if (held.now == phase::active) {
            unlink(held);
            link_newest(held);
        }
        stopper_waits = held.now == phase::stopping && held.in_flight == 0;
    }
    if (stopper_waits) shared_->changed.notify_all();  // stop_entry waits for the last call to leave
}

template <class State, class Handler>
typename object_directory<State, Handler>::entry& object_directory<State, Handler>::start_object(
    const std::string& key, typename std::unordered_map<std::string, entry>::iterator at) {
    entry& which = at->second;
    const auto began = std::chrono::steady_clock::now();
    try {
        if (spec_.guard != nullptr) spec_.guard->before_start(spec_.name, key);
        unit_type made = make_unit(key);
        {
            auto held = shared_->changed.lock();
            which.handle = std::move(made);
            which.now = phase::active;
            which.last_active = runtime_.clock().now();
            link_newest(which);
            ++stats_.activations;
            hibernated_since_.erase(key);
        }
        shared_->changed.notify_all();
    } catch (...) {
        {
            auto held = shared_->changed.lock();
            erase_entry(key);
        }
        shared_->changed.notify_all();
        throw;
    }
    if (spec_.guard != nullptr) load_alarms_of(key);  // it may come from another node
    publish(event_kind::activated, key, {}, 0, std::chrono::steady_clock::now() - began);
    return which;
}

template <class State, class Handler>
std::shared_ptr<const unit_spec<typename object_directory<State, Handler>::held_type,
                                typename object_directory<State, Handler>::handler_type>>
object_directory<State, Handler>::make_unit_spec() const {
    unit_spec<held_type, handler_type> made;
    made.name = spec_.name;  // each object's unit is named prefix_ + key
    if (spec_.initial)
        made.initial_for = [initial = spec_.initial, prefix = prefix_.size()](const std::string& name) {
            held_type fresh;
            fresh.value = initial(name.substr(prefix));
            return fresh;
        };
    made.handler = handler_type{spec_.handler, shared_};
    made.where = &segment_;
    made.recover_from = spec_.durable;
    made.store_prefix = spec_.store_prefix;
    made.commit = spec_.commit;
    made.call_timeout = spec_.call_timeout;
    made.intensity = spec_.intensity;
    made.stack_size = spec_.stack_size;
    made.type = spec_.name;
    made.threshold = spec_.threshold.value_or(crash_threshold{});
    made.lifecycle = key_lifecycle::keep;
    return std::make_shared<const unit_spec<held_type, handler_type>>(std::move(made));
}

template <class State, class Handler>
typename object_directory<State, Handler>::unit_type object_directory<State, Handler>::make_unit(
    const std::string& key) {
    unit_type started = detail::start_unit_sharing(runtime_, unit_spec_, prefix_ + key);
    if (started && started.state() == child_state::running) return started;
    const auto refused = started ? started.shared_core()->refused_start() : std::nullopt;
    if (refused)
        throw error(errc::permanently_crashed,
                    "object '" + key + "' of directory '" + spec_.name + "' is not started: " + *refused +
                        "; clear it with keepsake::clear_crashed(segment, \"" + prefix_ + key +
                        "\") or keepsake-inspect clear");
    throw error(errc::start_failed, "object '" + key + "' of directory '" + spec_.name +
                                        "' did not start (its unit stopped at once); see the log for its crash");
}

// Calls in flight when a unit is stopped (terminate, close) end with it,
// answered or refused; their leases point at the entry and use its handle,
// so both stay until the last one left. (An object that terminates itself
// from its own handler would wait for itself: use stop_self.)
template <class State, class Handler>
void object_directory<State, Handler>::wait_for_callers(entry& which) {
    runtime_.wait_until(shared_->changed, detail::forever, [&] { return which.in_flight == 0; });
}

// Drops the directory's handle of a stopped unit and waits until the unit
// is gone (its fiber may still hold it for a moment after stop returns):
// until then its name and key are taken, and the next activation would be
// refused. The entry is still `stopping` meanwhile, so nobody starts it.
template <class State, class Handler>
void object_directory<State, Handler>::let_go(unit_type& handle) {
    std::weak_ptr<void> alive = handle.shared_core();
    handle = unit_type{};
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!alive.expired() && std::chrono::steady_clock::now() < deadline)
        boost::this_fiber::sleep_for(std::chrono::microseconds(20));
}

template <class State, class Handler>
bool object_directory<State, Handler>::evict_one() {
    entry* victim = nullptr;
    {
        auto held = shared_->changed.lock();
        for (entry* each = oldest_; each != nullptr; each = each->newer)
            if (each->in_flight == 0) {
                victim = each;
                break;
            }
        if (victim == nullptr) return false;
        victim->now = phase::stopping;
        unlink(*victim);
        ++stats_.evictions;
    }
    stop_entry(*victim, stop_kind::evicted);
    return true;
}

// --- hibernation -------------------------------------------------------------

template <class State, class Handler>
bool object_directory<State, Handler>::stop_object(const std::string& key, stop_kind why) {
    entry* which = nullptr;
    {
        auto held = shared_->changed.lock();
        auto found = entries_.find(key);
        if (found == entries_.end() || found->second.now != phase::active) return false;
        which = &found->second;
        which->now = phase::stopping;
        unlink(*which);
    }
    stop_entry(*which, why);
    return true;
}

// `which` was active (it holds its unit), is stopping and out of the list:
// its unit stops (committing), and its entry goes; whoever waits for it
// starts it again.
template <class State, class Handler>
void object_directory<State, Handler>::stop_entry(entry& which, stop_kind why) {
    // An active entry's unit is named prefix_ + key (the entry keeps no
    // pointer to its key: 16 B of every active object's heap).
    const std::string key = which.handle.name().substr(prefix_.size());
    stop_unit(runtime_, which.handle);
    wait_for_callers(which);
    which.handle.shared_core()->retire(unit_status::stopped_graceful, false);
    let_go(which.handle);
    {
        auto held = shared_->changed.lock();
        // Idle since its last activity, not since it hibernated.
        const duration idle_since = which.last_active;
        erase_entry(key);  // `which` is gone from here on
        ++stats_.hibernations;
        if (spec_.shutdown_after != duration::zero() && spec_.durable != nullptr) {
            hibernated_since_[key] = idle_since;
            hibernated_.emplace_back(key, idle_since);
        }
    }
    shared_->changed.notify_all();
    publish(event_kind::hibernated, key, why == stop_kind::idle ? "idle" : why == stop_kind::evicted ? "evicted" : "terminated");
}

template <class State, class Handler>
std::size_t object_directory<State, Handler>::hibernate_idle() {
    if (spec_.hibernate_after == duration::zero()) return 0;
    std::size_t count = 0;
    for (;;) {
        const duration now = runtime_.clock().now();
        entry* victim = nullptr;
        {
            auto held = shared_->changed.lock();
            for (entry* each = oldest_; each != nullptr; each = each->newer) {
                if (each->last_active + spec_.hibernate_after > now) break;
                if (each->in_flight == 0) {
                    victim = each;
                    break;
                }
            }
            if (victim == nullptr) return count;
            victim->now = phase::stopping;
            unlink(*victim);
        }
        if (victim->handle.stats().queued != 0) {
            // Casts still queued: it is not idle yet.
            {
                auto held = shared_->changed.lock();
                victim->now = phase::active;
                victim->last_active = now;
                link_newest(*victim);
            }
            shared_->changed.notify_all();
            continue;
        }
        stop_entry(*victim, stop_kind::idle);
        ++count;
    }
}

template <class State, class Handler>
std::size_t object_directory<State, Handler>::shut_down_idle() {
    if (spec_.shutdown_after == duration::zero() || spec_.durable == nullptr) return 0;
    std::size_t count = 0;
    for (;;) {
        std::string key;
        {
            auto held = shared_->changed.lock();
            const duration now = runtime_.clock().now();
            if (hibernated_.empty() || hibernated_.front().second + spec_.shutdown_after > now) return count;
            auto [oldest, since] = std::move(hibernated_.front());
            hibernated_.pop_front();
            auto current = hibernated_since_.find(oldest);
            // Woken (and maybe hibernated again, later in the queue) since.
            if (current == hibernated_since_.end() || current->second != since) continue;
            hibernated_since_.erase(current);
            if (entries_.count(oldest) != 0) continue;
            auto at = entries_.try_emplace(oldest).first;  // holds off activations while it moves
            at->second.now = phase::stopping;
            key = std::move(oldest);
        }
        bool moved = false;
        try {
            moved = shut_down(key);
        } catch (const std::exception& failure) {
            detail::log(spdlog::level::err, [&] {
                return "object '" + key + "' of directory '" + spec_.name +
                       "' stays in shared memory: its shutdown to the store failed: " + failure.what();
            });
        }
        {
            auto held = shared_->changed.lock();
            erase_entry(key);
            if (moved) ++stats_.shutdowns;
        }
        shared_->changed.notify_all();
        if (moved) {
            publish(event_kind::shut_down, key);
            ++count;
        }
    }
}

// Its newest committed record goes to the store; once the store holds that
// generation (or a newer one), the state leaves the segment. A kill in
// between leaves it in both: the next activation takes the newest.
template <class State, class Handler>
bool object_directory<State, Handler>::shut_down(const std::string& key) {
    std::optional<record> newest = reads_.from_segment(key);
    if (!newest) return false;
    const std::string stored_key = spec_.store_prefix + prefix_ + key;
    newest->key = stored_key;
    spec_.durable->put_batch({*newest});
    const std::optional<record> kept = spec_.durable->get(stored_key);
    if (!kept || kept->generation < newest->generation)
        throw error(errc::store_failed, "the store did not keep generation " + std::to_string(newest->generation) +
                                            " of '" + stored_key + "'");
    segment_.shared_impl()->remove_key(prefix_ + key);
    return true;
}

template <class State, class Handler>
void object_directory<State, Handler>::terminate_and_delete(const std::string& key) {
    check_object_key(key);
    entry* which = nullptr;
    for (;;) {
        {
            auto held = shared_->changed.lock();
            auto found = entries_.find(key);
            if (found == entries_.end()) {
                auto at = entries_.try_emplace(key).first;  // holds off activations meanwhile
                at->second.now = phase::stopping;
                break;
            }
            if (found->second.now == phase::active) {
                which = &found->second;
                which->now = phase::stopping;
                unlink(*which);
                break;
            }
        }
        runtime_.wait_until(shared_->changed, detail::forever, [&] {
            auto now = entries_.find(key);
            return now == entries_.end() || now->second.now == phase::active;
        });
    }
    try {
        delete_object(key, which);
    } catch (...) {
        // The entry goes either way: the key can be called, or deleted, again
        // (and close() does not wait for it forever).
        {
            auto held = shared_->changed.lock();
            erase_entry(key);
        }
        shared_->changed.notify_all();
        throw;
    }
    {
        auto held = shared_->changed.lock();
        erase_entry(key);
        hibernated_since_.erase(key);
    }
    shared_->changed.notify_all();
    publish(event_kind::forgotten, key);
}

// Stops the object (`which`, if it was active) and deletes its keys: as the
// registry deletes, the state first, the unit's record last, so a kill in
// between leaves a record that says what is left.
template <class State, class Handler>
void object_directory<State, Handler>::delete_object(const std::string& key, entry* which) {
    const std::string unit_name = prefix_ + key;
    if (which != nullptr) {
        stop_unit(runtime_, which->handle);
        wait_for_callers(*which);
        which->handle.shared_core()->retire(unit_status::deleted, true);
        let_go(which->handle);
    }
    auto& impl = *segment_.shared_impl();
    std::vector<std::string> keys{unit_name};
    for (const char* kind : {detail::crash_record_prefix, detail::skipped_record_prefix, detail::unit_record_prefix})
        keys.push_back(detail::registry_key(kind, unit_name));
    for (const std::string& each : keys) {
        if (spec_.durable != nullptr) spec_.durable->remove(spec_.store_prefix + each);
        impl.remove_key(each);
    }
}

} // namespace keepsake

#include "keepsake/objects/detail/directory_alarms-inl.hpp"
