// keepsake/detail/registry_book.hpp: this process's view of the unit
// registry of one segment: the records of the units it runs (attached, so
// nobody else in the process writes them), the run it belongs to, and how to
// delete a unit's keys (through an exporter of the segment when one runs, so
// the store forgets them too).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "keepsake/detail/process.hpp"
#include "keepsake/detail/fatal_signals.hpp"
#include "keepsake/detail/unit_record.hpp"
#include "keepsake/detail/sparse.hpp"
#include "keepsake/log.hpp"
#include "keepsake/segment.hpp"
#include "keepsake/store.hpp"

namespace keepsake {

// A unit's crash threshold (poison-state protection): `crashes` crashes
// within `window` (wall clock, across process restarts) make it
// permanently_crashed. 0 crashes: off. A process killed from outside (kill
// -9, power loss) is recorded as process_killed and counted only with
// count_process_kills; a fatal signal while the unit ran always counts.
struct crash_threshold {
    std::uint32_t crashes = 5;
    std::chrono::seconds window = std::chrono::hours(1);
    bool count_process_kills = false;

    static crash_threshold off() { return {0, std::chrono::hours(1), false}; }
};

namespace detail {

// Identifies one run of one process: its pid and start time.
inline std::uint64_t run_id_of(const owner_info& owner) noexcept {
    return mix_words(static_cast<std::uint64_t>(owner.pid), owner.start_time, 0x72756e73u, 0) | 1u;
}

class registry_book {
public:
    explicit registry_book(std::shared_ptr<segment_impl> where) : segment_(std::move(where)) {
        run_ = run_id_of(segment_->owner());  // not status(): it reads /proc, once per book
        if (segment_->previous_owner) previous_run_ = run_id_of(*segment_->previous_owner);
        previous_crashed_ = segment_->outcome == open_outcome::reopened_after_crash;
        record_slots<persisted_unit>::fingerprint_cached();  // not for the first time in a signal handler
    }

    // One book per segment mapping in this process.
    static std::shared_ptr<registry_book> of(const std::shared_ptr<segment_impl>& where) {
        static std::mutex* const guard = new std::mutex();
        static auto* const books = new std::unordered_map<const segment_impl*, std::weak_ptr<registry_book>>();
        std::lock_guard<std::mutex> lock(*guard);
        auto& slot = (*books)[where.get()];
        if (auto alive = slot.lock()) return alive;
        for (auto each = books->begin(); each != books->end();)  // drop the books of closed segments
            each = each->second.expired() && each->first != where.get() ? books->erase(each) : std::next(each);
        auto made = std::make_shared<registry_book>(where);
        slot = made;
        // When this process opens the segment, not with every book: a book
        // goes with the last unit that uses it, and comes back with the next.
        if (!where->fatal_handlers_installed) {
            install_fatal_signal_handlers();
            where->fatal_handlers_installed = true;
        }
        return made;
    }

    std::uint64_t run() const noexcept { return run_; }
    const std::shared_ptr<segment_impl>& segment() const noexcept { return segment_; }

    // Did the process that ran this record die while it ran (the segment
    // was reopened after a crash of the run that last started it)?
    bool died_with_previous_run(const persisted_unit& record) const noexcept {
        return previous_crashed_ && record.run == previous_run_ && record.run != run_;
    }

