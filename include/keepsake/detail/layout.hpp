// keepsake/detail/layout.hpp: the bytes of a segment, as mapped.
//
//   [segment_header 512 B][first directory block][regions and free space ...]
//   directory block = dir_entry x count (192 B each); more blocks, each twice
//     the size of the one before, are taken from the data area as keys are added
//   a state entry's region = slot_count x ([slot_header 64 B][data, capacity rounded to 64])
//   a table entry's region = item records (detail/table_layout.hpp)
//
// Every field is a plain integer; fields that publish something are read and
// written through detail/atomic.hpp. Nothing here is a pointer: a segment may
// be mapped at another address by the next process.
//
// Which bytes are in use is not recorded anywhere but in the directory: a
// region belongs to the entry whose active region descriptor names it, and
// everything else is free. The owner rebuilds its free-space map from the
// directory when it opens the segment, so a crash in the middle of taking or
// giving back space can never leave the segment's bookkeeping wrong.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace keepsake::detail {

inline constexpr std::uint64_t segment_magic = 0x454b415350454b4bull; // "KKEPSAKE"
inline constexpr std::uint32_t segment_layout_version = 2;

// clean_state values: several bytes apart, so one flipped byte never turns
// "dirty" into "clean".
inline constexpr std::uint32_t state_clean = 0x4e41454cu;  // "LEAN"
inline constexpr std::uint32_t state_dirty = 0x59545249u;  // "IRTY"

// The directory grows by blocks: the first lies after the header, the
// others are regions of the data area, each twice as large as the last.
inline constexpr std::uint32_t max_directory_blocks = 16;

struct directory_block {
    std::uint64_t offset;    // of its first dir_entry
    std::uint32_t count;     // entries in it
    std::uint32_t reserved0;
    std::uint64_t checksum;  // over offset and count
};
static_assert(sizeof(directory_block) == 24);

struct segment_header {
    // Written once at creation; magic is stored last, with release, so a
    // segment whose magic is still 0 was never finished and is rebuilt.
    std::uint64_t magic;
    std::uint32_t layout_version;
    std::uint32_t first_block_entries;
    std::uint64_t directory_offset;
    std::uint64_t data_offset;
    std::uint64_t created_ns;
    std::uint64_t header_checksum; // over the five fields above
    // Changed while the segment lives; each is bounded before use.
    std::uint64_t total_size;      // grows as keys need room (up to the owner's max_size)
    std::uint32_t clean_state;     // state_clean or state_dirty
    std::uint32_t block_count;     // directory blocks in use (1 to max_directory_blocks); published last
    std::int64_t owner_pid;
    std::uint64_t owner_start_time;
    std::uint64_t owner_since_ns;
    std::uint64_t reserved0;
    directory_block blocks[max_directory_blocks];  // [0] is the first block, after this header
    std::uint8_t reserved[512 - 96 - max_directory_blocks * sizeof(directory_block)];
};
static_assert(sizeof(segment_header) == 512);
static_assert(std::is_trivially_copyable_v<segment_header>);

// Directory entry states: FREE is 0 so a fresh directory block is free.
inline constexpr std::uint32_t entry_free = 0;
inline constexpr std::uint32_t entry_writing = 0x21544957u; // "WIT!"
inline constexpr std::uint32_t entry_ready = 0x59444552u;   // "REDY"

inline constexpr std::size_t max_key_length = 80;

// What an entry's region holds.
enum class entry_kind : std::uint32_t {
    state = 1,  // a keeper's slots
    table = 2,  // a side table's item records
};

// Where an entry's bytes are. An entry has two of these and uses one
// (dir_entry::active): moving it to a larger region writes the other one,
// then flips `active` with a single store, so the move is atomic.
struct region_desc {
    std::uint64_t offset;     // from the segment's start
    std::uint64_t capacity;   // data bytes per slot (state) or per item (table)
    std::uint32_t count;      // slots (state) or item records (table)
    std::uint32_t serial;     // how many times the entry moved; part of its slots' tag
    std::uint64_t checksum;   // over the words above, seeded with the entry's own checksum
};
static_assert(sizeof(region_desc) == 32);

struct dir_entry {
    std::uint32_t state;          // entry_free / entry_writing / entry_ready
    std::uint32_t active;         // which of regions[] is in use: 0 or 1
    std::uint32_t key_length;
    std::uint32_t kind;           // an entry_kind
    std::uint64_t created_ns;
    std::uint64_t nonce;          // random per entry: its slots are told from any earlier entry's
    char key[max_key_length];
    std::uint64_t checksum;       // over key_length, kind, created_ns, nonce and key
    region_desc regions[2];
    std::uint64_t reserved[1];
};
static_assert(sizeof(dir_entry) == 192);
static_assert(std::is_trivially_copyable_v<dir_entry>);

struct slot_header {
    std::uint64_t generation;     // 0: empty, or being written
    std::uint64_t size;           // data bytes in use
    std::uint64_t fingerprint;    // of the type and codec that wrote it
    std::uint32_t schema_version;
    std::uint32_t codec;
    std::uint64_t commit_ns;      // wall clock at commit (coarse), for the inspect tool; 0 if unknown
    std::uint64_t checksum;       // XXH3 of data, seeded by the words above and the tag
    std::uint64_t tag;            // the entry's nonce and region serial: a slot is only ever its own entry's
    std::uint64_t item_words;     // side-table items: key length, and 1 << 32 for "erased" (0 for a state)
};
static_assert(sizeof(slot_header) == 64);

inline constexpr std::uint64_t align64(std::uint64_t value) noexcept {
    return (value + 63u) & ~std::uint64_t{63u};
}

inline constexpr std::uint64_t slot_stride(std::uint64_t capacity) noexcept {
    return sizeof(slot_header) + align64(capacity);
}

inline constexpr std::uint64_t slots_region_size(std::uint32_t slot_count, std::uint64_t capacity) noexcept {
    return slot_count * slot_stride(capacity);
}

// The largest generation a commit may publish. Far above any real count
// (2^62 commits at a billion a second is 146 years), so a word above it can
// only be damage: restore skips such a slot and a store refuses such a record.
inline constexpr std::uint64_t max_generation = std::uint64_t{1} << 62;

} // namespace keepsake::detail
