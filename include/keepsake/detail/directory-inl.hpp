// keepsake/detail/directory-inl.hpp: a segment's directory of keys and the
// space their regions take. Included by segment.hpp in header-only mode;
// compiled once by src/keepsake.cpp in compiled mode.
//
// Every change here is a sequence of plain stores ordered so that a crash
// at any instant leaves a directory the next owner reads correctly:
//   - adding a key takes free space, clears it, then marks an entry
//     WRITING, fills it and marks it READY (a WRITING entry is cleared at
//     the next open, and its space, referenced by nothing, is free);
//   - moving a key writes its new region, then the entry's unused region
//     descriptor, then flips `active` with one store;
//   - removing a key is one store (READY to FREE);
//   - a new directory block is cleared, described in the header, then
//     counted with one store.
// What is free is never written down: the owner derives it at open.
#pragma once

#ifndef KEEPSAKE_HEADER_ONLY
#include "keepsake/segment.hpp"
#endif

#include <algorithm>
#include <cstring>
#include <unordered_set>

#include "keepsake/detail/table_slots.hpp"

namespace keepsake {
namespace detail {

KEEPSAKE_INLINE dir_entry* segment_impl::entry_at(std::uint32_t index) const noexcept {
    for (const block_place& block : blocks_)
        if (index - block.first_index < block.count)
            return reinterpret_cast<dir_entry*>(base_ + block.offset) + (index - block.first_index);
    return nullptr;  // callers pass indexes below entry_count_
}

KEEPSAKE_INLINE std::uint64_t segment_impl::region_bytes(const region_desc& region, entry_kind kind) noexcept {
    const std::uint64_t slots = kind == entry_kind::table ? 2ull * region.count : region.count;
    return slots * slot_stride(region.capacity);
}

KEEPSAKE_INLINE bool segment_impl::region_in_bounds(const region_desc& region, entry_kind kind) const noexcept {
    const bool count_ok = kind == entry_kind::table
                              ? region.count >= 1 && region.count <= max_table_items
                              : region.count >= 2 && region.count <= max_slots_per_entry;
    if (!count_ok || region.capacity == 0 || region.capacity > total_size_) return false;
    if (region.offset < data_offset_ || region.offset % 64 != 0 || region.offset > total_size_) return false;
    return region_bytes(region, kind) <= total_size_ - region.offset;
}

KEEPSAKE_INLINE bool segment_impl::read_valid_entry(std::uint32_t index, dir_entry& out) const noexcept {
    const dir_entry* live = entry_at(index);
    if (live == nullptr || load_acquire(live->state) != entry_ready) return false;
    std::memcpy(&out, live, sizeof(out));
    if (out.state != entry_ready || entry_checksum_of(out) != out.checksum) return false;
    if (out.key_length == 0 || out.key_length > max_key_length || out.active > 1) return false;
    // A key the naming rules refuse could not be named to remove it.
    for (std::uint32_t i = 0; i < out.key_length; ++i)
        if (!is_name_char(out.key[i], true)) return false;
    const auto kind = static_cast<entry_kind>(out.kind);
    if (kind != entry_kind::state && kind != entry_kind::table) return false;
    const region_desc& region = out.regions[out.active];
    return region_checksum_of(region, out.checksum) == region.checksum && region_in_bounds(region, kind);
}

// Entries found damaged at open (a second entry of one key, overlapping
// regions) are not listed, even where their own words check out.
KEEPSAKE_INLINE bool segment_impl::set_aside(std::uint32_t index) const noexcept {
    return std::find(damaged_.begin(), damaged_.end(), index) != damaged_.end();
}

KEEPSAKE_INLINE slot_area segment_impl::area_of(const dir_entry& entry) const noexcept {
    const region_desc& region = entry.regions[entry.active];
    const std::uint32_t slots = entry.kind == static_cast<std::uint32_t>(entry_kind::table) ? 2 * region.count
                                                                                           : region.count;
    return slot_area{base_ + region.offset, slots, region.capacity, slot_tag(entry.nonce, region.serial)};
}

KEEPSAKE_INLINE void segment_impl::read_directory_blocks(const segment_header& validated) {
    blocks_.clear();
    entry_count_ = 0;
    const std::uint32_t count = load_acquire(header_->block_count);
    if (count == 0 || count > max_directory_blocks) corrupt("directory block count out of range");
    for (std::uint32_t i = 0; i < count; ++i) {
        directory_block block{};
        std::memcpy(&block, &header_->blocks[i], sizeof(block));
        const std::uint64_t bytes = std::uint64_t{block.count} * sizeof(dir_entry);
        const bool placed = i == 0 ? block.offset == validated.directory_offset &&
                                         block.count == validated.first_block_entries
                                   : block.offset >= data_offset_ && block.offset % 64 == 0 &&
                                         block.count == 2 * blocks_.back().count;
        if (block_checksum_of(block) != block.checksum || !placed || block.offset > total_size_ ||
            bytes > total_size_ - block.offset)
            corrupt("directory block " + std::to_string(i) + " is damaged");
        blocks_.push_back(block_place{block.offset, block.count, entry_count_});
        entry_count_ += block.count;
    }
}

KEEPSAKE_INLINE void segment_impl::recover_directory() {
    read_directory_blocks(*header_);
    const bool repair = access_ == segment_access::owner;
    space_.reset(data_offset_, total_size_);
    for (std::size_t i = 1; i < blocks_.size(); ++i)
        if (!space_.take(blocks_[i].offset, align64(std::uint64_t{blocks_[i].count} * sizeof(dir_entry))))
            corrupt("directory block " + std::to_string(i) + " overlaps another");
    std::unordered_set<std::string> seen;  // every mode: a read-only view lists a key once too
    for (std::uint32_t i = 0; i < entry_count_; ++i) {
        dir_entry& slot = *entry_at(i);
        const std::uint32_t state = load_acquire(slot.state);
        if (state == entry_free) continue;
        if (state == entry_writing) {  // an add that a crash cut short (or, read-only, one under way)
            if (!repair) continue;
            std::memset(reinterpret_cast<std::byte*>(&slot) + sizeof(slot.state), 0,
                        sizeof(slot) - sizeof(slot.state));
            store_release(slot.state, entry_free);
            continue;
        }
        dir_entry entry{};
        std::string key;
        bool valid = read_valid_entry(i, entry);
        if (valid) {
            key.assign(entry.key, entry.key_length);
            const region_desc& region = entry.regions[entry.active];
            // Two entries claiming the same key or the same bytes: only
            // damage (or a forger) does that; the first one found keeps them.
            valid = seen.insert(key).second &&
                    space_.take(region.offset, region_bytes(region, static_cast<entry_kind>(entry.kind)));
        }
        if (valid) {
            if (indexed()) {
                if (static_cast<entry_kind>(entry.kind) == entry_kind::table) table_index_.insert(key);
                directory_index_.assign(key, i, [](std::uint32_t) { return false; });  // each key once: seen
            }
        } else {
            damaged_.push_back(i);
            log(spdlog::level::err, [&] {
                return "segment '" + name + "': directory entry " + std::to_string(i) + " is damaged";
            });
        }
    }
}

KEEPSAKE_INLINE segment_impl::attached_entry segment_impl::attach(const std::string& key, entry_kind kind,
                                                                  std::uint32_t count, std::uint64_t capacity) {
    check_key(key);
    refuse_unless(segment_access::owner, ("keep key '" + key + "'").c_str());
    const bool count_ok = kind == entry_kind::table ? count >= 1 && count <= max_table_items
                                                    : count >= 2 && count <= max_slots_per_entry;
    if (!count_ok)
        throw error(errc::invalid_argument, "slot count for key '" + key + "' must be 2 to " +
                                                std::to_string(max_slots_per_entry));
    if (capacity == 0 || capacity > max_size_)
        throw error(errc::invalid_argument, "slot capacity for key '" + key + "' must be 1 to " +
                                                std::to_string(max_size_) + " bytes (segment_options::max_size)");
    std::lock_guard<std::mutex> lock(mutex_);
    if (is_attached(key))
        throw error(errc::key_in_use, "key '" + key + "' in segment '" + name +
                                          "' already has a keeper in this process; use that one");
    attached_entry result;
    if (auto found = find_entry(key)) {
        if (found->entry.kind != static_cast<std::uint32_t>(kind))
            throw error(errc::type_mismatch,
                        "key '" + key + "' in segment '" + name + "' holds a " +
                            (kind == entry_kind::table ? "keeper's state, not a side table"
                                                       : "side table, not a keeper's state") +
                            "; use another key, or remove it");
        result = attached_entry{found->index, area_of(found->entry), false};  // the validated copy
    } else {
        result = add_entry(key, kind, count, capacity);
    }
    if (attached_.size() <= result.index) attached_.resize(entry_count_);
    attached_[result.index] = true;
    return result;
}

KEEPSAKE_INLINE std::uint32_t segment_impl::free_entry_index(const std::string& key) {
    for (;;) {
        std::uint32_t index = free_from_;
        while (index < entry_count_ && load_acquire(entry_at(index)->state) != entry_free) ++index;
        if (index < entry_count_) return index;
        free_from_ = entry_count_;
        if (!add_directory_block(key))
            throw error(errc::out_of_space,
                        "segment '" + name + "' has all " + std::to_string(entry_count_) +
                            " directory entries in use; remove keys, or recreate it with a larger "
                            "segment_options::max_entries");
    }
}

KEEPSAKE_INLINE bool segment_impl::add_directory_block(const std::string& for_key) {
    const auto number = static_cast<std::uint32_t>(blocks_.size());
    if (number == max_directory_blocks || std::uint64_t{blocks_.back().count} * 2 > max_directory_entries)
        return false;
    directory_block block{};
    block.count = blocks_.back().count * 2;
    const std::uint64_t bytes = align64(std::uint64_t{block.count} * sizeof(dir_entry));
    block.offset = allocate(bytes, for_key, true);
    std::memset(base_ + block.offset, 0, static_cast<std::size_t>(bytes));
    block.checksum = block_checksum_of(block);
    std::memcpy(&header_->blocks[number], &block, sizeof(block));
    store_release(header_->block_count, number + 1);
    blocks_.push_back(block_place{block.offset, block.count, entry_count_});
    entry_count_ += block.count;
    return true;
}

KEEPSAKE_INLINE segment_impl::attached_entry segment_impl::add_entry(const std::string& key, entry_kind kind,
                                                                     std::uint32_t count, std::uint64_t capacity) {
    region_desc region{};
    region.capacity = capacity;
    region.count = count;
    const std::uint64_t bytes = region_bytes(region, kind);
    region.offset = allocate(bytes, key);
    std::uint32_t index = 0;
    try {
        index = free_entry_index(key);
    } catch (...) {
        space_.release(region.offset, bytes);
        throw;
    }
    dir_entry fresh{};
    fresh.key_length = static_cast<std::uint32_t>(key.size());
    fresh.kind = static_cast<std::uint32_t>(kind);
    fresh.created_ns = wall_clock_ns();
    fresh.nonce = mix_words(fresh.created_ns, static_cast<std::uint64_t>(::getpid()), ++nonce_counter_, index) | 1u;
    std::memcpy(fresh.key, key.data(), key.size());
    fresh.checksum = entry_checksum_of(fresh);
    region.checksum = region_checksum_of(region, fresh.checksum);
    fresh.regions[0] = region;
    const slot_area area = area_of(fresh);
    for (std::uint32_t slot = 0; slot < area.count; ++slot)
        std::memset(static_cast<void*>(area.header(slot)), 0, sizeof(slot_header));
    // Indexed before anything is published: if this throws, nothing changed.
    directory_index_.assign(key, index, [&](std::uint32_t other) { return entry_names(other, key); });  // gone bad
    if (index < attached_.size()) attached_[index] = false;  // a key that went bad while attached left its bit
    if (kind == entry_kind::table) table_index_.insert(key);

    dir_entry& target = *entry_at(index);
    store_release(target.state, entry_writing);
    fence_release();
    std::memcpy(reinterpret_cast<std::byte*>(&target) + sizeof(target.state),
                reinterpret_cast<const std::byte*>(&fresh) + sizeof(fresh.state),
                sizeof(fresh) - sizeof(fresh.state));
    store_release(target.state, entry_ready);
    free_from_ = index + 1;
    return attached_entry{index, area, true};
}

KEEPSAKE_INLINE slot_area segment_impl::move_entry(std::uint32_t index, std::uint32_t count, std::uint64_t capacity,
                                                   const std::function<void(const slot_area&)>& fill) {
    std::lock_guard<std::mutex> lock(mutex_);
    dir_entry entry{};
    if (!read_valid_entry(index, entry))
        corrupt("directory entry " + std::to_string(index) + " changed under the keeper that holds it");
    const auto kind = static_cast<entry_kind>(entry.kind);
    const region_desc old = entry.regions[entry.active];
    region_desc fresh{};
    fresh.capacity = capacity;
    fresh.count = count;
    fresh.serial = old.serial + 1;
    const std::uint64_t bytes = region_bytes(fresh, kind);
    const std::string key(entry.key, entry.key_length);
    fresh.offset = allocate(bytes, key);
    fresh.checksum = region_checksum_of(fresh, entry.checksum);
    dir_entry moved = entry;
    const std::uint32_t next = 1 - entry.active;
    moved.regions[next] = fresh;
    moved.active = next;
    const slot_area area = area_of(moved);
    try {
        for (std::uint32_t slot = 0; slot < area.count; ++slot)
            std::memset(static_cast<void*>(area.header(slot)), 0, sizeof(slot_header));
        fill(area);
    } catch (...) {
        space_.release(fresh.offset, bytes);
        throw;
    }
    // What fill() published is ordered before the descriptor, and the
    // descriptor before the flip that makes it the entry's.
    dir_entry& live = *entry_at(index);
    fence_release();
    std::memcpy(&live.regions[next], &fresh, sizeof(fresh));
    store_release(live.active, next);
    space_.release(old.offset, region_bytes(old, kind));
    return area;
}

KEEPSAKE_INLINE std::optional<found_entry> segment_impl::find_entry(const std::string& key) const {
    if (!damaged_.empty())
        throw error(errc::segment_corrupt,
                    "segment '" + name + "' has " + std::to_string(damaged_.size()) +
                        " damaged directory entries and key '" + key + "' may be one of them; "
                        "call segment::drop_damaged_entries() to give those keys up, or remove the segment");
    return find_valid_entry(key);
}

KEEPSAKE_INLINE std::optional<found_entry> segment_impl::find_valid_entry(const std::string& key) const noexcept {
    auto matches = [&](std::uint32_t index, found_entry& found) {
        found.index = index;
        return read_valid_entry(index, found.entry) && found.entry.key_length == key.size() &&
               std::memcmp(found.entry.key, key.data(), key.size()) == 0;
    };
    found_entry found{0, {}};
    if (indexed()) {
        if (directory_index_.find(key, [&](std::uint32_t index) { return matches(index, found); })) return found;
        return std::nullopt;  // damaged since it was indexed: as a scan would, skip it
    }
    for (std::uint32_t i = 0; i < entry_count_; ++i)
        if (matches(i, found)) return found;
    return std::nullopt;
}

// A key goes with its side tables ('<key>::<name>'): the key's own entry
// first, in one store, then its tables. A crash in between leaves tables of
// a key that is gone: a keeper made under that key again finds them empty
// (their items are above its committed generation, 0, so its first load
// clears them), and removing the key again takes them.
KEEPSAKE_INLINE bool segment_impl::remove_key(const std::string& key) {
    check_key(key);
    refuse_unless(segment_access::maintenance, ("remove key '" + key + "'").c_str());
    std::lock_guard<std::mutex> lock(mutex_);
    const std::vector<std::string> tables = table_keys_of(key);
    for (const std::string& each : tables)
        if (is_attached(each)) throw error(errc::key_in_use, "side table '" + each + "' is still attached; destroy its keeper first");
    if (is_attached(key))
        throw error(errc::key_in_use, "key '" + key + "' still has a keeper; destroy it first");
    bool removed = remove_entry(key);
    for (const std::string& each : tables) removed = remove_entry(each) || removed;
    return removed;
}

KEEPSAKE_INLINE std::vector<std::string> segment_impl::table_keys_of(const std::string& key) const {
    std::vector<std::string> tables;
    const std::string prefix = key + "::";
    for (auto known = table_index_.lower_bound(prefix);
         known != table_index_.end() && known->compare(0, prefix.size(), prefix) == 0; ++known)
        if (known->size() > prefix.size() && known->find(':', prefix.size()) == std::string::npos)
            tables.push_back(*known);
    return tables;
}

KEEPSAKE_INLINE std::vector<std::string> segment_impl::table_names_of(const std::string& key) const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::string> names = table_keys_of(key);
    for (std::string& each : names) each.erase(0, key.size() + 2);
    return names;
}

KEEPSAKE_INLINE bool segment_impl::remove_entry(const std::string& key) {
    auto found = find_entry(key);
    if (!found) return false;
    store_release(entry_at(found->index)->state, entry_free);  // one store: crash-safe
    directory_index_.erase(key, found->index);
    table_index_.erase(key);
    free_from_ = std::min(free_from_, found->index);
    const region_desc& region = found->entry.regions[found->entry.active];
    space_.release(region.offset, region_bytes(region, static_cast<entry_kind>(found->entry.kind)));
    return true;
}

// A damaged entry's words failed their checks, so its region was never
// taken out of the free space: dropping it frees only its directory entry.
KEEPSAKE_INLINE void segment_impl::drop_damaged_entries() {
    refuse_unless(segment_access::maintenance, "drop damaged entries");
    std::lock_guard<std::mutex> lock(mutex_);
    for (std::uint32_t index : damaged_) {
        store_release(entry_at(index)->state, entry_free);
        free_from_ = std::min(free_from_, index);
    }
    damaged_.clear();
}

KEEPSAKE_INLINE std::vector<entry_info> segment_impl::list_entries() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<entry_info> listed;
    for (std::uint32_t i = 0; i < entry_count_; ++i) {
        dir_entry entry{};
        if (!read_valid_entry(i, entry) || set_aside(i)) continue;
        listed.push_back(describe(entry, area_of(entry)));
    }
    return listed;
}

