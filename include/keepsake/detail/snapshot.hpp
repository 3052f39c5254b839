// keepsake/detail/snapshot.hpp: copying a key's newest committed state out
// of its slots while its keeper may be committing, without any lock the
// committer takes (the exporter's read side).
//
// Seqlock style, against keeper::commit's order (generation to 0, release
// fence, data and words, generation published with release): read the
// generation with acquire, copy the words and the bytes, an acquire fence,
// read the generation again. Equal and non-zero means no commit touched the
// slot during the copy (generations never repeat); the checksum is then
// checked on the copy, so what leaves is exactly what was committed.
#pragma once

#include <cstdint>
#include <cstring>

#include "keepsake/detail/atomic.hpp"
#include "keepsake/detail/slots.hpp"
#include "keepsake/store.hpp"

namespace keepsake::detail {

enum class snapshot_status {
    copied,      // `out` holds a committed generation above `newer_than`
    up_to_date,  // the newest committed generation is not above `newer_than`
    none,        // no slot holds a valid committed state
    busy,        // commits kept overwriting the slot; try again later
};

// Copies slot `snap.index` into `out`; false if a commit touched it meanwhile.
inline bool copy_slot(const slot_area& area, const slot_snapshot& snap, record& out) {
    out.bytes.resize(static_cast<std::size_t>(snap.size));
    if (snap.size != 0) std::memcpy(out.bytes.data(), area.data(snap.index), static_cast<std::size_t>(snap.size));
    fence_acquire();
    return load_relaxed(area.header(snap.index)->generation) == snap.generation;
}

// Newest published slot of this entry's tag, if any.
inline bool newest_published(const slot_area& area, slot_snapshot& newest) noexcept {
    for (slot_cursor cursor; next_newest_slot(area, cursor, newest); cursor = slot_cursor::at(newest))
        if (newest.tag == area.tag) return true;
    return false;
}

// Puts the newest valid committed state of `area` into `out` (key untouched)
// when it is newer than `newer_than`. A slot that is stable but fails its
// checksum is damaged and the next older one is tried, as restore does.
inline snapshot_status snapshot_newest(const slot_area& area, std::uint64_t newer_than, record& out,
                                       int attempts = 64) {
    slot_cursor cursor;
    slot_snapshot snap;
    while (next_newest_slot(area, cursor, snap)) {
        if (snap.generation <= newer_than) return snapshot_status::up_to_date;
        const bool plausible = slot_words_plausible(area, snap);
        if (plausible && !copy_slot(area, snap, out)) {
            if (--attempts <= 0) return snapshot_status::busy;
            cursor = slot_cursor{};  // a newer commit landed: start over
            continue;
        }
        if (plausible && slot_checksum(snap.generation, snap.size, snap.fingerprint, snap.schema_version, snap.codec,
                                       out.bytes.data(), snap.commit_ns, area.tag) == snap.checksum) {
            out.generation = snap.generation;
            out.schema_version = snap.schema_version;
            out.codec = snap.codec;
            out.fingerprint = snap.fingerprint;
            return snapshot_status::copied;
        }
        cursor = slot_cursor::at(snap);  // damaged or foreign: fall back to the next older slot
    }
    return snapshot_status::none;
}

} // namespace keepsake::detail
