// keepsake/keeper.hpp: the committed state of one key in a segment.
//
// Commit protocol (LMDB's meta pages, with checksums): a key has N >= 2
// slots; a commit writes the slot after the newest valid one, leaving the
// newest untouched, and publishes it by storing its generation last, with
// release ordering. Restore takes the newest slot whose checksum holds. A
// crash at any instant therefore leaves the old or the new state, never a
// mix, and restore says which generation it found.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "keepsake/codec.hpp"
#include "keepsake/detail/atomic.hpp"
#include "keepsake/detail/format.hpp"
#include "keepsake/detail/slots.hpp"
#include "keepsake/error.hpp"
#include "keepsake/log.hpp"
#include "keepsake/segment.hpp"
#include "keepsake/store.hpp"
#include "keepsake/table.hpp"

namespace keepsake {

template <class T>
struct keeper_options {
    // Slots per key (2 to 64). More slots keep more old generations around
    // as fallbacks against damaged memory; two are enough for crash safety.
    std::uint32_t slots = 2;
    // Data bytes per slot when the key is created. 0 means sizeof(T) for a
    // trivially copyable T, else a small start (64 B) that grows with the
    // state: a commit that no longer fits moves the key to larger slots.
    std::uint64_t capacity = 0;
    // Schema version written with each commit and expected on restore.
    std::uint32_t schema_version = state_traits<T>::schema_version;
    // Turns bytes of another type or schema version into a T. Without it,
    // such bytes are a type_mismatch error, never reinterpreted.
    std::function<T(const stored_record&)> upgrade;
};

// What restore found.
struct restore_info {
    std::uint64_t generation = 0;   // the generation now in the caller's hands
    std::uint32_t slot = 0;         // the slot it came from
    std::uint32_t skipped_slots = 0;  // newer or other slots that failed validation
    bool upgraded = false;          // the upgrade hook produced the value
};

template <class T>
struct restored {
    T value;
    restore_info info;
};


namespace detail {
struct shared_options_tag {};
inline constexpr shared_options_tag shared_options{};

// A keeper's side tables: one word while it has none, as most keepers
// (every object's) never do.
class attached_tables {
public:
    using held = std::unique_ptr<table_base>;
    const held* begin() const noexcept { return list_ ? list_->data() : nullptr; }
    const held* end() const noexcept { return list_ ? list_->data() + list_->size() : nullptr; }
    bool empty() const noexcept { return !list_ || list_->empty(); }
    void push_back(held made) {
        if (!list_) list_ = std::make_unique<std::vector<held>>();
        list_->push_back(std::move(made));
    }
    void clear() noexcept { list_.reset(); }

private:
    std::unique_ptr<std::vector<held>> list_;
};
} // namespace detail

template <class T>
class keeper {
    static_assert(!std::is_reference_v<T> && !std::is_const_v<T>, "keeper<T> needs a plain value type");

public:
    // Attaches to `key` in `where`, creating the key's slots if it is new.
    // Throws if the key holds another type or schema version and no upgrade
    // hook is given.
    keeper(const segment& where, std::string key, keeper_options<T> options = {})
        : keeper(detail::shared_options, where, std::move(key),
                 std::make_shared<const keeper_options<T>>(std::move(options))) {}

    // The same, with options shared with others (the units of one spec
    // keep one copy of theirs, not one each).
    keeper(detail::shared_options_tag, const segment& where, std::string key,
           std::shared_ptr<const keeper_options<T>> options)
        : segment_(where.shared_impl()), key_(std::move(key)), options_(std::move(options)) {
        const std::uint64_t capacity = options_->capacity != 0 ? options_->capacity : default_capacity();
        // Refused before attach: attach would create the key with slots
        // this type can never fill.
        if (codec_of<T>() == codec_kind::raw && capacity < sizeof(T))
            throw error(errc::invalid_argument, "keeper_options::capacity " + std::to_string(capacity) +
                                                    " is less than the " + std::to_string(sizeof(T)) +
                                                    " bytes of this state type");
        const auto attached = segment_->attach(key_, detail::entry_kind::state, options_->slots, capacity);
        index_ = attached.index;
        area_ = attached.area;
        try {
            scan_slots();
        } catch (...) {
            segment_->release_entry(index_);
            throw;
        }
    }