KEEPSAKE_INLINE std::vector<segment_impl::entry_view> segment_impl::entry_views() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<entry_view> views;
    views.reserve(entry_count_);
    for (std::uint32_t i = 0; i < entry_count_; ++i) {
        dir_entry entry{};
        if (read_valid_entry(i, entry) && !set_aside(i))
            views.push_back({std::string(entry.key, entry.key_length), area_of(entry), i, entry.nonce,
                             static_cast<entry_kind>(entry.kind)});
    }
    return views;
}

KEEPSAKE_INLINE std::optional<slot_area> segment_impl::current_area(std::uint32_t index, std::uint64_t nonce) const {
    std::lock_guard<std::mutex> lock(mutex_);
    dir_entry entry{};
    if (index >= entry_count_ || !read_valid_entry(index, entry) || entry.nonce != nonce) return std::nullopt;
    return area_of(entry);
}

KEEPSAKE_INLINE std::optional<segment_impl::entry_view> segment_impl::entry_view_of(const std::string& key) const {
    check_key(key);
    std::lock_guard<std::mutex> lock(mutex_);
    const auto found = find_valid_entry(key);
    if (!found) return std::nullopt;
    return entry_view{key, area_of(found->entry), found->index, found->entry.nonce,
                      static_cast<entry_kind>(found->entry.kind)};
}

