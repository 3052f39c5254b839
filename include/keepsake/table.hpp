// keepsake/table.hpp: side tables, committed atomically with a keeper's
// state.
//
// A keeper (or a unit, through its context) may own named tables: keyed
// collections such as a map of entity id to struct, beside its state, as
// Peeper keeps a worker's ETS tables with its state. One commit publishes
// the state and every changed item of every table together: after any
// crash, restore sees all of one commit or all of the one before. A commit
// writes only the items that changed (detail/table_slots.hpp), so changing
// 1 of 10 000 entries costs about one entry. Tables grow as slots do.
#pragma once

#include <cstddef>
#include <algorithm>
#include <cstdint>
#include <optional>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "keepsake/codec.hpp"
#include "keepsake/detail/group_record.hpp"
#include "keepsake/detail/table_slots.hpp"
#include "keepsake/error.hpp"
#include "keepsake/segment.hpp"

namespace keepsake {

namespace detail {

inline constexpr std::uint32_t initial_table_records = 64;
inline constexpr std::uint32_t no_record = ~std::uint32_t{0};

// What a keeper asks of each of its tables around a commit and a restore.
class table_base {
public:
    virtual ~table_base() = default;
    virtual const std::string& table_name() const noexcept = 0;
    // Writes every change since the last commit at `generation` (not yet
    // visible: the keeper's state slot publishes it afterwards).
    virtual void write_changes(std::uint64_t generation) = 0;
    // The commit failed before it was published: clears what was written.
    virtual void abort_changes() noexcept = 0;
    virtual void committed() noexcept = 0;
    // The table as of committed generation `generation`; slots above it
    // (a commit a crash cut short) are cleared.
    virtual void load(std::uint64_t generation) = 0;
    // Drops the changes made since the last commit (a restart).
    virtual void revert() = 0;
    virtual bool has_changes() const noexcept = 0;
    // Recovery from a store: makes `image` the table's contents at
    // `generation` (published by the keeper's state commit that follows);
    // until then the table stays as it was at `committed`.
    virtual void import_image(const table_image& image, std::uint64_t committed, std::uint64_t generation) = 0;
};

// The import behind table_base::import_image, on a table entry's bytes
// alone (a table nobody has attached is imported too). The new region holds
// every item committed at or below `committed`, each with an erase at
// `generation` beside it, and the image's items at `generation`: before the
// state publishes `generation` a reader sees the old table, after it the new.
inline slot_area import_table(segment_impl& where, std::uint32_t index, const slot_area& area,
                              const table_image& image, std::uint64_t committed, std::uint64_t generation) {
    std::vector<std::uint32_t> carried;
    std::uint64_t capacity = area.capacity;
    for (std::uint32_t record = 0; record < area.count / 2; ++record) {
        int chosen = -1;
        item_snapshot best;
        for (std::uint32_t side = 0; side < 2; ++side) {
            const item_snapshot found = read_item(area, 2 * record + side);
            if (!found.valid || found.words.generation > committed) continue;
            if (chosen < 0 || found.words.generation > best.words.generation) {
                chosen = static_cast<int>(side);
                best = found;
            }
        }
        if (chosen >= 0 && !best.erased()) carried.push_back(2 * record + static_cast<std::uint32_t>(chosen));
    }
    for (const item_image& item : image.items) capacity = std::max<std::uint64_t>(capacity, item.bytes.size());
    std::uint32_t records = initial_table_records;
    while (records < carried.size() + image.items.size()) records *= 2;
    return where.move_entry(index, records, align64(capacity), [&](const slot_area& fresh) {
        std::uint32_t record = 0;
        for (std::uint32_t slot : carried) {
            copy_item(area, slot, fresh, 2 * record);
            const item_snapshot old = read_item(fresh, 2 * record);
            if (old.valid) {
                std::memcpy(fresh.data(2 * record + 1), fresh.data(2 * record), old.key_length());
                slot_snapshot erased = old.words;
                erased.generation = generation;
                erased.size = old.key_length();
                publish_item(fresh, 2 * record + 1, erased, old.key_length() | item_erased);
            }
            ++record;
        }
        for (const item_image& item : image.items) {
            std::memcpy(fresh.data(2 * record), item.bytes.data(), item.bytes.size());
            slot_snapshot words;
            words.generation = generation;
            words.size = item.bytes.size();
            words.fingerprint = image.fingerprint;
            words.schema_version = image.schema_version;
            words.codec = image.codec;
            publish_item(fresh, 2 * record, words, item.key_length);
            ++record;
        }
    });
}


} // namespace detail

template <class Key, class Value, class Hash = std::hash<Key>>
class side_table final : public detail::table_base {
    static_assert(std::is_default_constructible_v<Key> && std::is_default_constructible_v<Value>,
                  "a side table's Key and Value must be default-constructible (they are decoded into)");

public:
    using key_type = Key;
    using mapped_type = Value;

