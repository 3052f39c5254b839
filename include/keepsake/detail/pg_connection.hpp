// keepsake/detail/pg_connection.hpp: one libpq connection as the PostgreSQL
// store and the cluster tier use it: made again after it broke, results
// owned, errors as keepsake::error (store_failed) with the server's words.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>
#include <utility>

#include <libpq-fe.h>

#include "keepsake/error.hpp"

namespace keepsake::detail {

inline std::string pg_trimmed(std::string text) {
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
    return text;
}

// bigint in PostgreSQL's binary format: 8 bytes in network order.
inline void pg_put_word(unsigned char* out, std::uint64_t word) noexcept {
    for (int byte = 7; byte >= 0; --byte, word >>= 8) out[byte] = static_cast<unsigned char>(word & 0xff);
}
inline std::uint64_t pg_get_word(const char* in) noexcept {
    std::uint64_t word = 0;
    for (int byte = 0; byte < 8; ++byte) word = (word << 8) | static_cast<unsigned char>(in[byte]);
    return word;
}

// A table name or prefix spliced into SQL: lower-case letters, digits and
// '_' only, so it needs no quoting and cannot inject anything.
inline void pg_check_identifier(const std::string& name, const std::string& option) {
    bool ok = !name.empty() && name.size() <= 48;
    for (char c : name) ok = ok && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_');
    if (!ok)
        throw error(errc::invalid_argument,
                    option + " '" + name + "' must be 1 to 48 lower-case letters, digits or '_'");
}

// The records table (the PostgreSQL store's; ownership's fenced writes go
// into it too), made if missing, and its upsert's tail: the generation rule,
// a row replaced only by a higher generation. `stored` names the row.
inline std::string pg_create_records_table(const std::string& table) {
    return "CREATE TABLE IF NOT EXISTS " + table +
           " (key BYTEA PRIMARY KEY, generation BIGINT NOT NULL, schema_version BIGINT NOT NULL,"
           " codec BIGINT NOT NULL, fingerprint BIGINT NOT NULL, checksum BIGINT NOT NULL, data BYTEA NOT NULL)";
}
inline constexpr const char* pg_records_upsert_rule =
    " ON CONFLICT (key) DO UPDATE SET generation = excluded.generation, schema_version = excluded.schema_version,"
    " codec = excluded.codec, fingerprint = excluded.fingerprint, checksum = excluded.checksum, data = excluded.data"
    " WHERE stored.generation < excluded.generation";

// Owns a PGresult.
class pg_result {
public:
    explicit pg_result(PGresult* held) noexcept : held_(held) {}
    pg_result(const pg_result&) = delete;
    pg_result& operator=(const pg_result&) = delete;
    pg_result(pg_result&& other) noexcept : held_(std::exchange(other.held_, nullptr)) {}
    pg_result& operator=(pg_result&& other) noexcept {
        if (this != &other) {
            PQclear(held_);
            held_ = std::exchange(other.held_, nullptr);
        }
        return *this;
    }
    ~pg_result() { PQclear(held_); }
    PGresult* get() const noexcept { return held_; }
    ExecStatusType status() const noexcept { return PQresultStatus(held_); }
    int rows() const noexcept { return PQntuples(held_); }
    std::string text(int row, int column) const {
        return std::string(PQgetvalue(held_, row, column), static_cast<std::size_t>(PQgetlength(held_, row, column)));
    }

private:
    PGresult* held_;
};

class pg_connection {
public:
    // `what`: how messages name the user ("PostgreSQL store"); `prepare`
    // runs after every (re)connection (tables, prepared statements).
    pg_connection(std::string conninfo, std::string what, std::function<void(pg_connection&)> prepare)
        : conninfo_(std::move(conninfo)), what_(std::move(what)), prepare_(std::move(prepare)) {}
    pg_connection(const pg_connection&) = delete;
    pg_connection& operator=(const pg_connection&) = delete;
    ~pg_connection() { drop(); }