    keeper(keeper&& other) noexcept
        : segment_(std::move(other.segment_)), key_(std::move(other.key_)), options_(std::move(other.options_)),
          index_(other.index_), newest_slot_(other.newest_slot_), area_(other.area_),
          highest_generation_(other.highest_generation_), committed_generation_(other.committed_generation_),
          tables_(std::move(other.tables_)) {}

    keeper(const keeper&) = delete;
    keeper& operator=(const keeper&) = delete;
    keeper& operator=(keeper&&) = delete;

    ~keeper() {
        tables_.clear();
        if (segment_) segment_->release_entry(index_);
    }

    // The side table `name` of this keeper (keepsake/table.hpp), attached on
    // first use as it was at the last commit (or the last restore). Its
    // changes are published by this keeper's commits, with the state, in
    // one atomic step. A keeper with tables has two slots, so a damaged
    // newest commit falls back to exactly the one before, tables included.
    template <class Key, class Value, class Hash = std::hash<Key>>
    side_table<Key, Value, Hash>& table(const std::string& name) {
        using table_type = side_table<Key, Value, Hash>;
        for (const auto& held : tables_) {
            if (held->table_name() != name) continue;
            if (auto* typed = dynamic_cast<table_type*>(held.get())) return *typed;
            throw error(errc::type_mismatch, "side table '" + name + "' of key '" + key_ +
                                                 "' is already attached with other key or value types");
        }
        if (options_->slots != 2)
            throw error(errc::invalid_argument, "key '" + key_ + "' has " + std::to_string(options_->slots) +
                                                    " slots; a keeper with side tables has 2 (keeper_options::slots)");
        auto made = std::make_unique<table_type>(segment_, key_, name);
        made->load(committed_generation_);
        table_type& held = *made;
        tables_.push_back(std::move(made));
        return held;
    }

    // Makes `value` the committed state and returns its generation. When it
    // returns, a crash of this process (or of the thread) cannot lose it. A
    // state that no longer fits its slots moves the key to larger ones, in
    // the same atomic step (segment_options::max_size bounds it).
    std::uint64_t commit(const T& value) {
        busy_guard guard(busy_, key_);
        if (!tables_.empty()) return commit_with_tables(value);
        return commit_state(value);
    }

    // commit() at a generation of at least `at_least`. Recovery from a store
    // uses it to seed a new segment at the store's generation, so the
    // exports that follow are newer than what the store holds.
    std::uint64_t commit_at_least(const T& value, std::uint64_t at_least) {
        if (at_least != 0 && highest_generation_ < at_least - 1) highest_generation_ = at_least - 1;
        return commit(value);
    }

    // Recovery from a store record: `value` and the record's side tables
    // (`tables`; none for a record without them) become the committed state
    // in one commit of at least `at_least`. Every table of this key in the
    // segment, attached or not, takes the record's contents (empty when the
    // record does not name it); a crash before the commit leaves all as it was.
    std::uint64_t commit_imported(const T& value, std::uint64_t at_least, const std::vector<detail::table_image>& tables) {
        busy_guard guard(busy_, key_);
        if (at_least != 0 && highest_generation_ < at_least - 1) highest_generation_ = at_least - 1;
        const std::uint64_t generation = next_generation();
        const std::uint64_t before = committed_generation_;
        try {
            for (const std::string& name : table_names(tables)) import_one(name, tables, before, generation);
            commit_state(value);
        } catch (...) {
            for (const auto& held : tables_) held->load(before);
            throw;
        }
        for (const auto& held : tables_) held->load(generation);
        return generation;
    }