    // Made by keeper::table(); `owner_key` names the keeper whose commits
    // publish this table.
    side_table(std::shared_ptr<detail::segment_impl> where, const std::string& owner_key, std::string name)
        : segment_(std::move(where)), name_(std::move(name)), entry_key_(owner_key + "::" + name_) {
        if (name_.empty() || name_.find(':') != std::string::npos)
            throw error(errc::invalid_name, "side table name '" + name_ + "' must be non-empty and hold no ':' "
                                            "(it is stored as '<key>::<name>')");
        const auto attached = segment_->attach(entry_key_, detail::entry_kind::table, detail::initial_table_records,
                                               detail::initial_cereal_capacity);
        index_ = attached.index;
        area_ = attached.area;
    }
    ~side_table() override { segment_->release_entry(index_); }
    side_table(const side_table&) = delete;
    side_table& operator=(const side_table&) = delete;

    // --- reading the live contents (committed, plus this commit's changes)
    const Value* find(const Key& key) const {
        const auto found = items_.find(key);
        return found == items_.end() || found->second.erased ? nullptr : &found->second.value;
    }
    bool contains(const Key& key) const { return find(key) != nullptr; }
    std::size_t size() const noexcept { return live_; }
    bool empty() const noexcept { return live_ == 0; }

    // Calls visit(key, value) for every item, in no particular order.
    template <class Visit>
    void for_each(Visit&& visit) const {
        for (const auto& each : items_)
            if (!each.second.erased) visit(each.first, each.second.value);
    }

    // --- changing it (published by the owner's next commit) ---------------
    void put(const Key& key, Value value) {
        auto [at, inserted] = items_.try_emplace(key);
        item& target = at->second;
        if (inserted || target.erased) ++live_;
        target.value = std::move(value);
        target.erased = false;
        mark(at);
    }

    // The item to change in place (marked changed), or null.
    Value* find_for_update(const Key& key) {
        const auto found = items_.find(key);
        if (found == items_.end() || found->second.erased) return nullptr;
        mark(found);
        return &found->second.value;
    }

    bool erase(const Key& key) {
        const auto found = items_.find(key);
        if (found == items_.end() || found->second.erased) return false;
        found->second.erased = true;
        found->second.value = Value{};
        --live_;
        mark(found);
        return true;
    }

    const std::string& table_name() const noexcept override { return name_; }
    bool has_changes() const noexcept override { return !changed_.empty(); }
    // Bytes per item record slot now (they grow with the items).
    std::uint64_t item_capacity() const noexcept { return area_.capacity; }

    // --- the owner's side --------------------------------------------------
    void write_changes(std::uint64_t generation) override {
        written_.clear();
        for (auto each : changed_) {
            item& target = each->second;
            if (target.record == detail::no_record) {
                if (target.erased) continue;  // added and erased since the last commit
                target.record = take_record();
                target.new_record = true;
            }
            const std::uint32_t slot = 2 * target.record + (1u - records_[target.record].newest);
            write_item(each->first, target, slot, generation);
            written_.push_back(slot);
        }
    }

    void abort_changes() noexcept override {
        for (std::uint32_t slot : written_) detail::unpublish_slot(area_, slot);
        written_.clear();
        for (auto each : changed_) {
            item& target = each->second;
            if (!target.new_record) continue;
            records_[target.record].used = false;
            free_records_.push_back(target.record);
            target.record = detail::no_record;
            target.new_record = false;
        }
    }