    // Connected, or throws store_failed. After a broken connection (a
    // server restart, a network cut), the next call connects again.
    PGconn* get() {
        if (connection_ != nullptr && PQstatus(connection_) == CONNECTION_OK &&
            PQpipelineStatus(connection_) == PQ_PIPELINE_OFF)
            return connection_;
        drop();
        connection_ = PQconnectdb(conninfo_.c_str());
        if (connection_ == nullptr) throw error(errc::store_failed, what_ + ": out of memory connecting");
        if (PQstatus(connection_) != CONNECTION_OK) {
            const std::string why = last_error();
            drop();
            throw error(errc::store_failed, what_ + ": cannot connect (" + why +
                                                "); is the server up, and does the connection string name it?");
        }
        // The server's notices ("relation ... already exists, skipping") are
        // not for the program's stderr.
        PQsetNoticeProcessor(connection_, [](void*, const char*) {}, nullptr);
        // Set once, at the first connection (made before the object is
        // shared): where() is read without the user's lock.
        if (where_.empty())
            where_ = std::string(PQhost(connection_)) + ":" + PQport(connection_) + "/" + PQdb(connection_);
        try {
            prepare_(*this);
        } catch (...) {
            drop();
            throw;
        }
        return connection_;
    }

    void drop() noexcept {
        if (connection_ != nullptr) PQfinish(connection_);
        connection_ = nullptr;
    }

    // host:port/database, for messages (never the password).
    const std::string& where() const noexcept { return where_; }
    // The connection as it is (null when none), without connecting.
    PGconn* raw() const noexcept { return connection_; }

    std::string last_error() const {
        return connection_ != nullptr ? pg_trimmed(PQerrorMessage(connection_)) : "no connection";
    }

    [[noreturn]] void fail(const std::string& what, const PGresult* why = nullptr) const {
        std::string message = why != nullptr ? pg_trimmed(PQresultErrorMessage(why)) : "";
        if (message.empty()) message = last_error();
        const bool lost = connection_ == nullptr || PQstatus(connection_) != CONNECTION_OK;
        throw error(errc::store_failed, what_ + " " + where_ + ": " + what + ": " + message +
                                            (lost ? " (the connection is lost: the next call connects again)" : ""));
    }

    void expect(const pg_result& got, ExecStatusType wanted, const std::string& what) const {
        if (got.get() == nullptr || got.status() != wanted) fail(what, got.get());
    }

    // A statement without parameters that must succeed.
    void execute(const std::string& sql) {
        pg_result done(PQexec(get(), sql.c_str()));
        if (done.status() != PGRES_COMMAND_OK && done.status() != PGRES_TUPLES_OK) fail("'" + sql + "' failed", done.get());
    }

    void prepare(const char* name, const std::string& sql, int parameters, const Oid* types) {
        pg_result prepared(PQprepare(connection_, name, sql.c_str(), parameters, types));
        expect(prepared, PGRES_COMMAND_OK, std::string("cannot prepare ") + name);
    }

    // Runs `sql` once per process-wide name under an advisory lock, in a
    // transaction: several programs making the same table at once would
    // race on the catalog with IF NOT EXISTS alone.
    void create_once(const std::string& sql) {
        execute("BEGIN");
        try {
            execute("SELECT pg_advisory_xact_lock(7089066737745379179)");
            execute(sql);
            execute("COMMIT");
        } catch (...) {
            if (connection_ != nullptr) pg_result ignored(PQexec(connection_, "ROLLBACK"));
            throw;
        }
    }

    // A prepared statement with text parameters (nullptr: NULL), results in
    // text.
    pg_result run(const char* statement, std::initializer_list<const char*> values) {
        PGconn* connection = get();
        return pg_result(PQexecPrepared(connection, statement, static_cast<int>(values.size()), values.begin(),
                                        nullptr, nullptr, 0));
    }

private:
    std::string conninfo_;
    std::string what_;
    std::function<void(pg_connection&)> prepare_;
    PGconn* connection_ = nullptr;
    std::string where_;
};

} // namespace keepsake::detail
