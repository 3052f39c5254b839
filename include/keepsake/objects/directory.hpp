// keepsake/objects/directory.hpp: objects of one type, addressed by key,
// started when called, hibernated when idle, woken by durable alarms
// (README, "Objects on demand"; DurableObject, DurableServer and Orleans
// grains are the models).
//
// An active object is a unit (a fiber, a mailbox, a keeper) named
// "<directory>/<key>"; a hibernated one is its committed state in the
// segment and nothing else; a shut-down one is its record in the store. The
// directory keeps, per active object, one small entry: who is calling it,
// and when it last served. Its housekeeping fiber hibernates the idle, shuts
// down the long idle and fires alarms.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <queue>
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "keepsake/detail/registry_book.hpp"
#include "keepsake/detail/sparse.hpp"
#include "keepsake/error.hpp"
#include "keepsake/events.hpp"
#include "keepsake/objects/detail/alarm_timers.hpp"
#include "keepsake/objects/detail/object_reads.hpp"
#include "keepsake/objects/directory_spec.hpp"
#include "keepsake/objects/object_context.hpp"
#include "keepsake/objects/object_state.hpp"
#include "keepsake/runtime.hpp"
#include "keepsake/unit.hpp"

namespace keepsake {

template <class State, class Handler = no_handler>
class object_directory final {
    using held_type = object_state<State>;
    using handler_type = detail::object_handler<State, Handler>;
    using unit_type = unit<held_type, handler_type>;
    using spec_type = directory_spec<State, Handler>;

public:
    // Starts the directory's housekeeping on `where` (unless start_paused). Objects start when
    // first called; alarms already held by its objects (in the segment, and
    // in the store for objects that are not in the segment) are loaded at
    // once, and the overdue ones fire promptly.
    object_directory(runtime& where, spec_type spec)
        : runtime_(where), spec_(std::move(spec)), segment_(pick_segment(where, spec_.where)),
          prefix_(spec_.name + "/"), shared_(std::make_shared<shared>(*this)) {
        check_spec();
        runtime_.reserve_key_space(prefix_, this);  // its objects are not held by name in the runtime
        try {
            if (!spec_.start_paused) start_housekeeping();
        } catch (...) {
            runtime_.release_key_space(this);
            throw;
        }
    }

    // Starts the housekeeping fiber (once; the constructor does it unless
    // directory_spec::start_paused).
    void start_housekeeping() {
        {
            auto held = shared_->changed.lock();
            if (housekeeping_started_ || closed_) return;
            housekeeping_started_ = true;
        }
        runtime_.spawn([keep = shared_] { keep->owner->housekeep(); });
    }

    object_directory(const object_directory&) = delete;
    object_directory& operator=(const object_directory&) = delete;

    // Stops the housekeeping, then every active object (each commits as it
    // stops). Destroy it before its runtime.
    ~object_directory() {
        close();
        runtime_.release_key_space(this);
    }

    // Delivers `message` to the object `key`, starting it first if it is
    // not running (from its committed state: shared memory, else the store,
    // else initial). Errors as unit::call, and: overloaded (too many callers
    // wait for it to start), timeout (it did not start within
    // start_timeout), limit_reached (max_active objects are all busy),
    // permanently_crashed (past its crash threshold).
    template <class Message>
    auto call(const std::string& key, Message&& message) {
        lease held = acquire(key);
        return held.object().call(wrap(std::forward<Message>(message)));
    }
    template <class Message>
    auto try_call(const std::string& key, Message&& message) {
        lease held = acquire(key);
        return held.object().try_call(wrap(std::forward<Message>(message)));
    }
    template <class Message>
    void cast(const std::string& key, Message&& message) {
        lease held = acquire(key);
        held.object().cast(wrap(std::forward<Message>(message)));
    }

    // Starts the object if it is not running.
    void ensure_started(const std::string& key) {
        lease held = acquire(key);
        held.object().call([](const held_type&) { return true; });
    }

    // A consistent copy of the object's committed state, without waking it:
    // shared memory, else the store; nothing if neither holds it. Bytes
    // that do not decode throw decode_failed.
    std::optional<State> get_state(const std::string& key) const {
        auto held = reads_.read(key);
        if (!held) return std::nullopt;
        return std::move(held->value);
    }

    // Its committed alarms, without waking it.
    std::vector<alarm_info> alarms(const std::string& key) const {
        auto held = reads_.read(key);
        if (!held) return {};
        return object_context<State>::list_alarms(*held);
    }

    // Alarm changes from outside the object: delivered as messages (they
    // wake it), durable with the commit that follows.
    void schedule_alarm_at(const std::string& key, std::string_view name, duration at) {
        detail::check_alarm_name(name);
        call(key, detail::set_alarm{std::string(name), at.count(), key});
    }
    void schedule_alarm(const std::string& key, std::string_view name, duration delay) {
        schedule_alarm_at(key, name, alarm_clock_now(runtime_.clock()) + delay);
    }
    bool cancel_alarm(const std::string& key, std::string_view name) {
        return call(key, detail::cancel_alarm{std::string(name)});
    }
    void cancel_all_alarms(const std::string& key) { call(key, detail::cancel_alarm{}); }