    void committed() noexcept override {
        for (auto each : changed_) {
            item& target = each->second;
            target.changed = false;
            target.new_record = false;
            if (target.record == detail::no_record) {  // never written: added and erased before a commit
                items_.erase(each);
                continue;
            }
            records_[target.record].newest ^= 1u;
            if (target.erased) {
                records_[target.record].used = false;
                free_records_.push_back(target.record);
                items_.erase(each);
            }
        }
        changed_.clear();
        written_.clear();
    }

    void load(std::uint64_t generation) override {
        items_.clear();
        changed_.clear();
        written_.clear();
        free_records_.clear();
        live_ = 0;
        const std::uint32_t count = records();
        records_.assign(count, record_state{});
        for (std::uint32_t record = count; record-- > 0;) load_record(record, generation);
    }

    void revert() override {
        std::vector<typename items_type::iterator> reverting;
        reverting.swap(changed_);
        for (auto each : reverting) {
            item& target = each->second;
            target.changed = false;
            if (target.record == detail::no_record || target.new_record) {
                if (target.new_record) {
                    records_[target.record].used = false;
                    free_records_.push_back(target.record);
                }
                if (!target.erased) --live_;
                items_.erase(each);
                continue;
            }
            const bool was_erased = target.erased;
            decode_item(2 * target.record + records_[target.record].newest, each->first, target.value);
            target.erased = false;
            if (was_erased) ++live_;
        }
    }

    void import_image(const detail::table_image& image, std::uint64_t committed, std::uint64_t generation) override {
        area_ = detail::import_table(*segment_, index_, area_, image, committed, generation);
    }

private:
    struct item {
        Value value{};
        std::uint32_t record = detail::no_record;  // where its committed versions are
        bool erased = false;                       // erased since the last commit
        bool changed = false;
        bool new_record = false;                   // taken by this commit
    };
    using items_type = std::unordered_map<Key, item, Hash>;

    struct record_state {
        std::uint32_t newest = 1;  // the slot (0/1) of its newest committed version; the next write goes to the other
        bool used = false;
    };

    std::shared_ptr<detail::segment_impl> segment_;
    std::string name_;
    std::string entry_key_;
    std::uint32_t index_ = 0;
    detail::slot_area area_{};
    items_type items_;
    std::size_t live_ = 0;
    std::vector<typename items_type::iterator> changed_;  // node iterators stay valid across rehashes
    std::vector<std::uint32_t> written_;                  // slots written by the commit under way
    std::vector<record_state> records_;
    std::vector<std::uint32_t> free_records_;

    static std::uint64_t fingerprint() {
        static const std::uint64_t words =
            detail::mix_words(type_fingerprint<Key>(), type_fingerprint<Value>(), 0x7461626cu, 0);
        return words;
    }
    static std::uint32_t schema() noexcept { return state_traits<Value>::schema_version; }

    void mark(typename items_type::iterator at) {
        if (at->second.changed) return;
        at->second.changed = true;
        changed_.push_back(at);
    }

    std::uint32_t records() const noexcept { return area_.count / 2; }

    std::uint32_t take_record() {
        if (free_records_.empty()) grow(records() * 2, area_.capacity);
        const std::uint32_t record = free_records_.back();
        free_records_.pop_back();
        records_[record].used = true;
        return record;
    }

    void write_item(const Key& key, const item& target, std::uint32_t slot, std::uint64_t generation) {
        for (;;) {
            detail::unpublish_slot(area_, slot);
            std::byte* data = area_.data(slot);
            const auto capacity = static_cast<std::size_t>(area_.capacity);
            const std::size_t key_size = encode_measured(key, data, capacity);
            const std::size_t room = capacity - std::min(capacity, key_size);
            const std::size_t value_size =
                target.erased ? 0 : encode_measured(target.value, key_size <= capacity ? data + key_size : nullptr, room);
            const std::uint64_t needed = key_size + value_size;
            if (needed <= capacity) {
                detail::slot_snapshot words;
                words.generation = generation;
                words.size = needed;
                words.fingerprint = fingerprint();
                words.schema_version = schema();
                words.codec = static_cast<std::uint32_t>(codec_of<Value>());
                detail::publish_item(area_, slot, words, key_size | (target.erased ? detail::item_erased : 0));
                return;
            }
            grow(records(), detail::align64(std::max(needed + needed / 2, area_.capacity * 2)));
        }
    }

