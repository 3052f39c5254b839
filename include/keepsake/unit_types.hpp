// keepsake/unit_types.hpp: unit types by name (noex's BehaviorRegistry).
//
// A type is registered once per process: a name and how to make a unit's
// spec from its key. A unit made from a type carries the name into the
// registry of its segment (unit_registry.hpp), so a later run can make it
// again from the key alone: that is how a dynamic supervisor resumes its
// children after kill -9 or a reboot. The type also sets the unit's crash
// threshold (by default DurableServer's 5 crashes in an hour), a circuit
// breaker over all units of the type, and the rollback ladder (opt-in).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "keepsake/detail/registry_book.hpp"
#include "keepsake/detail/type_breaker.hpp"
#include "keepsake/error.hpp"
#include "keepsake/supervisor.hpp"
#include "keepsake/unit_spec.hpp"

namespace keepsake {

struct unit_type_options {
    crash_threshold threshold{};  // for each unit of the type, unless its spec sets its own
    circuit_breaker breaker{};
    // The rollback ladder for each unit of the type, unless its spec sets
    // it (unit_spec::rollback_after); 0: off.
    std::uint32_t rollback_after = 0;
};

namespace detail {

struct unit_type {
    std::string name;
    unit_type_options options;
    std::function<child_spec(const std::string& key)> make;
};

class type_registry {
public:
    static type_registry& instance() {
        static type_registry* const everyone = new type_registry();
        return *everyone;
    }

    void add(std::shared_ptr<unit_type> type) {
        if (type->name.empty() || type->name.size() > max_type_name)
            throw error(errc::invalid_argument, "a unit type's name must be 1 to " + std::to_string(max_type_name) +
                                                    " characters: '" + type->name + "'");
        std::lock_guard<std::mutex> lock(mutex_);
        types_[type->name] = std::move(type);  // registering again replaces (tests, reloads)
    }

    bool remove(const std::string& name) {
        std::lock_guard<std::mutex> lock(mutex_);
        return types_.erase(name) != 0;
    }

    std::shared_ptr<unit_type> find(const std::string& name) const {
        std::lock_guard<std::mutex> lock(mutex_);
        auto found = types_.find(name);
        return found == types_.end() ? nullptr : found->second;
    }

    std::shared_ptr<unit_type> require(const std::string& name) const {
        auto found = find(name);
        if (!found)
            throw error(errc::unknown_type, "no unit type '" + name +
                                                "' is registered in this process; call "
                                                "keepsake::register_unit_type before starting or resuming it");
        return found;
    }

private:
    mutable std::mutex mutex_;
    std::map<std::string, std::shared_ptr<unit_type>> types_;
};

} // namespace detail

// Registers `name`: make(key) returns the spec of the unit for that key (its
// name is set to the key). Registering a name again replaces it.
template <class State, class Handler>
void register_unit_type(const std::string& name, std::function<unit_spec<State, Handler>(const std::string& key)> make,
                        unit_type_options options = {}) {
    auto type = std::make_shared<detail::unit_type>();
    type->name = name;
    type->options = options;
    type->make = [name, make = std::move(make), options](const std::string& key) {
        unit_spec<State, Handler> spec = make(key);
        spec.name = key;
        spec.type = name;
        if (!spec.threshold) spec.threshold = options.threshold;
        if (spec.rollback_after == 0) spec.rollback_after = options.rollback_after;
        return child(std::move(spec));
    };
    detail::type_breakers::instance().set(name, std::make_shared<detail::type_breaker>(name, options.breaker));
    detail::type_registry::instance().add(std::move(type));
}

// The same for a make(key) that is a lambda: the spec type is deduced.
template <class Make>
auto register_unit_type(const std::string& name, Make make, unit_type_options options = {})
    -> decltype(make(std::string()), void()) {
    using spec_type = decltype(make(std::string()));
    register_unit_type(name, std::function<spec_type(const std::string&)>(std::move(make)), options);
}

// The child spec of the unit `key` of type `type` (errc::unknown_type if no
// such type is registered).
inline child_spec child_of_type(const std::string& type, const std::string& key) {
    return detail::type_registry::instance().require(type)->make(key);
}

// Forgets a type: units of it are no longer made or resumed in this process
// (a resume refuses them with a resume_refused event, and keeps their keys).
inline bool unregister_unit_type(const std::string& type) {
    return detail::type_registry::instance().remove(type);
}

inline bool is_registered_type(const std::string& type) {
    return detail::type_registry::instance().find(type) != nullptr;
}

} // namespace keepsake
