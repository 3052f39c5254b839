// keepsake/stores/sqlite_store.hpp: records in one SQLite table, the
// embedded default. Link keepsake::sqlite (it brings SQLite::SQLite3); only
// code that includes this header needs SQLite.
//
// WAL journal; one transaction per batch; an upsert that only replaces a row
// with a higher generation ("never an older over a newer" is one SQL
// statement, so it also holds between processes sharing the file). Each row
// carries the record checksum, checked on every read.
//
// The table (README, "The SQLite store's table"), readable with the sqlite3
// shell (`select key, generation from keepsake_records where key = 'app/x'`):
//   key TEXT PRIMARY KEY, generation INTEGER, schema_version INTEGER,
//   codec INTEGER, fingerprint INTEGER, checksum INTEGER, data BLOB
// fingerprint and checksum are 64-bit words stored as signed integers (the
// same bits). A table made by keepsake 0.1.0 before keys were TEXT (key BLOB)
// is migrated when a store opens it read-write.
//
// This header is always compiled inline, also in keepsake's compiled mode:
// building it into libkeepsake would make every user link SQLite.
#pragma once

#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>

#include <fcntl.h>
#include <unistd.h>

#include <sqlite3.h>

#include "keepsake/error.hpp"
#include "keepsake/store.hpp"

namespace keepsake {

// PRAGMA synchronous. With WAL, `normal` survives a crash of the program
// but a power cut may lose the last batches; `full` syncs every batch (one
// fsync per batch, so it costs little per record when batches are large).
enum class sqlite_sync { off, normal, full };

struct sqlite_store_options {
    sqlite_sync synchronous = sqlite_sync::full;
    std::string table = "keepsake_records";  // letters, digits and '_'
    int busy_timeout_ms = 5000;              // waiting for another writer of the file
    // Open an existing store to read it only (tools): nothing is created,
    // migrated or written, and put_batch/remove throw errc::invalid_argument.
    bool read_only = false;
};

class sqlite_store : public store {
public:
    explicit sqlite_store(const std::string& path, sqlite_store_options options = {})
        : path_(path), options_(std::move(options)) {
        check_table_name();
        if (!options_.read_only) create_private(path);
        const int mode = options_.read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
        if (sqlite3_open_v2(path.c_str(), &db_, mode | SQLITE_OPEN_NOMUTEX, nullptr) != SQLITE_OK) {
            const std::string why = db_ ? sqlite3_errmsg(db_) : "out of memory";
            sqlite3_close(db_);
            throw error(errc::store_failed, "cannot open SQLite store " + path + ": " + why);
        }
        try {
            configure();
        } catch (...) {
            finalize_all();
            sqlite3_close(db_);
            throw;
        }
    }

    sqlite_store(const sqlite_store&) = delete;
    sqlite_store& operator=(const sqlite_store&) = delete;

    ~sqlite_store() override {
        finalize_all();
        sqlite3_close(db_);
    }

    std::vector<std::size_t> put_batch(const std::vector<record>& records) override {
        std::vector<std::size_t> skipped;
        if (records.empty()) return skipped;
        refuse_if_read_only("put records");
        std::lock_guard<std::mutex> lock(mutex_);
        execute("BEGIN IMMEDIATE");
        try {
            for (std::size_t i = 0; i < records.size(); ++i)
                if (!upsert(records[i])) skipped.push_back(i);
            execute("COMMIT");
        } catch (...) {
            sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
            throw;
        }
        return skipped;
    }

    std::optional<record> get(const std::string& key) override {
        std::lock_guard<std::mutex> lock(mutex_);
        statement_reset reset{select_};
        bind_key(select_, key);
        const int step = sqlite3_step(select_);
        if (step == SQLITE_DONE) return std::nullopt;
        if (step != SQLITE_ROW) fail("cannot read key '" + key + "'");
        return row_to_record(key);
    }

    bool remove(const std::string& key) override {
        refuse_if_read_only("remove key '" + key + "'");
        std::lock_guard<std::mutex> lock(mutex_);
        statement_reset reset{delete_};
        bind_key(delete_, key);
        if (sqlite3_step(delete_) != SQLITE_DONE) fail("cannot remove key '" + key + "'");
        return sqlite3_changes(db_) > 0;
    }

    std::vector<std::string> list(const std::string& prefix) override {
        std::lock_guard<std::mutex> lock(mutex_);
        statement_reset reset{list_};
        bind_key(list_, prefix);  // keys from the prefix on, in order: stop at the first without it
        std::vector<std::string> keys;
        for (int step = sqlite3_step(list_); step != SQLITE_DONE; step = sqlite3_step(list_)) {
            if (step != SQLITE_ROW) fail("cannot list keys");
            std::string key(reinterpret_cast<const char*>(sqlite3_column_text(list_, 0)),
                            static_cast<std::size_t>(sqlite3_column_bytes(list_, 0)));
            if (!detail::has_prefix(key, prefix)) break;
            keys.push_back(std::move(key));
        }
        return keys;
    }