    // This key's side tables in the segment, attached here or not.
    std::vector<std::string> stored_table_names() const {
        return segment_->table_names_of(key_);
    }

private:
    std::uint64_t commit_state(const T& value) {
        const std::uint64_t generation = next_generation();
        const std::uint64_t commit_ns = detail::commit_clock_ns();  // for keepsake-inspect; in the checksum
        if (codec_of<T>() == codec_kind::raw && sizeof(T) > area_.capacity)
            return grow_and_commit(value, sizeof(T), generation, commit_ns);
        const std::uint32_t target = (newest_slot_ + 1) % area_.count;
        // Unpublish the target before touching its data; the fence keeps the
        // data stores from being seen ahead of this one.
        detail::unpublish_slot(area_, target);
        const std::size_t size = encode_measured(value, area_.data(target), static_cast<std::size_t>(area_.capacity));
        if (size > area_.capacity) return grow_and_commit(value, size, generation, commit_ns);
        detail::publish_slot(area_, target, words_of(generation, size, commit_ns));
        highest_generation_ = generation;
        committed_generation_ = generation;
        newest_slot_ = static_cast<std::uint16_t>(target);
        return generation;
    }

    // The tables' changes go in first, at the generation the state's slot
    // then publishes: until it does, no reader takes them (they are above
    // the committed generation), and if the commit fails they are cleared.
    std::uint64_t commit_with_tables(const T& value) {
        const std::uint64_t generation = next_generation();
        try {
            for (const auto& held : tables_) held->write_changes(generation);
            commit_state(value);
        } catch (...) {
            for (const auto& held : tables_) held->abort_changes();
            throw;
        }
        for (const auto& held : tables_) held->committed();
        return generation;
    }

public:
    // Puts the newest valid committed state into `out`. Returns nothing (and
    // leaves `out` alone) if no slot holds a valid state. Slots that fail
    // their checksum are damage: the next older one is taken. Bytes that
    // pass it but do not decode as T are another type: errc::decode_failed,
    // naming the key and what is stored, and `out` and the slots untouched.
    std::optional<restore_info> restore_into(T& out) { return restore_older_than(detail::max_generation + 1, out); }

    // restore_into() among the generations below `generation` only: what a
    // rollback takes when the newest state keeps crashing its worker.
    std::optional<restore_info> restore_older_than(std::uint64_t generation, T& out) {
        busy_guard guard(busy_, key_);
        restore_info info;
        detail::slot_cursor cursor{generation, 0};
        detail::slot_snapshot found;
        while (detail::next_newest_slot(area_, cursor, found)) {
            const detail::slot_snapshot* snap = &found;  // restore's order: slot_cursor's
            cursor = detail::slot_cursor::at(found);
            if (!detail::slot_is_valid(area_, *snap)) {
                report_invalid(*snap, "checksum or size check failed");
                ++info.skipped_slots;
                continue;
            }
            info.upgraded = !matches_this_type(*snap);
            if (info.upgraded) out = upgrade(*snap);
            else decode(*snap, out);
            info.generation = snap->generation;
            info.slot = snap->index;
            newest_slot_ = static_cast<std::uint16_t>(snap->index);
            restore_tables(info.generation);
            if (info.skipped_slots != 0)
                detail::log(spdlog::level::warn, [&] {
                    return "key '" + key_ + "': restored generation " + std::to_string(info.generation) +
                           " after skipping " + std::to_string(info.skipped_slots) + " invalid slot(s)";
                });
            return info;
        }
        if (info.skipped_slots != 0)
            detail::log(spdlog::level::err, [&] {
                return "key '" + key_ + "': no valid committed state; " + std::to_string(info.skipped_slots) +
                       " slot(s) failed validation";
            });
        restore_tables(0);
        return std::nullopt;
    }

    // restore_into() for a default-constructible T, returning the value.
    std::optional<restored<T>> restore() {
        static_assert(std::is_default_constructible_v<T>,
                      "keeper<T>::restore() needs a default-constructible T; use restore_into(T&)");
        restored<T> result{T{}, {}};
        auto info = restore_into(result.value);
        if (!info) return std::nullopt;
        result.info = *info;
        return result;
    }