    object_status lookup(const std::string& key) const {
        {
            auto held = shared_->changed.lock();
            if (entries_.count(key) != 0) return object_status::active;
        }
        return reads_.where_is(key);
    }

    // Every object the directory holds (active, hibernated or shut down),
    // sorted; and how many.
    std::vector<std::string> list() const { return reads_.keys(); }
    std::size_t count() const { return list().size(); }
    // Objects that hold a fiber now (or are getting or giving one back).
    std::size_t active_count() const {
        auto held = shared_->changed.lock();
        return entries_.size();
    }
    // The keys of the objects active now, in no order.
    std::vector<std::string> active_keys() const {
        auto held = shared_->changed.lock();
        std::vector<std::string> keys;
        keys.reserve(entries_.size());
        for (const auto& [key, which] : entries_)
            if (which.now == phase::active) keys.push_back(key);
        return keys;
    }
    directory_stats stats() const {
        auto held = shared_->changed.lock();
        directory_stats now = stats_;
        now.active = entries_.size();
        return now;
    }

    // Hibernates the object now (it commits as it stops). False if it was
    // not active.
    bool terminate(const std::string& key) { return stop_object(key, stop_kind::terminated); }

    // Stops it and deletes everything it left: its state and registry
    // records in the segment, and its record in the store. Its alarms go
    // with its state.
    void terminate_and_delete(const std::string& key);

    // Fires every alarm due now on the calling fiber or thread (tests with a
    // manual clock; the housekeeping does the same by itself). Returns how
    // many handlers ran.
    std::size_t fire_due_alarms() { return fire_due(); }

    // Hibernates every idle object past hibernate_after now, and shuts down
    // the hibernated ones past shutdown_after (the housekeeping does this by
    // itself). Returns how many it hibernated or shut down.
    std::size_t collect_idle() { return hibernate_idle() + shut_down_idle(); }

    const std::string& name() const noexcept { return spec_.name; }
    runtime& where() const noexcept { return runtime_; }
    const segment& in_segment() const noexcept { return segment_; }
    activation_guard* guard() const noexcept { return spec_.guard; }
    store* durable() const noexcept { return spec_.durable; }

private:
    enum class phase : std::uint8_t { starting, active, stopping };
    enum class stop_kind : std::uint8_t { idle, evicted, terminated };

    // One active (or starting, or stopping) object.
    struct entry {
        unit_type handle;
        phase now = phase::starting;
        std::uint32_t in_flight = 0;  // calls and casts between acquire and release
        std::uint32_t waiters = 0;    // callers waiting for it to start or stop
        duration last_active{};       // runtime clock
        entry* older = nullptr;       // the least recently used list (active ones)
        entry* newer = nullptr;
    };

    // What the housekeeping fiber and the objects' handlers share with the
    // directory; outlives it while the fiber ends.
    struct shared final : detail::alarm_sink {
        explicit shared(object_directory& of) : owner(&of) {}
        void alarm_set(std::string_view object_key, std::int64_t due_ns) override {
            if (owner->timers_.add(std::string(object_key), due_ns)) kick();
        }
        const clock& alarm_time() const noexcept override { return owner->runtime_.clock(); }
        std::size_t key_offset() const noexcept override { return owner->prefix_.size(); }
        void kick() {
            {
                auto held = changed.lock();
                kicked = true;
            }
            changed.notify_all();
        }

        object_directory* owner;
        detail::signal changed;  // its lock guards the directory's entries
        bool kicked = false;
        bool stopping = false;
        bool done = false;
    };

    // A call in flight: the object cannot hibernate until it is released.
    class lease {
    public:
        lease(object_directory& owner, entry& held) : owner_(&owner), held_(&held) {}
        lease(lease&& other) noexcept : owner_(other.owner_), held_(std::exchange(other.held_, nullptr)) {}
        lease(const lease&) = delete;
        lease& operator=(const lease&) = delete;
        lease& operator=(lease&&) = delete;
        ~lease() {
            if (held_ != nullptr) owner_->release(*held_);
        }
        unit_type& object() const noexcept { return held_->handle; }

    private:
        object_directory* owner_;
        entry* held_;
    };