    // The run before this one died while units ran, and a unit of it was
    // killed with it, not by its own fault (a kill from outside, not
    // counted against a threshold): noted once, in the segment's death log
    // (ks:d), not in each unit's history. A resume after kill -9 then
    // writes no history for its 100 000 units. Another book of this run
    // (made again after the last one went) finds it noted. The log only
    // informs: a segment with no room for it (full, at its max_size) is logged,
    // and the units start all the same.
    void note_process_death() noexcept {
        std::lock_guard<std::mutex> lock(mutex_);
        if (death_noted_ || !previous_crashed_) return;
        death_noted_ = true;  // tried once a run, whatever comes of it
        try {
            write_death_note();
        } catch (const std::exception& failure) {
            try {
                log(spdlog::level::err, [&] {
                    return std::string("segment '") + segment_->name + "': the death of the previous run was not "
                           "noted in its death log (ks:d): " + failure.what();
                });
            } catch (...) {  // out of memory: the note is lost, the units start
            }
        }
    }

private:
    void write_death_note() {
        const owner_info dead = segment_->previous_owner.value_or(owner_info{});
        const auto attached = segment_->attach(process_deaths_key, entry_kind::state, 2, sizeof(persisted_deaths));
        try {
            record_slots<persisted_deaths> log(attached.area);
            persisted_deaths deaths = log.read().value_or(persisted_deaths{});
            const persisted_death& newest = deaths.entries[(deaths.next + process_deaths_kept - 1) % process_deaths_kept];
            if (deaths.count == 0 || newest.pid != dead.pid || newest.start_time != dead.start_time) {
                persisted_death& added = deaths.entries[deaths.next];
                added = persisted_death{wall_clock_ns(), dead.pid, dead.start_time, segment_->owner().pid};
                deaths.next = static_cast<std::uint32_t>((deaths.next + 1) % process_deaths_kept);
                deaths.count = std::min<std::uint32_t>(deaths.count + 1, process_deaths_kept);
                log.write(deaths);
            }
        } catch (...) {
            segment_->release_entry(attached.index);
            throw;
        }
        segment_->release_entry(attached.index);
    }

public:
    // The segment's death log, oldest first.
    std::vector<persisted_death> process_deaths() const {
        std::vector<persisted_death> found;
        auto view = segment_->entry_view_of(process_deaths_key);
        if (!view) return found;
        const auto deaths = record_slots<persisted_deaths>(view->area).read();
        if (!deaths) return found;
        for (std::uint32_t step = 0; step < deaths->count; ++step)
            found.push_back(deaths->entries[deaths->count < process_deaths_kept ? step
                                                                               : (deaths->next + step) % process_deaths_kept]);
        return found;
    }

    // A unit's crash history key while attached, and the caches of what
    // this process last wrote (nobody else writes an attached record or
    // history): a unit's next crashes then write without reading the slots
    // back. On the heap, made at its first crash: most units never crash,
    // and an entry that carried it all inline cost each unit and object
    // 72 B of heap.
    struct crash_history {
        record_slots<persisted_crashes> slots;
        std::uint32_t entry = 0;  // its directory entry
        std::unique_ptr<persisted_crashes> now;
        std::unique_ptr<persisted_unit> record_now;  // the unit's record
    };

    // The record and history writers of one unit, attached while a unit of
    // that key lives in this process. Stable address (signal handlers): a
    // node of entries_, whose key it names (no second copy of it).
    struct entry {
        const std::string* name = nullptr;
        const std::string& key() const noexcept { return *name; }
        record_slots<persisted_unit> record;
        std::uint32_t record_entry = 0;  // its directory entry (attached while the slots are)
        std::uint32_t users = 0;
        std::unique_ptr<crash_history> crashes;  // null while not attached
        persisted_unit* record_now() const noexcept { return crashes ? crashes->record_now.get() : nullptr; }
    };

    // Room for `more` attached units (a resume knows how many come).
    void reserve(std::size_t more) {
        std::lock_guard<std::mutex> lock(mutex_);
        entries_.reserve(entries_.size() + more);
    }

    entry& attach(const std::string& key) {
        std::lock_guard<std::mutex> lock(mutex_);
        auto [at, added] = entries_.try_emplace(key);
        entry& held = at->second;
        if (added) held.name = &at->first;
        ensure_record(held);
        ++held.users;
        return held;
    }

    void release(entry& which) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (--which.users != 0) return;
        let_go(which);
        // By its node: the key it would pass is the node's own.
        if (auto found = entries_.find(which.key()); found != entries_.end()) entries_.erase(found);
        rehash_if_sparse(entries_);
    }