    // The committed slot of `generation` as a store record (its words and a
    // copy of its bytes), if a slot holds it and checks out.
    std::optional<record> committed_record(std::uint64_t generation) const {
        for (std::uint32_t index = 0; index < area_.count; ++index) {
            const detail::slot_snapshot snap = detail::read_slot_header(area_, index);
            if (snap.generation != generation || !detail::slot_is_valid(area_, snap)) continue;
            record copy{key_, snap.generation, snap.schema_version, snap.codec, snap.fingerprint, {}};
            const std::byte* data = area_.data(index);
            copy.bytes.assign(data, data + snap.size);
            return copy;
        }
        return std::nullopt;
    }

    // The newest generation this keeper committed or found (0: none yet).
    std::uint64_t generation() const noexcept { return highest_generation_; }
    const std::string& key() const noexcept { return key_; }
    // Data bytes per slot now (they grow with the state).
    std::uint64_t slot_capacity() const noexcept { return area_.capacity; }
    const keeper_options<T>& options() const noexcept { return *options_; }

private:
    // Catches a second user inside commit/restore of one keeper (re-entry
    // always; another thread almost always). A keeper has one user by
    // contract, so this is a misuse detector, not a lock: a relaxed load and
    // store cost ~1 ns where an exchange costs ~7 ns of a ~20 ns commit.
    class busy_guard {
    public:
        busy_guard(std::atomic<bool>& flag, const std::string& key) : flag_(flag) {
            // Set only when clear: a guard that throws has taken nothing, so
            // it can never leave the flag stuck.
            if (flag_.load(std::memory_order_relaxed))
                throw error(errc::concurrent_use, "keeper '" + key +
                                                      "' was used by two threads at once; a keeper has one "
                                                      "user at a time (give each thread its own key)");
            flag_.store(true, std::memory_order_relaxed);
        }
        ~busy_guard() { flag_.store(false, std::memory_order_release); }
        busy_guard(const busy_guard&) = delete;
        busy_guard& operator=(const busy_guard&) = delete;

    private:
        std::atomic<bool>& flag_;
    };

    std::shared_ptr<detail::segment_impl> segment_;
    std::string key_;
    std::shared_ptr<const keeper_options<T>> options_;  // never null, but in a moved-from keeper
    // The entry, the newest slot and the busy flag share one word: an idle
    // unit holds a keeper. A slot number fits 16 bits (an entry has at most
    // max_slots_per_entry slots, checked when it is read).
    std::uint32_t index_ = 0;               // the key's directory entry
    std::uint16_t newest_slot_ = 0;         // the slot the next commit must not touch
    static_assert(detail::max_slots_per_entry <= 0xffff, "a slot number must fit newest_slot_");
    std::atomic<bool> busy_{false};
    detail::slot_area area_{};
    std::uint64_t highest_generation_ = 0;  // highest seen (valid, or plausibly ours)
    std::uint64_t committed_generation_ = 0;  // of the state in hand: the last commit, or what restore found
    detail::attached_tables tables_;

    std::vector<std::string> table_names(const std::vector<detail::table_image>& tables) const {
        std::vector<std::string> names = stored_table_names();
        for (const detail::table_image& table : tables)
            if (std::find(names.begin(), names.end(), table.name) == names.end()) names.push_back(table.name);
        return names;
    }

    void import_one(const std::string& name, const std::vector<detail::table_image>& tables, std::uint64_t before,
                    std::uint64_t generation) {
        static const detail::table_image empty{};
        const detail::table_image* image = &empty;
        for (const detail::table_image& table : tables)
            if (table.name == name) image = &table;
        for (const auto& held : tables_)
            if (held->table_name() == name) return held->import_image(*image, before, generation);
        // Not attached here: attached for the import only.
        const std::string entry_key = key_ + "::" + name;
        const auto attached = segment_->attach(entry_key, detail::entry_kind::table, detail::initial_table_records,
                                               detail::initial_cereal_capacity);
        try {
            detail::import_table(*segment_, attached.index, attached.area, *image, before, generation);
        } catch (...) {
            segment_->release_entry(attached.index);
            throw;
        }
        segment_->release_entry(attached.index);
    }