    runtime& runtime_;
    spec_type spec_;
    const segment& segment_;
    const std::string prefix_;
    std::shared_ptr<shared> shared_;
    detail::object_reads<State> reads_{segment_, prefix_, spec_.durable, spec_.store_prefix};
    detail::alarm_timers timers_;
    // The segment's unit registry, held for the directory's life: without a
    // holder it would go with the last active object and be made again at
    // the next activation.
    std::shared_ptr<detail::registry_book> registry_ = detail::registry_book::of(segment_.shared_impl());
    // What every object's unit is made from, made once: the objects share
    // it (each keeps a pointer, its name, and no initial state).
    std::shared_ptr<const unit_spec<held_type, handler_type>> unit_spec_ = make_unit_spec();
    // Under shared_->changed's lock:
    std::unordered_map<std::string, entry> entries_;
    entry* oldest_ = nullptr;  // least recently used active object
    entry* newest_ = nullptr;
    std::deque<std::pair<std::string, duration>> hibernated_;  // for shutdown_after, oldest first
    std::unordered_map<std::string, duration> hibernated_since_;  // the current one of each key
    std::set<std::pair<std::string, std::string>> backing_off_;    // alarms waiting for a retry
    directory_stats stats_{};
    bool closed_ = false;
    bool housekeeping_started_ = false;

    static const segment& pick_segment(const runtime& where, const segment* named) {
        const segment* picked = named != nullptr ? named : where.options().default_segment;
        if (picked == nullptr)
            throw error(errc::invalid_argument, "an object directory needs a segment: set directory_spec::where or "
                                                "runtime_options::default_segment");
        return *picked;
    }

    void check_spec() const {
        bool ok = !spec_.name.empty() && spec_.name.size() <= 40;
        for (char c : spec_.name)
            ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                        c == '_' || c == '-');
        if (!ok)
            throw error(errc::invalid_name, "invalid directory name '" + spec_.name +
                                                "': use 1 to 40 letters, digits, '.', '_' or '-'");
        if (spec_.max_waiters == 0)
            throw error(errc::invalid_argument, "directory_spec::max_waiters must be at least 1");
    }

    void check_object_key(const std::string& key) const {
        if (key.empty() || prefix_.size() + key.size() > detail::max_key_length ||
            key.find("::") != std::string::npos)
            throw error(errc::invalid_name, "invalid object key '" + key + "': 1 to " +
                                                std::to_string(detail::max_key_length - prefix_.size()) +
                                                " letters, digits, '.', '_', '-', '/' or ':' (no '::')");
    }

    template <class Message>
    static decltype(auto) wrap(Message&& message) {
        using plain = std::decay_t<Message>;
        if constexpr (std::is_invocable_v<plain&, State&> && !std::is_invocable_v<plain&, held_type&>) {
            // A callable on the object's state: run it on the user's part.
            return [run = std::forward<Message>(message)](held_type& held) mutable { return run(held.value); };
        } else {
            return std::forward<Message>(message);
        }
    }

    // --- activation ------------------------------------------------------
    lease acquire(const std::string& key);
    void release(entry& held);
    entry& start_object(const std::string& key, typename std::unordered_map<std::string, entry>::iterator at);
    unit_type make_unit(const std::string& key);
    std::shared_ptr<const unit_spec<held_type, handler_type>> make_unit_spec() const;
    bool evict_one();
    void let_go(unit_type& handle);
    void wait_for_callers(entry& which);

    void erase_entry(const std::string& key) {  // under shared_->changed's lock
        entries_.erase(key);
        detail::rehash_if_sparse(entries_);  // after a burst of activity
    }
    void link_newest(entry& which) noexcept {
        which.older = newest_;
        which.newer = nullptr;
        (newest_ != nullptr ? newest_->newer : oldest_) = &which;
        newest_ = &which;
    }
    void unlink(entry& which) noexcept {
        (which.older != nullptr ? which.older->newer : oldest_) = which.newer;
        (which.newer != nullptr ? which.newer->older : newest_) = which.older;
        which.older = which.newer = nullptr;
    }

    // --- hibernation -----------------------------------------------------
    bool stop_object(const std::string& key, stop_kind why);
    void stop_entry(entry& which, stop_kind why);
    std::size_t hibernate_idle();
    std::size_t shut_down_idle();
    bool shut_down(const std::string& key);
    void delete_object(const std::string& key, entry* which);

    // --- alarms and the housekeeping fiber --------------------------------
    std::size_t fire_due();
    std::size_t deliver_alarms(const detail::alarm_timers::timer& due, std::int64_t now_ns);
    std::size_t fire_one(const std::string& key, const std::string& alarm, std::int64_t due_ns,
                         std::uint32_t attempt);
    void retry_or_drop(const std::string& key, const std::string& alarm, std::int64_t due_ns, std::uint32_t attempt,
                       const std::string& why);
    void load_alarms();
    void load_alarms_of(const std::string& key);
    void housekeep();
    duration next_wake() const;
    void close();

    void publish(event_kind kind, const std::string& key, std::string_view reason = {}, std::uint64_t instance = 0,
                 duration took = {}) const {
        if (!runtime_.events().any()) return;
        event what;
        what.kind = kind;
        what.supervisor = spec_.name;
        what.child = key;
        what.reason = reason;
        what.instance = instance;
        what.at = runtime_.clock().now();
        what.took = took;
        runtime_.events().publish(what);
    }
};

} // namespace keepsake

#include "keepsake/objects/detail/directory-inl.hpp"
