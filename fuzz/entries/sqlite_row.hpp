// fuzz/entries/sqlite_row.hpp: the fuzzer's bytes are one row of the SQLite
// store's table, inserted behind the store's back (another connection), then
// read with sqlite_store::get and recovered into a keeper with
// keepsake::recover. The input is a small header and the data:
//
//   byte 0       control: bits 0-2 the kept kind (common.hpp, modulo 5),
//                3 reseal (the row's checksum computed again), 4 stamp the
//                kind's identity (fingerprint, schema, codec) first, 5 commit
//                a state to shared memory before recovering, 6 the data as
//                TEXT instead of a BLOB, 7 the generation as a REAL
//   bytes 1-32   generation (8), schema_version (4), codec (4),
//                fingerprint (8), checksum (8), in this machine's order
//   the rest     the data column
//
// A short input is read as if padded with zeros.
#pragma once

#include "entries/common.hpp"
#include "entries/reseal.hpp"

#include <sqlite3.h>

#include <keepsake/stores/sqlite_store.hpp>

namespace keepsake_fuzz {

namespace sqlite_row_fuzz {

inline constexpr std::size_t header_size = 33;

enum control_bits : std::uint8_t {
    reseal = 1u << 3,
    stamp = 1u << 4,
    memory_first = 1u << 5,
    data_as_text = 1u << 6,
    generation_as_real = 1u << 7,
};

struct row {
    std::uint8_t control = 0;
    std::uint64_t generation = 0;
    std::uint32_t schema_version = 0;
    std::uint32_t codec = 0;
    std::uint64_t fingerprint = 0;
    std::uint64_t checksum = 0;
    std::string data;
};

inline row parse(const std::string& bytes) {
    char header[header_size] = {};
    std::memcpy(header, bytes.data(), std::min(bytes.size(), header_size));
    row r;
    r.control = static_cast<std::uint8_t>(header[0]);
    std::memcpy(&r.generation, header + 1, 8);
    std::memcpy(&r.schema_version, header + 9, 4);
    std::memcpy(&r.codec, header + 13, 4);
    std::memcpy(&r.fingerprint, header + 17, 8);
    std::memcpy(&r.checksum, header + 25, 8);
    if (bytes.size() > header_size) r.data = bytes.substr(header_size);
    return r;
}

// The input that parses as `r` (for the seed generator).
inline std::string format(const row& r) {
    char header[header_size] = {};
    header[0] = static_cast<char>(r.control);
    std::memcpy(header + 1, &r.generation, 8);
    std::memcpy(header + 9, &r.schema_version, 4);
    std::memcpy(header + 13, &r.codec, 4);
    std::memcpy(header + 17, &r.fingerprint, 8);
    std::memcpy(header + 25, &r.checksum, 8);
    return std::string(header, header_size) + r.data;
}

inline std::uint64_t checksum_of(const row& r, const std::string& key) {
    return keepsake::detail::record_checksum(key, r.generation, r.schema_version, r.codec, r.fingerprint,
                                             reinterpret_cast<const std::byte*>(r.data.data()), r.data.size());
}

inline sqlite3_int64 as_signed(std::uint64_t word) {
    sqlite3_int64 value;
    std::memcpy(&value, &word, sizeof(value));
    return value;
}

struct database {
    std::string path = sub_directory("sqlite") + "/rows.db";
    keepsake::sqlite_store store{path, {keepsake::sqlite_sync::off, "keepsake_records", 5000}};
    sqlite3* raw = nullptr;  // the other connection, behind the store's back
    sqlite3_stmt* clear = nullptr;
    sqlite3_stmt* insert = nullptr;

    database() {
        check(sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE, nullptr) == SQLITE_OK, "cannot open " + path);
        check(sqlite3_prepare_v2(raw, "DELETE FROM keepsake_records", -1, &clear, nullptr) == SQLITE_OK &&
                  sqlite3_prepare_v2(raw,
                                     "INSERT INTO keepsake_records (key, generation, schema_version, codec, "
                                     "fingerprint, checksum, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                                     -1, &insert, nullptr) == SQLITE_OK,
              std::string("cannot prepare: ") + sqlite3_errmsg(raw));
    }

