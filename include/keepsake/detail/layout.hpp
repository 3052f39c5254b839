// keepsake/detail/layout.hpp: the bytes of a segment, as mapped.
//
//   [segment_header 256 B][dir_entry x max_entries][entry regions ...]
//   entry region = slot_count x ([slot_header 64 B][data, capacity rounded to 64])
//
// Every field is a plain integer; fields that publish something are read and
// written through detail/atomic.hpp. Nothing here is a pointer: a segment may
// be mapped at another address by the next process.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace keepsake::detail {

inline constexpr std::uint64_t segment_magic = 0x454b415350454b4bull; // "KKEPSAKE"
inline constexpr std::uint32_t segment_layout_version = 1;

// clean_state values: several bytes apart, so one flipped byte never turns
// "dirty" into "clean".
inline constexpr std::uint32_t state_clean = 0x4e41454cu;  // "LEAN"
inline constexpr std::uint32_t state_dirty = 0x59545249u;  // "IRTY"

struct segment_header {
    // Written once at creation; magic is stored last, with release, so a
    // segment whose magic is still 0 was never finished and is rebuilt.
    std::uint64_t magic;
    std::uint32_t layout_version;
    std::uint32_t max_entries;
    std::uint64_t directory_offset;
    std::uint64_t data_offset;
    std::uint64_t created_ns;
    std::uint64_t header_checksum; // over the five fields above
    // Changed while the segment lives; each is bounded before use.
    std::uint64_t total_size;      // may grow when reopened with a larger size
    std::uint64_t alloc_top;       // first byte not yet given to an entry
    std::uint32_t clean_state;     // state_clean or state_dirty
    std::uint32_t reserved0;
    std::int64_t owner_pid;
    std::uint64_t owner_start_time;
    std::uint64_t owner_since_ns;
    std::uint8_t reserved[256 - 96];
};
static_assert(sizeof(segment_header) == 256);
static_assert(std::is_trivially_copyable_v<segment_header>);

// Directory entry states: FREE is 0 so a fresh segment's directory is free.
inline constexpr std::uint32_t entry_free = 0;
inline constexpr std::uint32_t entry_writing = 0x21544957u; // "WIT!"
inline constexpr std::uint32_t entry_ready = 0x59444552u;   // "REDY"

inline constexpr std::size_t max_key_length = 80;

struct dir_entry {
    std::uint32_t state;          // entry_free / entry_writing / entry_ready
    std::uint32_t key_length;
    std::uint32_t slot_count;
    std::uint32_t reserved0;
    std::uint64_t offset;         // of the entry's first slot, from segment start
    std::uint64_t slot_capacity;  // data bytes per slot
    std::uint64_t created_ns;
    char key[max_key_length];
    std::uint64_t checksum;       // over every byte after `state`, up to here
};
static_assert(sizeof(dir_entry) == 128);
static_assert(std::is_trivially_copyable_v<dir_entry>);

struct slot_header {
    std::uint64_t generation;     // 0: empty, or being written
    std::uint64_t size;           // data bytes in use
    std::uint64_t fingerprint;    // of the type and codec that wrote it
    std::uint32_t schema_version;
    std::uint32_t codec;
    std::uint64_t commit_ns;      // wall clock at commit (coarse), for the inspect tool; 0 if unknown
    std::uint64_t checksum;       // XXH3 of data, seeded by the words above
    std::uint64_t reserved[2];
};
static_assert(sizeof(slot_header) == 64);

inline constexpr std::uint64_t align64(std::uint64_t value) noexcept {
    return (value + 63u) & ~std::uint64_t{63u};
}

inline constexpr std::uint64_t slot_stride(std::uint64_t capacity) noexcept {
    return sizeof(slot_header) + align64(capacity);
}

inline constexpr std::uint64_t entry_region_size(std::uint32_t slot_count,
                                                 std::uint64_t capacity) noexcept {
    return slot_count * slot_stride(capacity);
}

} // namespace keepsake::detail