    // The tables as of the state restore hands over: only the changes since
    // the last commit undone when that is the generation, else loaded again.
    void restore_tables(std::uint64_t generation) {
        for (const auto& held : tables_) {
            if (generation == committed_generation_) held->revert();
            else held->load(generation);
        }
        committed_generation_ = generation;
    }

    static constexpr std::uint64_t default_capacity() noexcept {
        return codec_of<T>() == codec_kind::raw ? sizeof(T) : detail::initial_cereal_capacity;
    }

    // Commits count up by one; only a damaged slot could have pushed the
    // count to the top (scan_slots keeps those out), so reaching it means
    // 2^62 commits.
    std::uint64_t next_generation() const {
        if (highest_generation_ >= detail::max_generation) throw_generations_exhausted();
        return highest_generation_ + 1;
    }

    detail::slot_snapshot words_of(std::uint64_t generation, std::size_t size, std::uint64_t commit_ns) const {
        detail::slot_snapshot words;
        words.generation = generation;
        words.size = size;
        words.fingerprint = type_fingerprint<T>();
        words.schema_version = options_->schema_version;
        words.codec = static_cast<std::uint32_t>(codec_of<T>());
        words.commit_ns = commit_ns;
        return words;
    }

    // Slots that grow: the state goes into slot 0 of a larger region, the
    // previous commit (when its slot still checks out) into the last one as
    // its fallback, and the key switches to the region in one store. A crash
    // before the switch leaves the previous commit, after it the new one.
    std::uint64_t grow_and_commit(const T& value, std::uint64_t needed, std::uint64_t generation,
                                  std::uint64_t commit_ns) {
        const std::uint64_t capacity =
            codec_of<T>() == codec_kind::raw
                ? std::uint64_t{sizeof(T)}
                : detail::align64(std::max({needed + needed / 2, area_.capacity * 2, detail::initial_cereal_capacity}));
        const detail::slot_area old = area_;
        const detail::slot_snapshot previous = detail::read_slot_header(old, newest_slot_);
        area_ = segment_->move_entry(index_, old.count, capacity, [&](const detail::slot_area& fresh) {
            const std::size_t size = encode(value, fresh.data(0), static_cast<std::size_t>(fresh.capacity));
            detail::publish_slot(fresh, 0, words_of(generation, size, commit_ns));
            copy_fallback(old, previous, fresh, fresh.count - 1);
        });
        highest_generation_ = generation;
        committed_generation_ = generation;
        newest_slot_ = 0;
        return generation;
    }

    // Copies a committed slot into a fresh region (where its tag differs,
    // so its checksum is computed again): only if the copy still matches
    // the checksum it had, so damage is never blessed with a new checksum.
    static void copy_fallback(const detail::slot_area& from, const detail::slot_snapshot& previous,
                              const detail::slot_area& to, std::uint32_t index) {
        if (!detail::slot_is_valid(from, previous) || previous.size > to.capacity) return;
        std::memcpy(to.data(index), from.data(previous.index), static_cast<std::size_t>(previous.size));
        if (detail::slot_checksum(previous.generation, previous.size, previous.fingerprint, previous.schema_version,
                                  previous.codec, to.data(index), previous.commit_ns, previous.tag) != previous.checksum)
            return;
        detail::publish_slot(to, index, previous);
    }

    bool matches_this_type(const detail::slot_snapshot& snap) const {
        return snap.fingerprint == type_fingerprint<T>() && snap.schema_version == options_->schema_version &&
               snap.codec == static_cast<std::uint32_t>(codec_of<T>());
    }