KEEPSAKE_INLINE entry_info segment_impl::describe(const dir_entry& entry, const slot_area& area) {
    entry_info info;
    info.key.assign(entry.key, entry.key_length);
    info.kind = entry.kind;
    info.slot_count = entry.regions[entry.active].count;
    info.slot_capacity = area.capacity;
    info.moves = entry.regions[entry.active].serial;
    const bool table = entry.kind == static_cast<std::uint32_t>(entry_kind::table);
    for (std::uint32_t s = 0; s < area.count; ++s) {
        const slot_snapshot snap = read_slot_header(area, s);
        if (snap.generation == 0) {
            // A commit zeroes the generation first and stores it last.
            if (snap.size != 0 || snap.checksum != 0) ++info.unpublished_slots;
            continue;
        }
        const bool valid = table ? read_item(area, s).valid : slot_is_valid(area, snap);
        if (!valid) {
            // A commit in this process may be rewriting it right now.
            if (load_acquire(area.header(s)->generation) == snap.generation) ++info.invalid_slots;
            continue;
        }
        if (table) {  // a table: its newest item's words, and the bytes of every item version
            info.size += snap.size;
            if (snap.generation < info.generation) continue;
        } else if (snap.generation < info.generation) {
            continue;  // equal ones (damage): the higher index, as restore takes it (slot_cursor)
        }
        info.generation = snap.generation;
        if (!table) info.size = snap.size;
        info.fingerprint = snap.fingerprint;
        info.schema_version = snap.schema_version;
        info.codec = snap.codec;
        info.commit_ns = snap.commit_ns;
    }
    return info;
}

} // namespace detail
} // namespace keepsake
