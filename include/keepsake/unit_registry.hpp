// keepsake/unit_registry.hpp: what a segment knows of the units that keep
// their state in it (README "The unit registry").
//
// Every unit has a record in its segment: its key, type, parent supervisor,
// restart type, status, start count and its last crashes (wall time, kind,
// reason, generation). Records are committed like states, so they survive
// kill -9; an exporter copies them to its store, so they survive a reboot.
// A dynamic supervisor resumes its children from them; poison-state
// protection (crash thresholds) is decided on them; this header reads them
// (info, list) and clears a permanently crashed unit.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "keepsake/detail/registry_book.hpp"
#include "keepsake/detail/unit_record.hpp"
#include "keepsake/error.hpp"
#include "keepsake/restart_policy.hpp"
#include "keepsake/segment.hpp"

namespace keepsake {

struct crash_entry {
    std::uint64_t wall_ns = 0;     // when, ns since the epoch
    crash_kind kind = crash_kind::exception;
    std::uint64_t generation = 0;  // the committed generation then
    std::string reason;            // the exception's text or the signal (cut at 96 bytes)
};

struct unit_info {
    std::string key;
    std::string type;    // its registered type, or empty
    std::string parent;  // its supervisor, or empty for a root unit
    bool dynamic = false;  // a dynamic supervisor's child (resumed by it)
    restart_type restart = restart_type::permanent;
    key_lifecycle lifecycle = key_lifecycle::automatic;
    unit_status status = unit_status::running;
    // Running now: its status says running and the process that owns the
    // segment is alive (for a segment this process owns: it is).
    bool running = false;
    std::uint64_t generation = 0;  // newest committed generation of its state, 0: none
    std::uint64_t commit_ns = 0;   // wall clock of that commit (to the second), 0: unknown
    std::uint64_t starts = 0;      // every start, restarts in place included, all runs
    std::uint64_t crashes = 0;     // every crash recorded, all runs
    std::uint64_t status_ns = 0;   // wall clock of the last change of the record
    std::uint64_t order = 0;       // start order under its supervisor
    // The generation the rollback ladder last skipped (kept under
    // ks:s/<key> for inspection), 0: none.
    std::uint64_t rolled_back_from = 0;
    std::vector<crash_entry> history;    // the last crashes, oldest first (at most 8)
};

// A run of the program that died while units ran (kill -9, power loss, a
// fatal signal), as the next run that started a unit found it. A kill from
// outside is the process's, not each unit's: it is kept here, once, and in
// a unit's crash history only with crash_threshold::count_process_kills
// (a fatal signal is blamed on the unit that ran, in its history too).
struct process_death {
    long pid = 0;                  // the run that died
    std::uint64_t start_time = 0;  // its start, clock ticks after boot (as segment::previous_owner)
    std::uint64_t found_ns = 0;    // when the next run found it, ns since the epoch
    long found_by_pid = 0;         // the run that found it
};

namespace detail {

inline unit_info describe_unit(const registry_book& book, const persisted_unit& record, bool owner_alive) {
    unit_info info;
    info.key.assign(record.key, record.key_length);
    info.type.assign(record.type, record.type_length);
    info.parent.assign(record.parent, record.parent_length);
    info.dynamic = (record.flags & unit_flag_dynamic) != 0;
    info.restart = static_cast<restart_type>(record.restart);
    info.lifecycle = static_cast<key_lifecycle>(record.lifecycle);
    info.status = static_cast<unit_status>(record.status);
    info.running = owner_alive && info.status == unit_status::running;
    info.starts = record.starts;
    info.crashes = record.crashes;
    info.status_ns = record.status_ns;
    info.order = record.order;
    info.rolled_back_from = record.rolled_back_from;
    if (auto view = book.segment()->entry_view_of(info.key)) {
        std::uint64_t best = 0;
        for (std::uint32_t index = 0; index < view->area.count; ++index) {
            const slot_snapshot snap = read_slot_header(view->area, index);
            if (snap.generation > best && slot_is_valid(view->area, snap)) {
                best = snap.generation;
                info.commit_ns = snap.commit_ns;
            }
        }
        info.generation = best;
    }
    if (auto history = book.history(info.key)) {
        for (std::uint32_t step = 0; step < history->count; ++step) {
            // Oldest first: the ring's oldest entry is at `next` once it is full.
            const std::uint32_t index =
                (history->count < crash_history_size ? step : (history->next + step) % crash_history_size);
            const persisted_crash& each = history->entries[index];
            info.history.push_back(crash_entry{each.wall_ns, static_cast<crash_kind>(each.kind & crash_kind_mask), each.generation,
                                               std::string(each.reason, each.reason_length)});
        }
    }
    return info;
}

inline bool owner_alive(const segment& where) {
    const segment_status status = where.status();
    return where.access() == segment_access::owner || status.owner_alive;
}

} // namespace detail

// Calls `visit` for each unit of the segment, one at a time (no list of
// them all is built: a segment may hold millions).
inline void for_each_unit(const segment& where, const std::function<void(const unit_info&)>& visit) {
    auto book = detail::registry_book::of(where.shared_impl());
    const bool alive = detail::owner_alive(where);
    for (const detail::persisted_unit& record : book->records()) visit(detail::describe_unit(*book, record, alive));
}

// Every unit of the segment, in start order under each parent.
inline std::vector<unit_info> list_units(const segment& where) {
    std::vector<unit_info> listed;
    for_each_unit(where, [&](const unit_info& info) { listed.push_back(info); });
    std::sort(listed.begin(), listed.end(), [](const unit_info& a, const unit_info& b) {
        return a.parent != b.parent ? a.parent < b.parent : a.order < b.order;
    });
    return listed;
}

// What the registry says of `key`, or nothing if it has no record.
inline std::optional<unit_info> info(const segment& where, const std::string& key) {
    auto book = detail::registry_book::of(where.shared_impl());
    auto view = where.shared_impl()->entry_view_of(detail::registry_key(detail::unit_record_prefix, key));
    if (!view) return std::nullopt;
    auto record = detail::record_slots<detail::persisted_unit>(view->area).read();
    if (!record) return std::nullopt;
    return detail::describe_unit(*book, *record, detail::owner_alive(where));
}

// The segment's last process deaths (at most 16), oldest first.
inline std::vector<process_death> process_deaths(const segment& where) {
    auto book = detail::registry_book::of(where.shared_impl());
    std::vector<process_death> listed;
    for (const detail::persisted_death& each : book->process_deaths())
        listed.push_back(process_death{static_cast<long>(each.pid), each.start_time, each.found_ns,
                                       static_cast<long>(each.found_by_pid)});
    return listed;
}

// Takes a permanently crashed unit out of that status (its crash history is
// cleared, so its threshold counts from zero): it can be started again, and
// a dynamic supervisor resumes it at the next run. Returns false if the unit
// was not permanently crashed. Needs the owner's handle (in the program,
// even while the unit's supervisor keeps it) or a maintenance handle
// (keepsake-inspect clear, on a segment no program owns).
inline bool clear_crashed(const segment& where, const std::string& key) {
    if (where.access() == segment_access::read_only)
        throw error(errc::invalid_argument, "clear_crashed changes segment '" + where.name() +
                                                "': open it as its owner (keepsake::segment) or for maintenance");
    const auto& impl = where.shared_impl();
    const auto record_view = impl->entry_view_of(detail::registry_key(detail::unit_record_prefix, key));
    if (!record_view) return false;
    if (where.access() == segment_access::maintenance) {  // nobody else writes: the views will do
        detail::record_slots<detail::persisted_unit> record(record_view->area);
        auto found = record.read();
        if (!found || static_cast<unit_status>(found->status) != unit_status::permanently_crashed) return false;
        found->status = static_cast<std::uint32_t>(unit_status::running);
        found->run = 0;
        found->status_ns = detail::wall_clock_ns();
        record.write(*found);
        if (auto history = impl->entry_view_of(detail::registry_key(detail::crash_record_prefix, key)))
            detail::record_slots<detail::persisted_crashes>(history->area).write(detail::persisted_crashes{});
        return true;
    }
    auto book = detail::registry_book::of(impl);
    auto& held = book->attach(key);
    bool cleared = false;
    try {
        book->update(held, [&](detail::persisted_unit& record) {
            if (static_cast<unit_status>(record.status) != unit_status::permanently_crashed) return;
            // Running: resumed at the next run; restart_child starts it now.
            record.status = static_cast<std::uint32_t>(unit_status::running);
            record.run = 0;
            cleared = true;
        });
        if (cleared) book->clear_history(held);
    } catch (...) {
        book->release(held);
        throw;
    }
    book->release(held);
    return cleared;
}

} // namespace keepsake