    // Moves the table to a region of `count` records of `capacity` bytes,
    // copying every slot that checks out (both versions of each item, and
    // this commit's writes so far) to the same place.
    void grow(std::uint32_t count, std::uint64_t capacity) {
        const std::uint32_t old_records = records();
        const detail::slot_area old = area_;
        area_ = segment_->move_entry(index_, count, capacity, [&](const detail::slot_area& fresh) {
            for (std::uint32_t slot = 0; slot < old.count; ++slot) detail::copy_item(old, slot, fresh, slot);
        });
        records_.resize(count);
        for (std::uint32_t record = count; record-- > old_records;) free_records_.push_back(record);
    }

    void load_record(std::uint32_t record, std::uint64_t generation) {
        std::optional<std::uint32_t> newest;
        std::uint64_t newest_generation = 0;
        std::uint64_t damaged_generation = 0;
        for (std::uint32_t side = 0; side < 2; ++side) {
            const std::uint32_t slot = 2 * record + side;
            const detail::item_snapshot found = detail::read_item(area_, slot);
            const std::uint64_t at = found.words.generation;
            if (at == 0) continue;
            if (at > generation) {  // a commit a crash cut short, or garbage: never to be seen
                if (segment_->access() == segment_access::owner) detail::unpublish_slot(area_, slot);
                continue;
            }
            if (!found.valid) {
                damaged_generation = std::max(damaged_generation, at);
                continue;
            }
            if (!newest || at > newest_generation) {
                newest = side;
                newest_generation = at;
            }
        }
        if (damaged_generation > newest_generation) throw_damaged(record, damaged_generation);
        record_state& state = records_[record];
        state.newest = newest ? *newest : 1u;
        const std::uint32_t slot = 2 * record + state.newest;
        if (!newest || detail::read_item(area_, slot).erased()) {
            free_records_.push_back(record);
            return;
        }
        Key key{};
        Value value{};
        decode_key(slot, key);
        decode_item(slot, key, value);
        state.used = true;
        auto [at, inserted] = items_.try_emplace(std::move(key));
        if (!inserted) throw_damaged(record, newest_generation);  // one key in two records: only damage does that
        at->second.value = std::move(value);
        at->second.record = record;
        ++live_;
    }

    void check_type(const detail::item_snapshot& found) const {
        if (found.words.fingerprint == fingerprint() && found.words.schema_version == schema()) return;
        throw error(errc::type_mismatch,
                    "side table '" + entry_key_ + "' holds items of another key or value type or schema version "
                    "(fingerprint " + fingerprint_text(found.words.fingerprint) + ", schema " +
                        std::to_string(found.words.schema_version) + "; this program has " +
                        fingerprint_text(fingerprint()) + ", schema " + std::to_string(schema()) +
                        "); use another table name, or remove the table's key");
    }

    void decode_key(std::uint32_t slot, Key& key) const {
        const detail::item_snapshot found = detail::read_item(area_, slot);
        check_type(found);
        decode_checked(area_.data(slot), found.key_length(), key, found, "key");
    }

    void decode_item(std::uint32_t slot, const Key&, Value& value) const {
        const detail::item_snapshot found = detail::read_item(area_, slot);
        check_type(found);
        const auto key_length = static_cast<std::size_t>(found.key_length());
        decode_checked(area_.data(slot) + key_length, static_cast<std::size_t>(found.words.size) - key_length, value,
                       found, "value");
    }

    template <class T>
    void decode_checked(const std::byte* data, std::size_t size, T& out, const detail::item_snapshot& found,
                        const char* part) const {
        try {
            decode_into(data, size, out);
        } catch (const error& failure) {
            if (failure.code() != errc::decode_failed) throw;
            detail::throw_undecodable("side table '" + entry_key_ + "' (an item's " + part + ")",
                                      found.words.generation, found.words.fingerprint, found.words.schema_version,
                                      fingerprint(), schema(), failure.what());
        }
    }

    [[noreturn]] void throw_damaged(std::uint32_t record, std::uint64_t generation) const {
        throw error(errc::segment_corrupt,
                    "side table '" + entry_key_ + "': item record " + std::to_string(record) + " is damaged at generation " +
                        std::to_string(generation) + ", so the table cannot be restored as one commit; remove the "
                        "key '" + entry_key_ + "' (segment::remove_key) to start the table afresh");
    }
};

} // namespace keepsake
