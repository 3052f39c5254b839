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

// The checksum of a slot's bytes, seeded by the header words that describe
// them. commit_ns is folded in after the hash (times an odd constant, so
// 0 changes nothing): the clock read and the hash do not wait on each other,
// and a slot with commit_ns 0 (written before commit times were recorded, or
// a store record, which has none) keeps the checksum it had.
inline std::uint64_t slot_checksum(std::uint64_t generation, std::uint64_t size,
                                   std::uint64_t fingerprint, std::uint32_t schema,
                                   std::uint32_t codec, const void* data,
                                   std::uint64_t commit_ns = 0) noexcept {
    const std::uint64_t seed =
        mix_words(generation, size, fingerprint,
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
    return snap;
}

// Checks a slot's bytes where they lie. Never trusts the stored size: it is
// bounded by the slot before anything is read. False for an empty, torn or
// damaged slot.
inline bool slot_is_valid(const slot_area& area, const slot_snapshot& snap) noexcept {
    if (snap.generation == 0 || snap.size > area.capacity) return false;
    return slot_checksum(snap.generation, snap.size, snap.fingerprint, snap.schema_version,
                         snap.codec, area.data(snap.index), snap.commit_ns) == snap.checksum;
}

} // namespace keepsake::detail