    [[noreturn]] void throw_mismatch(const detail::slot_snapshot& snap) const {
        throw error(errc::type_mismatch,
                    "key '" + key_ + "' holds a state written by another type or schema version (fingerprint " +
                        fingerprint_text(snap.fingerprint) + ", schema " + std::to_string(snap.schema_version) +
                        "; this keeper expects " + fingerprint_text(type_fingerprint<T>()) + ", schema " +
                        std::to_string(options_->schema_version) +
                        "); bump schema_version and give keeper_options::upgrade to convert it, or remove the key");
    }

    [[noreturn]] void throw_generations_exhausted() const {
        throw error(errc::segment_corrupt, "key '" + key_ +
                                               "' has reached the largest generation there is (2^62); delete the "
                                               "key (exporter::forget() while an exporter runs, keepsake::forget() "
                                               "with a store, else segment::remove_key) to start it afresh");
    }

    T upgrade(const detail::slot_snapshot& snap) const {
        if (!options_->upgrade) throw_mismatch(snap);
        stored_record record;
        record.generation = snap.generation;
        record.fingerprint = snap.fingerprint;
        record.schema_version = snap.schema_version;
        record.codec = static_cast<codec_kind>(snap.codec);
        record.data = area_.data(snap.index);
        record.size = static_cast<std::size_t>(snap.size);
        return detail::run_upgrade<T>(options_->upgrade, record, "key '" + key_ + "'", type_fingerprint<T>(),
                                      options_->schema_version);
    }

    // A raw decode cannot fail half-way (the bytes are checked first); a
    // cereal decode can, so it goes through a temporary and `out` is only
    // touched by a complete value.
    void decode(const detail::slot_snapshot& snap, T& out) const {
        const std::byte* data = area_.data(snap.index);
        const auto size = static_cast<std::size_t>(snap.size);
        try {
            if constexpr (codec_of<T>() == codec_kind::raw) {
                decode_into(data, size, out);
            } else {
                T decoded{};
                decode_into(data, size, decoded);
                out = std::move(decoded);
            }
        } catch (const error& failure) {
            if (failure.code() != errc::decode_failed) throw;
            detail::throw_undecodable("key '" + key_ + "'", snap.generation, snap.fingerprint, snap.schema_version,
                                      type_fingerprint<T>(), options_->schema_version, failure.what());
        }
    }

    void report_invalid(const detail::slot_snapshot& snap, const char* why) const {
        detail::log(spdlog::level::err, [&] {
            return "key '" + key_ + "': slot " + std::to_string(snap.index) + " (generation " +
                   std::to_string(snap.generation) + ") is invalid: " + why;
        });
    }

    // On attach: learn the highest generation (so new ones only go up), the
    // newest valid slot (so the next commit spares it), and refuse bytes of
    // another type before a commit could overwrite them. A damaged slot's
    // generation counts only when it is close above the newest valid one (a
    // damaged newest commit, whose number must not be used again); a damaged
    // word far above it would otherwise push every later generation there.
    void scan_slots() {
        std::optional<detail::slot_snapshot> newest_valid;
        std::uint64_t damaged_highest = 0;
        for (std::uint32_t index = 0; index < area_.count; ++index) {
            const detail::slot_snapshot snap = detail::read_slot_header(area_, index);
            if (snap.generation == 0 || snap.generation > detail::max_generation) continue;
            if (!detail::slot_is_valid(area_, snap)) {
                damaged_highest = std::max(damaged_highest, snap.generation);
                continue;
            }
            if (!newest_valid || snap.generation > newest_valid->generation) newest_valid = snap;
        }
        const std::uint64_t valid_highest = newest_valid ? newest_valid->generation : 0;
        highest_generation_ = valid_highest;
        committed_generation_ = valid_highest;
        if (damaged_highest > valid_highest && damaged_highest - valid_highest <= area_.count)
            highest_generation_ = damaged_highest;
        newest_slot_ = static_cast<std::uint16_t>(newest_valid ? newest_valid->index : area_.count - 1);
        if (newest_valid && !matches_this_type(*newest_valid) && !options_->upgrade) throw_mismatch(*newest_valid);
    }
};

} // namespace keepsake