    std::string describe() const override { return "SQLite store " + path_; }

private:
    // Resets a statement and its bindings however the call that used it ends.
    struct statement_reset {
        sqlite3_stmt* statement;
        ~statement_reset() {
            sqlite3_reset(statement);
            sqlite3_clear_bindings(statement);
        }
    };

    std::string path_;
    sqlite_store_options options_;
    sqlite3* db_ = nullptr;
    sqlite3_stmt* upsert_ = nullptr;
    sqlite3_stmt* select_ = nullptr;
    sqlite3_stmt* delete_ = nullptr;
    sqlite3_stmt* list_ = nullptr;
    std::mutex mutex_;  // one connection; SQLite is opened without its own mutex

    // SQLite would create the file 0644 (and its -wal and -shm files with
    // the file's mode): made first, 0600, the state is this user's alone,
    // like the segments and the file store. An existing file is left as it is.
    static void create_private(const std::string& path) {
        // SQLite's names for a database of its own, and URIs, are its to open.
        if (path.empty() || path == ":memory:" || path.compare(0, 5, "file:") == 0) return;
        const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd >= 0) ::close(fd);
        else if (errno != EEXIST)
            throw error(errc::store_failed, "cannot create SQLite store " + path + ": " + std::strerror(errno) +
                                                "; does its directory exist, and may this user write there?");
    }

    void check_table_name() const {
        bool ok = !options_.table.empty() && options_.table.size() <= 64;
        for (char c : options_.table)
            ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_');
        if (!ok)
            throw error(errc::invalid_argument, "sqlite_store_options::table '" + options_.table +
                                                    "' must be 1 to 64 letters, digits or '_'");
    }

    void configure() {
        sqlite3_busy_timeout(db_, options_.busy_timeout_ms);
        const std::string& t = options_.table;
        if (options_.read_only) {
            const std::string key_type = key_column_type();
            if (key_type.empty())
                throw error(errc::not_found, describe() + " has no table '" + t +
                                                 "': it is not a keepsake store (or another table was given)");
            if (key_type != "TEXT")
                throw error(errc::layout_mismatch,
                            describe() + ": table '" + t + "' was made by keepsake 0.1.0 (BLOB keys); open the "
                            "store read-write once (any keepsake program does) to migrate it");
        } else {
            static const char* const levels[] = {"PRAGMA synchronous=OFF", "PRAGMA synchronous=NORMAL",
                                                 "PRAGMA synchronous=FULL"};
            execute(levels[static_cast<int>(options_.synchronous)]);
            // A store that is already ours opens with reads only: a restart
            // must not wait on a lock another connection holds, nor need
            // write access, before recovery can read its records.
            const bool ready = journal_mode() == "wal" && key_column_type() == "TEXT";
            if (!ready) {
                execute("PRAGMA journal_mode=WAL");
                create_or_migrate();
            }
        }
        upsert_ = prepare("INSERT INTO " + t +
                          " (key, generation, schema_version, codec, fingerprint, checksum, data)"
                          " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(key) DO UPDATE SET"
                          " generation = excluded.generation, schema_version = excluded.schema_version,"
                          " codec = excluded.codec, fingerprint = excluded.fingerprint,"
                          " checksum = excluded.checksum, data = excluded.data"
                          " WHERE excluded.generation > " + t + ".generation");
        select_ = prepare("SELECT generation, schema_version, codec, fingerprint, checksum, data FROM " + t +
                          " WHERE key = ?1");
        delete_ = prepare("DELETE FROM " + t + " WHERE key = ?1");
        list_ = prepare("SELECT key FROM " + t + " WHERE key >= ?1 ORDER BY key");
    }

    static std::string columns(const std::string& key_type) {
        return " (key " + key_type +
               " PRIMARY KEY NOT NULL, generation INTEGER NOT NULL, schema_version INTEGER NOT NULL,"
               " codec INTEGER NOT NULL, fingerprint INTEGER NOT NULL, checksum INTEGER NOT NULL,"
               " data BLOB NOT NULL) WITHOUT ROWID";
    }

    std::string journal_mode() {
        sqlite3_stmt* query = prepare("PRAGMA journal_mode");
        std::string mode;
        const int step = sqlite3_step(query);
        if (step == SQLITE_ROW) mode = reinterpret_cast<const char*>(sqlite3_column_text(query, 0));
        sqlite3_finalize(query);
        if (step != SQLITE_ROW) fail("cannot read the journal mode");
        return mode;
    }

    // The declared type of the table's key column; empty if no such table.
    std::string key_column_type() {
        sqlite3_stmt* info = prepare("SELECT type FROM pragma_table_info('" + options_.table + "') WHERE name = 'key'");
        std::string type;
        const int step = sqlite3_step(info);
        if (step == SQLITE_ROW) type = reinterpret_cast<const char*>(sqlite3_column_text(info, 0));
        sqlite3_finalize(info);
        if (step != SQLITE_ROW && step != SQLITE_DONE) fail("cannot read the schema of table '" + options_.table + "'");
        return type;
    }

