// keepsake/detail/slots.hpp: reading and checking the slots of one entry.
// Shared by keeper<T> (restore, commit) and segment::entries() (listing).
#pragma once

#include <cstddef>
#include <cstdint>
#include <ctime>

#include "keepsake/detail/atomic.hpp"
#include "keepsake/detail/checksum.hpp"
#include "keepsake/detail/layout.hpp"

namespace keepsake::detail {

// Where one entry's slots are in this process's mapping.
struct slot_area {
    std::byte* first = nullptr;   // the first slot_header
    std::uint32_t count = 0;
    std::uint64_t capacity = 0;   // data bytes per slot
    std::uint64_t tag = 0;        // what its slots' tag word must say (slot_tag)

    slot_header* header(std::uint32_t index) const noexcept {
        return reinterpret_cast<slot_header*>(first + index * slot_stride(capacity));
    }
    std::byte* data(std::uint32_t index) const noexcept {
        return first + index * slot_stride(capacity) + sizeof(slot_header);
    }
};

// The time a commit records (slot_header::commit_ns), in ns since the epoch
// but to the second: time() is one load from the vDSO's page, which costs
// nothing measurable in a 64 B commit, where CLOCK_REALTIME_COARSE (ms)
// cost 4 to 8 ns of its ~20. For display; nothing orders by it.
inline std::uint64_t commit_clock_ns() noexcept {
    return static_cast<std::uint64_t>(std::time(nullptr)) * 1000000000ull;
}

// The tag of an entry's slots in one region: a region given back and taken
// by another entry (or by the same one after a move) holds slots with
// another tag, so a reader that still looks at the old place never takes
// them for its own.
inline std::uint64_t slot_tag(std::uint64_t nonce, std::uint32_t serial) noexcept {
    return mix_words(nonce, serial, 0x736c6f74u, 0) | 1u;
}

// The checksum of a slot's bytes, seeded by the header words that describe
// them (and the slot's tag; 0 for a store record, which has none). commit_ns is folded in after the hash (times an odd constant, so
// 0 changes nothing): the clock read and the hash do not wait on each other,
// and a slot with commit_ns 0 (written before commit times were recorded, or
// a store record, which has none) keeps the checksum it had.
inline std::uint64_t slot_checksum(std::uint64_t generation, std::uint64_t size,
                                   std::uint64_t fingerprint, std::uint32_t schema,
                                   std::uint32_t codec, const void* data,
                                   std::uint64_t commit_ns = 0, std::uint64_t tag = 0) noexcept {
    const std::uint64_t seed =
        mix_words(generation, size, fingerprint ^ tag,
                  (std::uint64_t{schema} << 32) | std::uint64_t{codec});
    return hash_bytes(data, static_cast<std::size_t>(size), seed) ^ (commit_ns * 0x9E3779B97F4A7C15ull);
}

// A slot's header words as read at one instant; valid() says whether the
// bytes they describe checked out.
struct slot_snapshot {
    std::uint32_t index = 0;
    std::uint64_t generation = 0;
    std::uint64_t size = 0;
    std::uint64_t fingerprint = 0;
    std::uint32_t schema_version = 0;
    std::uint32_t codec = 0;
    std::uint64_t commit_ns = 0;
    std::uint64_t checksum = 0;
    std::uint64_t tag = 0;
};

inline slot_snapshot read_slot_header(const slot_area& area, std::uint32_t index) noexcept {
    const slot_header* header = area.header(index);
    slot_snapshot snap;
    snap.index = index;
    snap.generation = load_acquire(header->generation);
    snap.size = load_relaxed(header->size);
    snap.fingerprint = load_relaxed(header->fingerprint);
    snap.schema_version = load_relaxed(header->schema_version);
    snap.codec = load_relaxed(header->codec);
    snap.commit_ns = load_relaxed(header->commit_ns);
    snap.checksum = load_relaxed(header->checksum);
    snap.tag = load_relaxed(header->tag);
    return snap;
}

// Are a slot's header words possible at all (before its bytes are read)?
// The size is bounded by the slot, the generation by max_generation, and the
// tag must be this entry's.
inline bool slot_words_plausible(const slot_area& area, const slot_snapshot& snap) noexcept {
    return snap.generation != 0 && snap.generation <= max_generation && snap.size <= area.capacity &&
           snap.tag == area.tag;
}

// Checks a slot's bytes where they lie. Never trusts the stored words: they
// are bounded before anything is read. False for an empty, torn, damaged or
// foreign slot.
inline bool slot_is_valid(const slot_area& area, const slot_snapshot& snap) noexcept {
    if (!slot_words_plausible(area, snap)) return false;
    return slot_checksum(snap.generation, snap.size, snap.fingerprint, snap.schema_version,
                         snap.codec, area.data(snap.index), snap.commit_ns, snap.tag) == snap.checksum;
}

// Readers try an entry's slots newest generation first. Two slots with one
// generation are damage or forgery (commits never repeat one); then the
// higher index goes first, so each slot is tried once and a valid one of the
// two is not skipped with the invalid. A cursor is the last slot tried.
struct slot_cursor {
    std::uint64_t generation = max_generation + 1;
    std::uint32_t index = 0;

    static slot_cursor at(const slot_snapshot& snap) noexcept { return {snap.generation, snap.index}; }
    bool after(const slot_snapshot& snap) const noexcept {
        return snap.generation < generation || (snap.generation == generation && snap.index < index);
    }
};

// The next published slot to try after `cursor`, if any.
inline bool next_newest_slot(const slot_area& area, const slot_cursor& cursor, slot_snapshot& next) noexcept {
    bool found = false;
    for (std::uint32_t index = 0; index < area.count; ++index) {
        const slot_snapshot snap = read_slot_header(area, index);
        if (snap.generation == 0 || !cursor.after(snap)) continue;
        if (!found || snap.generation >= next.generation) next = snap;  // ties: the higher index
        found = true;
    }
    return found;
}

// Writes a slot's words and checksum, then publishes it: the generation goes
// last, with release, so a reader that sees it sees everything before it.
// The caller unpublished the slot (generation 0, release fence) before it
// wrote the data.
inline void publish_slot(const slot_area& area, std::uint32_t index, const slot_snapshot& words) noexcept {
    slot_header& header = *area.header(index);
    store_relaxed(header.size, words.size);
    store_relaxed(header.fingerprint, words.fingerprint);
    store_relaxed(header.schema_version, words.schema_version);
    store_relaxed(header.codec, words.codec);
    store_relaxed(header.commit_ns, words.commit_ns);
    store_relaxed(header.tag, area.tag);
    store_relaxed(header.checksum, slot_checksum(words.generation, words.size, words.fingerprint,
                                                 words.schema_version, words.codec, area.data(index),
                                                 words.commit_ns, area.tag));
    store_release(header.generation, words.generation);
}

inline void unpublish_slot(const slot_area& area, std::uint32_t index) noexcept {
    store_relaxed(area.header(index)->generation, std::uint64_t{0});
    fence_release();
}

} // namespace keepsake::detail
