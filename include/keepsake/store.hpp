// keepsake/store.hpp: where committed state goes to survive a reboot.
//
// A store holds one record per key: the newest generation of a keeper's
// state that was exported, with what restore needs to check its type. Stores
// live side by side in keepsake/stores/ (memory, file, sqlite, faulty), as
// spdlog's sinks do, and all pass one conformance suite
// (tests/store_test.cpp). Every store:
//   - makes a batch durable before put_batch() returns (as far as its medium
//     allows: see each store);
//   - never replaces a record with one of a lower or equal generation: such
//     a put is skipped, and put_batch() returns its index, so the caller can
//     tell "already there" from "refused as older" (the exporter reports the
//     latter: a key re-created below the generation the store holds);
//   - checks what it reads back (sizes, checksum): a damaged record is an
//     errc::record_corrupt error, never a crash and never bytes handed on;
//   - may be called from several threads (the exporter's and the ones that
//     recover keepers).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "keepsake/detail/checksum.hpp"
#include "keepsake/detail/slots.hpp"
#include "keepsake/error.hpp"

namespace keepsake {

// One key's state as a store holds it. fingerprint, schema_version and codec
// are the keeper's words (codec.hpp), so recovery checks the type as restore
// does; codec is a codec_kind value.
struct record {
    std::string key;
    std::uint64_t generation = 0;
    std::uint32_t schema_version = 0;
    std::uint32_t codec = 0;
    std::uint64_t fingerprint = 0;
    std::vector<std::byte> bytes;
};

class store {
public:
    virtual ~store() = default;

    // Writes every record whose generation is higher than the one stored
    // for its key; durable when it returns. Returns the indexes (into
    // `records`, ascending) of the records it skipped because the store
    // already held an equal or higher generation of their key; empty when
    // all were written. Throws keepsake::error (errc::store_failed) if the
    // batch could not be written, errc::invalid_argument if a record can
    // never be stored (e.g. a key too long for the medium); a batch that
    // fails may have been applied in part, and putting it again is safe.
    virtual std::vector<std::size_t> put_batch(const std::vector<record>& records) = 0;

    // The record of `key`, or nothing. Throws errc::record_corrupt if what
    // is stored fails its checks, errc::store_failed if it cannot be read.
    virtual std::optional<record> get(const std::string& key) = 0;

    // Removes `key`; false if it was absent.
    virtual bool remove(const std::string& key) = 0;

    // Keys that begin with `prefix`, sorted. A prefix scopes keys, so
    // several programs can share a store.
    virtual std::vector<std::string> list(const std::string& prefix) = 0;

    // For messages: what and where this store is.
    virtual std::string describe() const = 0;
};

namespace detail {

// Checks a record's key, words and bytes together: the slot checksum of the
// bytes, seeded with the key's hash so a record filed under another key
// fails too.
inline std::uint64_t record_checksum(const std::string& key, std::uint64_t generation, std::uint32_t schema_version,
                                     std::uint32_t codec, std::uint64_t fingerprint, const std::byte* bytes,
                                     std::size_t size) noexcept {
    return slot_checksum(generation, size, fingerprint ^ hash_bytes(key.data(), key.size()), schema_version, codec,
                         bytes);
}

inline std::uint64_t record_checksum(const record& r) noexcept {
    return record_checksum(r.key, r.generation, r.schema_version, r.codec, r.fingerprint, r.bytes.data(),
                           r.bytes.size());
}

// A record's generation as a store may hand it on: commits never publish
// more than max_generation, and recovery commits one above the record's, so
// a record at max_generation or above can only be damage (or forged).
inline bool record_generation_in_range(std::uint64_t generation) noexcept {
    return generation != 0 && generation < max_generation;
}

// Throws errc::record_corrupt unless a record read back from a store (its
// row `well_formed` as the store checks it) matches its stored checksum and
// has a generation in range. `store_name`: describe()'s words.
inline void check_read_record(const record& r, std::uint64_t stored_checksum, bool well_formed,
                              const std::string& store_name) {
    if (record_checksum(r) != stored_checksum || !well_formed)
        throw error(errc::record_corrupt, store_name + ": key '" + r.key + "' (generation " +
                                              std::to_string(r.generation) +
                                              ") fails its checksum; recover from shared memory or the initial "
                                              "state, or remove the key");
    if (!record_generation_in_range(r.generation))
        throw error(errc::record_corrupt, store_name + ": key '" + r.key + "' has generation " +
                                              std::to_string(r.generation) +
                                              ", out of range (only damage makes it); remove the key");
}

inline bool has_prefix(const std::string& key, const std::string& prefix) noexcept {
    return key.size() >= prefix.size() && key.compare(0, prefix.size(), prefix) == 0;
}

} // namespace detail
} // namespace keepsake
