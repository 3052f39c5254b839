// keepsake/objects/object_state.hpp: what an object keeps in its slots: the
// user's state and its alarms, committed together.
//
// An object's alarms live beside its state in one committed value, so a
// commit changes both or neither: an alarm the handler scheduled is durable
// exactly when the state change that scheduled it is, it travels with the
// exported record to the store, and an alarm that fired is removed by the
// same commit that keeps what its handler did (so, short of a crash inside
// that handler, it fires once; a crash replays it: at least once).
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <cereal/cereal.hpp>
#include <cereal/types/array.hpp>

#include "keepsake/clock.hpp"
#include "keepsake/codec.hpp"
#include "keepsake/error.hpp"

namespace keepsake {

// Named alarms an object may hold at once, and the longest name.
inline constexpr std::size_t max_object_alarms = 8;
inline constexpr std::size_t max_alarm_name = 23;

// What an object's handler gets when an alarm is due.
struct alarm_fired {
    std::string name;
    duration due{};            // when it was due, on the alarm clock (object_context::now)
    std::uint32_t attempt = 0;  // 0 the first delivery; n the n-th retry after a crash
};

// An alarm as listed.
struct alarm_info {
    std::string name;
    duration due{};
};

// The time alarms are kept in: wall-clock ns since the epoch with the real
// clock (so a due time survives a reboot), the manual clock's own time with
// a manual clock (so tests move it by hand).
inline duration alarm_clock_now(const clock& time) {
    if (time.is_manual()) return time.now();
    return std::chrono::duration_cast<duration>(std::chrono::system_clock::now().time_since_epoch());
}

namespace detail {

struct alarm_slot {
    char name[max_alarm_name + 1];  // NUL-terminated; empty: the slot is free
    std::int64_t due_ns;

    bool used() const noexcept { return name[0] != '\0'; }
    std::string_view name_view() const noexcept { return std::string_view(name, std::strlen(name)); }

    template <class Archive>
    void serialize(Archive& archive) {
        archive(cereal::binary_data(name, sizeof(name)), due_ns);
    }
};

using alarm_table = std::array<alarm_slot, max_object_alarms>;

// Alarms read back from bytes someone else may have made: names must be
// NUL-terminated and the free slots zero.
inline bool alarms_valid(const alarm_table& alarms) noexcept {
    for (const auto& slot : alarms) {
        if (std::memchr(slot.name, '\0', sizeof(slot.name)) == nullptr) return false;
        if (!slot.used() && slot.due_ns != 0) return false;
    }
    return true;
}

inline void check_alarm_name(std::string_view name) {
    if (name.empty() || name.size() > max_alarm_name || name.find('\0') != std::string_view::npos)
        throw error(errc::invalid_argument, "an alarm's name must be 1 to " + std::to_string(max_alarm_name) +
                                                " characters without NUL: '" + std::string(name) + "'");
}

} // namespace detail

template <class State>
struct object_state {
    State value{};
    detail::alarm_table alarms{};

    detail::alarm_slot* find_alarm(std::string_view name) noexcept {
        for (auto& slot : alarms)
            if (slot.used() && slot.name_view() == name) return &slot;
        return nullptr;
    }
    const detail::alarm_slot* find_alarm(std::string_view name) const noexcept {
        return const_cast<object_state*>(this)->find_alarm(name);
    }

    // Sets (or moves) alarm `name` to `due_ns`. Throws limit_reached when
    // all slots hold other alarms.
    void set_alarm(std::string_view name, std::int64_t due_ns) {
        detail::check_alarm_name(name);
        detail::alarm_slot* slot = find_alarm(name);
        for (auto& each : alarms)
            if (slot == nullptr && !each.used()) slot = &each;
        if (slot == nullptr)
            throw error(errc::limit_reached, "an object holds at most " + std::to_string(max_object_alarms) +
                                                 " alarms; cancel one before scheduling '" + std::string(name) + "'");
        std::memset(slot->name, 0, sizeof(slot->name));
        std::memcpy(slot->name, name.data(), name.size());
        slot->due_ns = due_ns;
    }

    bool cancel_alarm(std::string_view name) noexcept {
        detail::alarm_slot* slot = find_alarm(name);
        if (slot == nullptr) return false;
        *slot = detail::alarm_slot{};
        return true;
    }

    template <class Archive>
    void save(Archive& archive) const {
        archive(value, alarms);
    }
    template <class Archive>
    void load(Archive& archive) {
        archive(value, alarms);
        if (!detail::alarms_valid(alarms))
            throw error(errc::decode_failed, "an object's alarm table holds a name without its end or a free "
                                             "slot that is not empty");
    }
};

// An object's committed value is named after its state, and takes its
// schema version: bump State's to change either.
template <class State>
struct state_traits<object_state<State>> {
    static constexpr std::uint32_t schema_version = state_traits<State>::schema_version;
    static std::string type_name() { return "keepsake::object_state<" + state_traits<State>::type_name() + ">"; }
    static bool check_bytes(const std::byte* data, std::size_t size) {
        if (size != sizeof(object_state<State>)) return false;
        // Where the members sit (offsetof needs a standard-layout State).
        static const std::pair<std::size_t, std::size_t> offsets = [] {
            const object_state<State> probe{};
            const auto* base = reinterpret_cast<const std::byte*>(&probe);
            return std::make_pair(static_cast<std::size_t>(reinterpret_cast<const std::byte*>(&probe.value) - base),
                                  static_cast<std::size_t>(reinterpret_cast<const std::byte*>(&probe.alarms) - base));
        }();
        detail::alarm_table alarms;
        std::memcpy(static_cast<void*>(&alarms), data + offsets.second, sizeof(alarms));
        if (!detail::alarms_valid(alarms)) return false;
        if constexpr (detail::declares_check_bytes<state_traits<State>>::value)
            return state_traits<State>::check_bytes(data + offsets.first, sizeof(State));
        return true;
    }
};

} // namespace keepsake