    std::optional<persisted_unit> read(entry& which) {
        std::lock_guard<std::mutex> lock(mutex_);
        ensure_record(which);
        return current_record(which);
    }

    // Applies `change` to the unit's record (a fresh one if it has none) and publishes it.
    template <class Change>
    persisted_unit update(entry& which, Change&& change) {
        std::lock_guard<std::mutex> lock(mutex_);
        ensure_record(which);
        persisted_unit record = current_record(which).value_or(fresh(which.key()));
        change(record);
        record.status_ns = coarse_wall_clock_ns();
        which.record.write(record);
        if (persisted_unit* cached = which.record_now()) *cached = record;
        return record;
    }

    // Appends one crash to the unit's history, then counts it in its record
    // (and marks the record permanently_crashed when it is past
    // `threshold`): under one lock, at one time. Returns whether it is past.
    // `cache`: keep the unit's record and history in memory for its next
    // crashes (a worker's crash); not for a crash counted once at its
    // first start (a resume after kill -9 counts one for every unit).
    bool record_crash(entry& which, crash_kind kind, std::string_view reason, std::uint64_t generation,
                      const crash_threshold& threshold, bool at_start, std::int32_t added_starts = 0,
                      bool cache = true) {
        std::lock_guard<std::mutex> lock(mutex_);
        // One clock read for the entry and both writes: a crash is on the
        // path from a throw to the next answer.
        const std::uint64_t now_ns = coarse_wall_clock_ns();
        const std::uint32_t within =
            append_crash(which, kind, reason, generation, threshold, at_start, now_ns, cache);
        const bool poisoned = threshold.crashes != 0 && within >= threshold.crashes;
        // Changed in place: the cache is what was written.
        persisted_unit& record = held_copy(which.crashes->record_now, cache, scratch_record_, [&] {
            return which.record.read_as_writer().value_or(fresh(which.key()));
        });
        ++record.crashes;
        const std::int64_t starts = static_cast<std::int64_t>(record.starts) + added_starts;
        record.starts = static_cast<std::uint32_t>(starts < 0 ? 0 : starts);
        record.flags &= ~unit_flag_died_here;
        if (poisoned) record.status = static_cast<std::uint32_t>(unit_status::permanently_crashed);
        record.status_ns = now_ns;
        which.record.write(record, 0, now_ns);
        return poisoned;
    }

private:
    // The unit's copy of a record: its cache if it has one, else one made
    // (`cache`) or `local`, each read from the slots by `read`.
    template <class Record, class Read>
    static Record& held_copy(std::unique_ptr<Record>& cached, bool cache, Record& local, Read&& read) {
        if (cached) return *cached;
        if (!cache) return local = read();
        cached = std::make_unique<Record>(read());
        return *cached;
    }

    // Appends one crash to the unit's history (the book's lock held);
    // returns the crashes that count against `threshold` within its window
    // (this one included).
    std::uint32_t append_crash(entry& which, crash_kind kind, std::string_view reason, std::uint64_t generation,
                               const crash_threshold& threshold, bool at_start, std::uint64_t now_ns, bool cache) {
        ensure_record(which);
        if (!which.crashes) attach_crashes(which, registry_key(crash_record_prefix, which.key()));
        crash_history& attached = *which.crashes;
        persisted_crashes& history = held_copy(attached.now, cache, scratch_crashes_, [&] {
            return attached.slots.read().value_or(persisted_crashes{});
        });
        persisted_crash& added = history.entries[history.next];
        added.wall_ns = now_ns;
        added.generation = generation;
        added.kind = static_cast<std::uint32_t>(kind) | (at_start ? crash_at_start_bit : 0u);
        const std::size_t taken = std::min(reason.size(), max_crash_reason);
        std::memset(added.reason, 0, sizeof(added.reason));
        std::memcpy(added.reason, reason.data(), taken);
        added.reason_length = static_cast<std::uint32_t>(taken);
        history.next = static_cast<std::uint32_t>((history.next + 1) % crash_history_size);
        history.count = std::min<std::uint32_t>(history.count + 1, crash_history_size);
        attached.slots.write(history, 0, now_ns);
        return counted(history, threshold, now_ns);
    }

public:

    static std::uint32_t counted(const persisted_crashes& history, const crash_threshold& threshold,
                                 std::uint64_t now_ns) noexcept {
        const auto window = static_cast<std::uint64_t>(std::chrono::nanoseconds(threshold.window).count());
        std::uint32_t within = 0;
        for (std::uint32_t index = 0; index < history.count; ++index) {
            const persisted_crash& each = history.entries[index];
            if (static_cast<crash_kind>(each.kind & crash_kind_mask) == crash_kind::process_killed &&
                !threshold.count_process_kills)
                continue;
            // A time ahead of now (a clock set back, another host's record) is not "within".
            if (each.wall_ns <= now_ns && now_ns - each.wall_ns <= window) ++within;
        }
        return within;
    }

    // Forgets the crash history (clear_crashed).
    void clear_history(entry& which) {
        std::lock_guard<std::mutex> lock(mutex_);
        const std::string key = registry_key(crash_record_prefix, which.key());
        if (!which.crashes && segment_->entry_view_of(key)) attach_crashes(which, key);
        if (!which.crashes) return;
        which.crashes->slots.write(persisted_crashes{});
        which.crashes->now.reset();
    }

    // Removes the unit's record and history keys and its state key (which
    // nobody may hold now): through the segment's exporter when one runs.
    // The entry stays (detached) for whoever holds it: a later start
    // attaches again. The record says `deleted` first and goes last, so a
    // kill in between leaves a record the next resume finishes deleting;
    // the store is done outside the book's lock (it may wait for a pass).
    void remove_unit(entry& which, const std::string& state_key) {
        std::function<bool(const std::string&)> forget;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            ensure_record(which);
            which.record.write(with_status(which, unit_status::deleted));
            let_go(which);
            which.record = {};
            which.crashes.reset();
            forget = forgetter_;
        }
        for (const std::string& key : {state_key, registry_key(crash_record_prefix, which.key()),
                                        registry_key(skipped_record_prefix, which.key()),
                                        registry_key(unit_record_prefix, which.key())}) {
            if (forget) forget(key);
            else segment_->remove_key(key);
        }
    }

    // Every unit record of the segment that checks out, as found now: one
    // a unit (the record under its own key).
    std::vector<persisted_unit> records() const {
        std::vector<persisted_unit> found;
        const std::string prefix = unit_record_prefix;
        for (const auto& view : segment_->entry_views()) {
            if (view.kind != entry_kind::state || !has_prefix(view.key, prefix)) continue;
            auto record = record_slots<persisted_unit>(view.area).read();
            // One filed under another key's name (damage, a forger) is not
            // that unit's: each unit is then listed once, as its key is.
            if (record && registry_key(unit_record_prefix, std::string(record->key, record->key_length)) == view.key)
                found.push_back(*record);
        }
        return found;
    }

    // The crash history of `key`, if it has one.
    std::optional<persisted_crashes> history(const std::string& key) const {
        auto view = segment_->entry_view_of(registry_key(crash_record_prefix, key));
        if (!view) return std::nullopt;
        return record_slots<persisted_crashes>(view->area).read();
    }