    // Creates the table, or moves the rows of a 0.1.0 table (key BLOB) into
    // one with TEXT keys, in one transaction: the same bytes, now text, so
    // the sqlite3 shell finds them by `key = 'app/x'`. Checksums cover the
    // key's bytes, which do not change.
    void create_or_migrate() {
        const std::string& t = options_.table;
        execute("BEGIN IMMEDIATE");
        try {
            const std::string key_type = key_column_type();
            if (key_type.empty()) {
                execute("CREATE TABLE " + t + columns("TEXT"));
            } else if (key_type == "BLOB") {
                execute("CREATE TABLE " + t + "_migrating" + columns("TEXT"));
                execute("INSERT INTO " + t + "_migrating SELECT CAST(key AS TEXT), generation, schema_version,"
                        " codec, fingerprint, checksum, data FROM " + t);
                execute("DROP TABLE " + t);
                execute("ALTER TABLE " + t + "_migrating RENAME TO " + t);
            }
            execute("COMMIT");
        } catch (...) {
            sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
            throw;
        }
    }

    void refuse_if_read_only(const std::string& what) const {
        if (options_.read_only)
            throw error(errc::invalid_argument, describe() + " was opened read-only: cannot " + what);
    }

    void finalize_all() noexcept {
        for (sqlite3_stmt* statement : {upsert_, select_, delete_, list_}) sqlite3_finalize(statement);
    }

    [[noreturn]] void fail(const std::string& what) const {
        const int code = sqlite3_extended_errcode(db_);
        const std::string hint = (code & 0xff) == SQLITE_FULL ? " (disk full: free space; the exporter retries)"
                                 : (code & 0xff) == SQLITE_BUSY ? " (another process holds the database)" : "";
        throw error(errc::store_failed, describe() + ": " + what + ": " + sqlite3_errmsg(db_) + hint);
    }

    void execute(const std::string& sql) {
        if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) fail("'" + sql + "' failed");
    }

    sqlite3_stmt* prepare(const std::string& sql) {
        sqlite3_stmt* statement = nullptr;
        if (sqlite3_prepare_v3(db_, sql.c_str(), static_cast<int>(sql.size()), SQLITE_PREPARE_PERSISTENT, &statement,
                               nullptr) != SQLITE_OK)
            fail("cannot prepare '" + sql + "'");
        return statement;
    }

    static void bind_key(sqlite3_stmt* statement, const std::string& key) {
        sqlite3_bind_text(statement, 1, key.data(), static_cast<int>(key.size()), SQLITE_STATIC);
    }

    // SQLite integers are signed 64-bit; the unsigned words go in as their
    // bit pattern and come back the same.
    static sqlite3_int64 as_signed(std::uint64_t word) noexcept {
        sqlite3_int64 value;
        std::memcpy(&value, &word, sizeof(value));
        return value;
    }

    static std::uint64_t as_unsigned(sqlite3_int64 value) noexcept {
        std::uint64_t word;
        std::memcpy(&word, &value, sizeof(word));
        return word;
    }

    // False if the row kept its equal or higher generation.
    bool upsert(const record& r) {
        if (r.generation > static_cast<std::uint64_t>(INT64_MAX))
            throw error(errc::invalid_argument, "generation of key '" + r.key + "' is beyond what SQLite orders");
        statement_reset reset{upsert_};
        bind_key(upsert_, r.key);
        sqlite3_bind_int64(upsert_, 2, static_cast<sqlite3_int64>(r.generation));
        sqlite3_bind_int64(upsert_, 3, r.schema_version);
        sqlite3_bind_int64(upsert_, 4, r.codec);
        sqlite3_bind_int64(upsert_, 5, as_signed(r.fingerprint));
        sqlite3_bind_int64(upsert_, 6, as_signed(detail::record_checksum(r)));
        // A zero-length blob must still be a blob, not NULL.
        static const std::byte empty{};
        sqlite3_bind_blob(upsert_, 7, r.bytes.empty() ? &empty : r.bytes.data(), static_cast<int>(r.bytes.size()),
                          SQLITE_STATIC);
        if (sqlite3_step(upsert_) != SQLITE_DONE) fail("cannot write key '" + r.key + "'");
        return sqlite3_changes(db_) > 0;
    }

    record row_to_record(const std::string& key) const {
        record r;
        r.key = key;
        r.generation = as_unsigned(sqlite3_column_int64(select_, 0));
        r.schema_version = static_cast<std::uint32_t>(sqlite3_column_int64(select_, 1));
        r.codec = static_cast<std::uint32_t>(sqlite3_column_int64(select_, 2));
        r.fingerprint = as_unsigned(sqlite3_column_int64(select_, 3));
        const std::uint64_t checksum = as_unsigned(sqlite3_column_int64(select_, 4));
        const auto* data = static_cast<const std::byte*>(sqlite3_column_blob(select_, 5));
        const int size = sqlite3_column_bytes(select_, 5);
        if (size > 0) r.bytes.assign(data, data + size);
        detail::check_read_record(r, checksum, sqlite3_column_type(select_, 5) == SQLITE_BLOB, describe());
        return r;
    }
};

} // namespace keepsake
