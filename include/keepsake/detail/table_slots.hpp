// keepsake/detail/table_slots.hpp: the bytes of a side table in its region.
//
// A table's region holds item records; a record is two slots (as a key's
// state has), each [slot_header][key bytes][value bytes]. An item is
// written into the slot of its record that does not hold its newest
// committed version, at the generation of the commit it belongs to; the
// commit is published by the owning keeper's state slot, at that same
// generation, afterwards. So a reader that knows the committed generation G
// takes, per record, the newest valid slot at or below G: every item as of
// G, never a mix. Slots above G belong to a commit a crash cut short; the
// owner clears them before it commits again (their generation will be used
// again). An erased item is a slot marked erased; its record is reused once
// the erase is committed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>

#include "keepsake/detail/atomic.hpp"
#include "keepsake/detail/checksum.hpp"
#include "keepsake/detail/layout.hpp"
#include "keepsake/detail/slots.hpp"

namespace keepsake::detail {

inline constexpr std::uint64_t item_erased = std::uint64_t{1} << 32;

// The words an item's checksum covers beyond a state slot's: its key's
// length and whether it is erased, folded into the tag it is seeded with.
inline std::uint64_t item_tag(std::uint64_t tag, std::uint64_t item_words) noexcept {
    return tag ^ (item_words * 0xD6E8FEB86659FD93ull);
}

struct item_snapshot {
    slot_snapshot words;
    std::uint64_t item_words = 0;
    bool valid = false;

    std::uint32_t key_length() const noexcept { return static_cast<std::uint32_t>(item_words & 0xffffffffu); }
    bool erased() const noexcept { return (item_words & item_erased) != 0; }
};

inline item_snapshot read_item(const slot_area& area, std::uint32_t slot) noexcept {
    item_snapshot item;
    item.words = read_slot_header(area, slot);
    item.item_words = load_relaxed(area.header(slot)->item_words);
    const slot_snapshot& w = item.words;
    item.valid = w.generation != 0 && w.generation <= max_generation && w.size <= area.capacity &&
                 w.tag == area.tag && item.key_length() <= w.size &&
                 slot_checksum(w.generation, w.size, w.fingerprint, w.schema_version, w.codec, area.data(slot), 0,
                               item_tag(area.tag, item.item_words)) == w.checksum;
    return item;
}

// Publishes an item slot whose bytes are in place (the caller unpublished
// it first): words, then the generation with release.
inline void publish_item(const slot_area& area, std::uint32_t slot, const slot_snapshot& words,
                         std::uint64_t item_words) noexcept {
    slot_header& header = *area.header(slot);
    store_relaxed(header.size, words.size);
    store_relaxed(header.fingerprint, words.fingerprint);
    store_relaxed(header.schema_version, words.schema_version);
    store_relaxed(header.codec, words.codec);
    store_relaxed(header.commit_ns, std::uint64_t{0});
    store_relaxed(header.tag, area.tag);
    store_relaxed(header.item_words, item_words);
    store_relaxed(header.checksum, slot_checksum(words.generation, words.size, words.fingerprint, words.schema_version,
                                                 words.codec, area.data(slot), 0, item_tag(area.tag, item_words)));
    store_release(header.generation, words.generation);
}

// Copies a valid item slot into another region (a table that grows), with
// its checksum computed again for the new region's tag, only if the copied
// bytes still match the checksum they had.
inline void copy_item(const slot_area& from, std::uint32_t from_slot, const slot_area& to, std::uint32_t to_slot) {
    const item_snapshot item = read_item(from, from_slot);
    if (!item.valid || item.words.size > to.capacity) return;
    std::memcpy(to.data(to_slot), from.data(from_slot), static_cast<std::size_t>(item.words.size));
    const slot_snapshot& w = item.words;
    if (slot_checksum(w.generation, w.size, w.fingerprint, w.schema_version, w.codec, to.data(to_slot), 0,
                      item_tag(from.tag, item.item_words)) != w.checksum)
        return;
    publish_item(to, to_slot, w, item.item_words);
}

} // namespace keepsake::detail