    // One unit's record and history from `from` (after a reboot), where the
    // segment holds no valid one. Errors of the store are the caller's.
    // A segment that holds the unit's record holds its history too (they
    // are made in the segment and removed together): only a segment without
    // the record (a reboot) asks the store, so an object woken from the
    // store after its shutdown reads one record there, not three.
    // The history goes in first (see import_unit_into).
    void import_unit_from(store& from, const std::string& prefix, const std::string& key) {
        if (holds_valid(registry_key(unit_record_prefix, key), unit_record_prefix)) return;
        for (const char* kind : {crash_record_prefix, unit_record_prefix}) {
            const std::string registry = registry_key(kind, key);
            if (holds_valid(registry, kind)) continue;
            auto got = from.get(prefix + registry);
            if (!got) continue;
            if (kind == unit_record_prefix) import_one<persisted_unit>(registry, *got);
            else import_one<persisted_crashes>(registry, *got);
        }
    }

    // The same for a unit that attached its record here (`which`): the
    // segment's record is read through the slots the unit holds (no second
    // lookup), and the store's is written into them. The store is asked for
    // the record first (a new unit's start asks once, and finds nothing);
    // the history goes into the segment first: a kill between the two
    // writes leaves no record, so the next start imports again, rather than
    // a record whose history was never fetched.
    void import_unit_into(entry& which, store& from, const std::string& prefix) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            ensure_record(which);
            if (current_record(which)) return;
        }
        const std::string unit = registry_key(unit_record_prefix, which.key());
        auto got = from.get(prefix + unit);
        if (!got) return;
        const auto value = stored_as<persisted_unit>(*got, unit);
        if (!value) return;
        const std::string history = registry_key(crash_record_prefix, which.key());
        if (!holds_valid(history, crash_record_prefix))
            if (auto past = from.get(prefix + history)) import_one<persisted_crashes>(history, *past);
        std::lock_guard<std::mutex> lock(mutex_);
        ensure_record(which);
        which.record.write(*value, got->generation + 1);
        if (persisted_unit* cached = which.record_now()) *cached = *value;
    }

    // After a reboot: the registry records (and histories) an exporter put
    // in `from` under `prefix` that the segment lacks, written one
    // generation above the store's so the next export goes on from there.
    // Returns how many records it imported.
    std::size_t import_from(store& from, const std::string& prefix) {
        std::size_t imported = 0;
        for (const char* kind : {unit_record_prefix, crash_record_prefix}) {
            for (const std::string& stored : from.list(prefix + kind)) {
                const std::string key = stored.substr(prefix.size());
                if (holds_valid(key, kind)) continue;  // an empty key (an import a kill cut short) is imported over
                auto got = from.get(stored);
                if (!got) continue;
                if (kind == unit_record_prefix) imported += import_one<persisted_unit>(key, *got);
                else import_one<persisted_crashes>(key, *got);
            }
        }
        return imported;
    }

    // Keeps a copy of a state the rollback ladder skips under ks:s/<key>,
    // with its words, so keepsake-inspect dumps it as it dumps a state.
    void keep_skipped(const record& skipped) {
        std::lock_guard<std::mutex> lock(mutex_);
        const std::string key = registry_key(skipped_record_prefix, skipped.key);
        segment_->remove_key(key);  // the copy of an earlier rollback
        const auto attached = segment_->attach(key, entry_kind::state, 2, std::max<std::uint64_t>(skipped.bytes.size(), 1));
        const slot_area area = attached.area;
        unpublish_slot(area, 0);
        if (!skipped.bytes.empty()) std::memcpy(area.data(0), skipped.bytes.data(), skipped.bytes.size());
        slot_snapshot words;
        words.generation = skipped.generation;
        words.size = skipped.bytes.size();
        words.fingerprint = skipped.fingerprint;
        words.schema_version = skipped.schema_version;
        words.codec = skipped.codec;
        words.commit_ns = commit_clock_ns();
        publish_slot(area, 0, words);
        segment_->release_entry(attached.index);
    }

    // An exporter of this segment deletes keys from its store too (until
    // it calls clear_forgetter with the id this returns).
    std::uint64_t set_forgetter(std::function<bool(const std::string&)> forget) {
        std::lock_guard<std::mutex> lock(mutex_);
        forgetter_ = std::move(forget);
        return ++forgetter_id_;
    }
    void clear_forgetter(std::uint64_t id) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (id == forgetter_id_) forgetter_ = nullptr;
    }

    // A record as the registry keeps it before its first write.
    static persisted_unit fresh(const std::string& key) {
        persisted_unit record{};
        record.status = static_cast<std::uint32_t>(unit_status::running);
        copy_text(record.key, record.key_length, max_key_length, key);
        return record;
    }