    void put(const std::string& key, const row& r) {
        check(sqlite3_step(clear) == SQLITE_DONE, std::string("cannot clear the table: ") + sqlite3_errmsg(raw));
        sqlite3_reset(clear);
        sqlite3_bind_text(insert, 1, key.data(), static_cast<int>(key.size()), SQLITE_TRANSIENT);  // TEXT keys, as the store writes them
        if (r.control & generation_as_real) sqlite3_bind_double(insert, 2, static_cast<double>(r.generation));
        else sqlite3_bind_int64(insert, 2, as_signed(r.generation));
        sqlite3_bind_int64(insert, 3, r.schema_version);
        sqlite3_bind_int64(insert, 4, r.codec);
        sqlite3_bind_int64(insert, 5, as_signed(r.fingerprint));
        sqlite3_bind_int64(insert, 6, as_signed(r.checksum));
        if (r.control & data_as_text) sqlite3_bind_text(insert, 7, r.data.c_str(), static_cast<int>(r.data.size()), SQLITE_TRANSIENT);
        else if (r.data.empty()) sqlite3_bind_zeroblob(insert, 7, 0);
        else sqlite3_bind_blob(insert, 7, r.data.data(), static_cast<int>(r.data.size()), SQLITE_TRANSIENT);
        const int step = sqlite3_step(insert);
        sqlite3_reset(insert);
        sqlite3_clear_bindings(insert);
        check(step == SQLITE_DONE, std::string("cannot insert the row: ") + sqlite3_errmsg(raw));
    }
};

inline database& db() {
    static database* opened = new database();
    return *opened;
}

// What get() handed on is the row as inserted.
inline void check_against_row(const keepsake::record& got, const row& r, const std::string& key) {
    const bool exact_generation = !(r.control & generation_as_real);
    check(got.key == key && (!exact_generation || got.generation == r.generation) &&
              got.schema_version == r.schema_version && got.codec == r.codec && got.fingerprint == r.fingerprint &&
              keepsake::detail::record_generation_in_range(got.generation),
          "get() handed on words the row does not hold");
    check(got.bytes.size() == r.data.size() &&
              (r.data.empty() || std::memcmp(got.bytes.data(), r.data.data(), r.data.size()) == 0),
          "get() handed on bytes the row does not hold");
    check(!(r.control & data_as_text), "get() took TEXT for the data BLOB");
    check(keepsake::detail::record_checksum(got) == r.checksum, "get() handed on a row that fails its checksum");
}

} // namespace sqlite_row_fuzz

inline int sqlite_row_entry(const std::uint8_t* data, std::size_t size) {
    using namespace sqlite_row_fuzz;
    row r = parse(std::string(reinterpret_cast<const char*>(data), size));
    with_kind(r.control & 7u, [&](auto type, const char* key) {
        using T = typename decltype(type)::type;
        if (r.control & stamp) {
            const identity as = identity_of<T>();
            r.fingerprint = as.fingerprint;
            r.schema_version = as.schema_version;
            r.codec = as.codec;
        }
        if (r.control & reseal) r.checksum = checksum_of(r, key);
        db().put(key, r);
        std::optional<keepsake::record> got;
        const auto failed = expected("sqlite_store::get", [&] { got = db().store.get(key); });
        if (failed) check(*failed == keepsake::errc::record_corrupt, "get() failed with error code " +
                                                                         std::to_string(static_cast<int>(*failed)));
        else check(got.has_value(), "get() found no row where one is");
        if (got) check_against_row(*got, r, key);
        recover_and_check<T>(db().store, key, (r.control & memory_first) != 0);
    });
    return 0;
}

} // namespace keepsake_fuzz
