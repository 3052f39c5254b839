// keepsake/objects/object_context.hpp: what an object's handler sees beside
// its state (its key, the alarm clock, its alarms), and the handler the
// directory puts around the user's.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "keepsake/clock.hpp"
#include "keepsake/detail/format.hpp"
#include "keepsake/log.hpp"
#include "keepsake/objects/object_state.hpp"
#include "keepsake/unit_context.hpp"

namespace keepsake {

namespace detail {

// What an object's handler tells its directory: an alarm it set, so the
// directory's timer wakes for it. Told before the commit that makes the
// alarm durable: a crash in between leaves the directory a wake-up that
// finds nothing due, never a durable alarm it does not know.
class alarm_sink {
public:
    virtual void alarm_set(std::string_view object_key, std::int64_t due_ns) = 0;
    virtual const clock& alarm_time() const noexcept = 0;
    virtual std::size_t key_offset() const noexcept = 0;  // the directory's prefix in a unit's name

protected:
    ~alarm_sink() = default;
};

// The directory's own messages to an object.
struct alarm_due {
    std::string name;
    std::uint32_t attempt = 0;
};
enum class alarm_outcome : std::uint8_t { fired, not_due, no_handler };
struct set_alarm {
    std::string name;
    std::int64_t due_ns = 0;
    std::string object;  // its key: the handler needs no context (a direct call, no switch)
};
struct cancel_alarm {
    std::string name;  // empty: all
};
struct drop_alarm {  // given up on after its retries: removed if still due at that time
    std::string name;
    std::int64_t due_ns = 0;
};

} // namespace detail

template <class State>
class object_context {
public:
    object_context(object_state<State>& held, unit_context<object_state<State>>& unit, detail::alarm_sink& sink)
        : held_(held), unit_(unit), sink_(sink) {}

    // The object's key in its directory.
    std::string key() const { return unit_.name().substr(sink_.key_offset()); }
    // The alarm clock: wall-clock time since the epoch (a manual runtime
    // clock's own time in tests).
    duration now() const { return alarm_clock_now(sink_.alarm_time()); }

    // Sets alarm `name` (or moves it) to fire at `at` on the alarm clock, or
    // after `delay`. Durable with the commit that follows this message.
    void schedule_alarm_at(std::string_view name, duration at) {
        held_.set_alarm(name, at.count());
        sink_.alarm_set(std::string_view(unit_.name()).substr(sink_.key_offset()), at.count());
    }
    void schedule_alarm(std::string_view name, duration delay) { schedule_alarm_at(name, now() + delay); }
    bool cancel_alarm(std::string_view name) { return held_.cancel_alarm(name); }
    void cancel_all_alarms() { held_.alarms = {}; }
    std::vector<alarm_info> alarms() const { return list_alarms(held_); }

    // As unit_context's: commit now, and stop the object (it hibernates).
    std::uint64_t commit() { return unit_.commit(); }
    void stop_self() { unit_.stop_self(); }
    unit_context<object_state<State>>& unit() noexcept { return unit_; }

    template <class S>
    static std::vector<alarm_info> list_alarms(const object_state<S>& held) {
        std::vector<alarm_info> listed;
        for (const auto& slot : held.alarms)
            if (slot.used()) listed.push_back({std::string(slot.name_view()), duration(slot.due_ns)});
        return listed;
    }

private:
    object_state<State>& held_;
    unit_context<object_state<State>>& unit_;
    detail::alarm_sink& sink_;
};

namespace detail {

template <class M>
inline constexpr bool is_directory_message =
    std::is_same_v<M, alarm_due> || std::is_same_v<M, set_alarm> || std::is_same_v<M, cancel_alarm> ||
    std::is_same_v<M, drop_alarm>;

// The unit handler of an object: the user's handler on the user's state,
// and the directory's alarm messages.
template <class State, class Handler>
struct object_handler {
    using held_type = object_state<State>;
    using context_type = unit_context<held_type>;

    Handler user{};
    std::shared_ptr<alarm_sink> sink;

    template <class M, std::enable_if_t<!is_directory_message<M> && std::is_invocable_v<Handler&, State&, const M&> &&
                                            !std::is_invocable_v<Handler&, State&, const M&, object_context<State>&>,
                                        int> = 0>
    decltype(auto) operator()(held_type& held, const M& message) {
        return user(held.value, message);
    }

    template <class M, std::enable_if_t<!is_directory_message<M> &&
                                            std::is_invocable_v<Handler&, State&, const M&, object_context<State>&>,
                                        int> = 0>
    decltype(auto) operator()(held_type& held, const M& message, context_type& unit) {
        object_context<State> context(held, unit, *sink);
        return user(held.value, message, context);
    }

    alarm_outcome operator()(held_type& held, const alarm_due& due, context_type& unit) {
        const alarm_slot* slot = held.find_alarm(due.name);
        const std::int64_t now = alarm_clock_now(sink->alarm_time()).count();
        // Cancelled, or moved later since the timer was set: not this time.
        if (slot == nullptr || slot->due_ns > now) return alarm_outcome::not_due;
        const std::int64_t fired_due = slot->due_ns;
        alarm_fired fired{due.name, duration(fired_due), due.attempt};
        object_context<State> context(held, unit, *sink);
        if constexpr (std::is_invocable_v<Handler&, State&, const alarm_fired&, object_context<State>&>) {
            user(held.value, fired, context);
        } else if constexpr (std::is_invocable_v<Handler&, State&, const alarm_fired&>) {
            user(held.value, fired);
        } else {
            held.cancel_alarm(due.name);
            return alarm_outcome::no_handler;
        }
        // Removed in the commit that keeps what the handler did, unless the
        // handler set it again.
        const alarm_slot* after = held.find_alarm(due.name);
        if (after != nullptr && after->due_ns == fired_due) held.cancel_alarm(due.name);
        return alarm_outcome::fired;
    }

    bool operator()(held_type& held, const set_alarm& wanted) {
        held.set_alarm(wanted.name, wanted.due_ns);
        sink->alarm_set(wanted.object, wanted.due_ns);
        return true;
    }
    bool operator()(held_type& held, const cancel_alarm& unwanted) {
        if (!unwanted.name.empty()) return held.cancel_alarm(unwanted.name);
        held.alarms = {};
        return true;
    }
    bool operator()(held_type& held, const drop_alarm& given_up) {
        const alarm_slot* slot = held.find_alarm(given_up.name);
        if (slot == nullptr || slot->due_ns != given_up.due_ns) return false;
        return held.cancel_alarm(given_up.name);
    }
};

} // namespace detail

} // namespace keepsake