private:
    bool holds_valid(const std::string& key, const char* kind) const {
        auto view = segment_->entry_view_of(key);
        if (!view) return false;
        if (kind == unit_record_prefix) return record_slots<persisted_unit>(view->area).read().has_value();
        return record_slots<persisted_crashes>(view->area).read().has_value();
    }

    // A store's record as a Record to file under `key`, or nothing: a unit's
    // record must describe the key it is filed under.
    template <class Record>
    static std::optional<Record> stored_as(const record& got, const std::string& key) {
        auto value = record_slots<Record>::from_bytes(got.fingerprint, got.codec, got.bytes.data(), got.bytes.size());
        if constexpr (std::is_same_v<Record, persisted_unit>) {
            if (value && registry_key(unit_record_prefix, std::string(value->key, value->key_length)) != key)
                return std::nullopt;
        }
        return value;
    }

    template <class Record>
    std::size_t import_one(const std::string& key, const record& got) {
        const auto value = stored_as<Record>(got, key);
        if (!value) return 0;
        std::lock_guard<std::mutex> lock(mutex_);
        const auto attached = segment_->attach(key, entry_kind::state, 2, sizeof(Record));
        record_slots<Record>(attached.area).write(*value, got.generation + 1);
        segment_->release_entry(attached.index);
        return 1;
    }

    std::shared_ptr<segment_impl> segment_;
    mutable std::mutex mutex_;
    // Under mutex_: where a crash not cached (record_crash) reads the
    // unit's record and history, instead of the fiber's stack (a resume
    // counts one for every unit, each on a fresh stack).
    persisted_unit scratch_record_{};
    persisted_crashes scratch_crashes_{};
    std::unordered_map<std::string, entry> entries_;
    std::function<bool(const std::string&)> forgetter_;
    std::uint64_t forgetter_id_ = 0;
    std::uint64_t run_ = 0;
    std::uint64_t previous_run_ = 0;
    bool previous_crashed_ = false;
    bool death_noted_ = false;  // under mutex_: note_process_death tried this run's note

    persisted_unit with_status(entry& which, unit_status status) const {
        persisted_unit record = which.record.read().value_or(fresh(which.key()));
        record.status = static_cast<std::uint32_t>(status);
        record.status_ns = coarse_wall_clock_ns();
        return record;
    }

    // The record as this process last wrote it, or as its slots hold it.
    std::optional<persisted_unit> current_record(entry& which) const {
        if (const persisted_unit* cached = which.record_now()) return *cached;
        return which.record.read_as_writer();
    }

    void ensure_record(entry& which) {
        if (which.record.attached()) return;
        if (which.crashes) which.crashes->record_now.reset();
        const auto attached =
            segment_->attach(registry_key(unit_record_prefix, which.key()), entry_kind::state, 2, sizeof(persisted_unit));
        which.record = record_slots<persisted_unit>(attached.area);
        which.record_entry = attached.index;
    }

    void attach_crashes(entry& which, const std::string& key) {
        auto history = std::make_unique<crash_history>();  // first: nothing throws once attached
        const auto attached = segment_->attach(key, entry_kind::state, 2, sizeof(persisted_crashes));
        history->slots = record_slots<persisted_crashes>(attached.area);
        history->entry = attached.index;
        which.crashes = std::move(history);
    }

    void let_go(entry& which) {
        if (which.record.attached()) segment_->release_entry(which.record_entry);
        if (which.crashes) segment_->release_entry(which.crashes->entry);
    }

};

} // namespace detail
} // namespace keepsake
