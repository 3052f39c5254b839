// keepsake/detail/group_record.hpp: a keeper's state with its side tables,
// as one store record, and the consistent copy of them the exporter makes.
//
// A keeper without tables exports its state's bytes as they are. One with
// tables exports a group record (codec_kind::group): the state's bytes and
// every table as of the state's generation, so a reboot restores all of one
// commit, as a crash does. Every length in a group record is checked against
// the bytes left before it is used: a store's bytes are never trusted.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "keepsake/detail/atomic.hpp"
#include "keepsake/detail/slots.hpp"
#include "keepsake/detail/snapshot.hpp"
#include "keepsake/detail/table_slots.hpp"
#include "keepsake/error.hpp"
#include "keepsake/store.hpp"

namespace keepsake::detail {

inline constexpr std::uint32_t group_codec = 3;  // codec_kind::group
inline constexpr std::uint32_t group_magic = 0x5052474bu;  // "KGRP"
inline constexpr std::uint32_t group_format = 1;

// One item of a table, as its slot holds it: key bytes, then value bytes
// (empty value and `erased` never appear in an image: erased items are left out).
struct item_image {
    std::uint32_t key_length = 0;
    std::vector<std::byte> bytes;
};

struct table_image {
    std::string name;
    std::uint64_t fingerprint = 0;
    std::uint32_t schema_version = 0;
    std::uint32_t codec = 0;  // of the values
    std::vector<item_image> items;
};

// A state's words and bytes, and its tables, as one commit left them.
struct group_image {
    std::uint32_t state_codec = 0;
    std::vector<std::byte> state;
    std::vector<table_image> tables;
};

// --- the record's bytes ---------------------------------------------------
class byte_writer {
public:
    explicit byte_writer(std::vector<std::byte>& out) : out_(out) { out_.clear(); }
    void word32(std::uint32_t value) { raw(&value, sizeof value); }
    void word64(std::uint64_t value) { raw(&value, sizeof value); }
    void raw(const void* data, std::size_t size) {
        const auto* bytes = static_cast<const std::byte*>(data);
        out_.insert(out_.end(), bytes, bytes + size);
    }

private:
    std::vector<std::byte>& out_;
};

class byte_reader {
public:
    byte_reader(const std::byte* data, std::size_t size, const std::string& what) : next_(data), left_(size), what_(what) {}
    std::uint32_t word32() {
        std::uint32_t value = 0;
        raw(&value, sizeof value);
        return value;
    }
    std::uint64_t word64() {
        std::uint64_t value = 0;
        raw(&value, sizeof value);
        return value;
    }
    void raw(void* out, std::size_t size) {
        need(size);
        std::memcpy(out, next_, size);
        next_ += size;
        left_ -= size;
    }
    const std::byte* take(std::size_t size) {
        need(size);
        const std::byte* at = next_;
        next_ += size;
        left_ -= size;
        return at;
    }
    // A count of things each at least `smallest` bytes long: checked before
    // anything is sized for it.
    std::uint64_t count(std::size_t smallest) {
        const std::uint64_t value = word64();
        if (smallest != 0 && value > left_ / smallest) fail("a count of " + std::to_string(value) + " is more than the bytes left hold");
        return value;
    }
    std::size_t left() const noexcept { return left_; }
    [[noreturn]] void fail(const std::string& why) const {
        throw error(errc::record_corrupt, what_ + " is not a valid group record: " + why);
    }

private:
    void need(std::size_t size) const {
        if (size > left_) fail("it ends " + std::to_string(size - left_) + " bytes early");
    }
    const std::byte* next_;
    std::size_t left_;
    const std::string& what_;
};

inline void encode_group(const group_image& image, std::vector<std::byte>& out) {
    byte_writer writer(out);
    writer.word32(group_magic);
    writer.word32(group_format);
    writer.word32(image.state_codec);
    writer.word32(static_cast<std::uint32_t>(image.tables.size()));
    writer.word64(image.state.size());
    writer.raw(image.state.data(), image.state.size());
    for (const table_image& table : image.tables) {
        writer.word32(static_cast<std::uint32_t>(table.name.size()));
        writer.word32(table.codec);
        writer.word64(table.fingerprint);
        writer.word32(table.schema_version);
        writer.word32(0);
        writer.raw(table.name.data(), table.name.size());
        writer.word64(table.items.size());
        for (const item_image& item : table.items) {
            writer.word32(item.key_length);
            writer.word32(0);
            writer.word64(item.bytes.size());
            writer.raw(item.bytes.data(), item.bytes.size());
        }
    }
}

// Parses a group record's bytes (already past the record's checksum),
// bounding every length by what is left.
inline group_image parse_group(const std::byte* data, std::size_t size, const std::string& what) {
    byte_reader reader(data, size, what);
    group_image image;
    if (reader.word32() != group_magic) reader.fail("bad magic");
    if (const std::uint32_t format = reader.word32(); format != group_format)
        reader.fail("format " + std::to_string(format) + ", this keepsake reads " + std::to_string(group_format));
    image.state_codec = reader.word32();
    const std::uint32_t tables = reader.word32();
    const std::uint64_t state_size = reader.word64();
    if (state_size > reader.left()) reader.fail("the state is longer than the record");
    const std::byte* state = reader.take(static_cast<std::size_t>(state_size));
    image.state.assign(state, state + state_size);
    if (tables > reader.left() / 24) reader.fail("more tables than the record can hold");
    image.tables.resize(tables);
    for (table_image& table : image.tables) {
        const std::uint32_t name_length = reader.word32();
        table.codec = reader.word32();
        table.fingerprint = reader.word64();
        table.schema_version = reader.word32();
        reader.word32();
        if (name_length == 0 || name_length > 80) reader.fail("a table name of " + std::to_string(name_length) + " bytes");
        const std::byte* name = reader.take(name_length);
        table.name.assign(reinterpret_cast<const char*>(name), name_length);
        const std::uint64_t items = reader.count(16);
        table.items.resize(static_cast<std::size_t>(items));
        for (item_image& item : table.items) {
            item.key_length = reader.word32();
            reader.word32();
            const std::uint64_t length = reader.word64();
            if (length > reader.left() || item.key_length > length) reader.fail("an item longer than the record");
            const std::byte* bytes = reader.take(static_cast<std::size_t>(length));
            item.bytes.assign(bytes, bytes + length);
        }
    }
    if (reader.left() != 0) reader.fail(std::to_string(reader.left()) + " bytes after the last table");
    return image;
}

// --- the consistent copy --------------------------------------------------
// Copies one item slot as a seqlock reader; false if a commit touched it.
inline bool copy_item_slot(const slot_area& area, std::uint32_t slot, const item_snapshot& seen, item_image& out) {
    out.key_length = seen.key_length();
    out.bytes.resize(static_cast<std::size_t>(seen.words.size));
    if (seen.words.size != 0) std::memcpy(out.bytes.data(), area.data(slot), out.bytes.size());
    fence_acquire();
    if (load_relaxed(area.header(slot)->generation) != seen.words.generation) return false;
    const slot_snapshot& w = seen.words;
    return slot_checksum(w.generation, w.size, w.fingerprint, w.schema_version, w.codec, out.bytes.data(), 0,
                         item_tag(area.tag, seen.item_words)) == w.checksum;
}

enum class items_copy { copied, retry };

// Every item of a table region as of committed generation `generation`,
// while its keeper may go on committing. An item changed twice since that
// generation has lost the version it had then: the caller starts over from
// a newer state (retry).
inline items_copy copy_items_as_of(const slot_area& area, std::uint64_t generation, table_image& out) {
    out.items.clear();
    const std::uint32_t records = area.count / 2;
    for (std::uint32_t record = 0; record < records; ++record) {
        item_snapshot sides[2];
        for (std::uint32_t side = 0; side < 2; ++side) {
            sides[side] = read_item(area, 2 * record + side);
            sides[side].words.generation = load_acquire(area.header(2 * record + side)->generation);
        }
        int chosen = -1;
        bool newer = false;
        for (int side = 0; side < 2; ++side) {
            const std::uint64_t at = sides[side].words.generation;
            if (at == 0) continue;
            if (at > generation) {
                newer = true;
                continue;
            }
            if (!sides[side].valid) return items_copy::retry;  // being written, or damaged
            if (chosen < 0 || at > sides[chosen].words.generation) chosen = side;
        }
        if (chosen < 0) {
            if (newer) return items_copy::retry;  // both versions newer: the one it had is gone
            continue;                              // never used
        }
        const item_snapshot& found = sides[chosen];
        if (found.erased()) continue;
        if (out.items.empty()) {
            out.fingerprint = found.words.fingerprint;
            out.schema_version = found.words.schema_version;
            out.codec = found.words.codec;
        }
        item_image item;
        if (!copy_item_slot(area, 2 * record + static_cast<std::uint32_t>(chosen), found, item)) return items_copy::retry;
        out.items.push_back(std::move(item));
    }
    return items_copy::copied;
}

// A table region of the key being exported, by table name, and which
// directory entry it belongs to (a table that grows moves: see below).
struct table_area {
    std::string name;
    slot_area area;
    std::uint32_t index = 0;
    std::uint64_t nonce = 0;
};

// The exporter's copy of a state with its tables: the newest committed
// state above `newer_than` and every table as of its generation, encoded as
// one group record into `out` (key untouched). `scratch` keeps buffers
// between calls. busy: commits kept changing what was being copied.
//
// A table that grew moved to another region: its old one still holds valid
// slots of the items it had then, but not the items added since. So after
// copying, each table's region is looked up again (`where_now(index, nonce)`
// gives it, or nothing if the table is gone); a table that moved is copied
// again from where it is now.
template <class WhereNow>
snapshot_status snapshot_group(const slot_area& state, std::vector<table_area>& tables, std::uint64_t newer_than,
                               record& out, group_image& scratch, WhereNow&& where_now, int attempts = 64) {
    for (; attempts > 0; --attempts) {
        const snapshot_status status = snapshot_newest(state, newer_than, out);
        if (status != snapshot_status::copied) return status;
        scratch.tables.resize(tables.size());
        bool whole = true;
        for (std::size_t i = 0; i < tables.size() && whole; ++i) {
            scratch.tables[i].name = tables[i].name;
            whole = copy_items_as_of(tables[i].area, out.generation, scratch.tables[i]) == items_copy::copied;
        }
        for (table_area& table : tables) {
            const std::optional<slot_area> now = where_now(table.index, table.nonce);
            if (!now) return snapshot_status::busy;  // removed while copied: the next pass sees the directory anew
            if (now->first != table.area.first || now->tag != table.area.tag) {
                table.area = *now;
                whole = false;
            }
        }
        if (!whole) continue;
        scratch.state_codec = out.codec;
        scratch.state.swap(out.bytes);
        encode_group(scratch, out.bytes);
        out.codec = group_codec;
        return snapshot_status::copied;
    }
    return snapshot_status::busy;
}

} // namespace keepsake::detail
