// keepsake/stores/postgres_store.hpp: records in one PostgreSQL table, for
// programs that outgrow one machine. Link keepsake::postgres (it brings
// libpq, PostgreSQL::PostgreSQL); only code that includes this header needs
// libpq.
//
// - The generation rule is one SQL statement: an upsert whose update only
//   happens WHERE the stored generation is lower, so it also holds between
//   nodes writing the same table.
// - A batch goes as one prepared statement a chunk of up to `rows_per_statement`
//   records: INSERT ... SELECT FROM unnest() of seven arrays in PostgreSQL's
//   binary format, RETURNING the keys it wrote (the others were skipped as
//   not newer). The chunks go in libpq's pipeline mode: one round trip and
//   one implicit transaction for the batch. A batch that fails is rolled
//   back; putting it again is safe, since a record already there is skipped
//   (a reply lost after COMMIT is recognised on the retry). A key twice in a
//   batch goes in two statements (one statement may not update a row twice).
// - Durable when put_batch returns, as far as the server's synchronous_commit
//   says (on, by default).
// - Each row carries the record checksum, checked on every read.
// - A broken connection is made again at the next call (the exporter retries
//   a failed batch).
//
// The table (README, "The PostgreSQL store"):
//   key BYTEA PRIMARY KEY, generation BIGINT, schema_version BIGINT,
//   codec BIGINT, fingerprint BIGINT, checksum BIGINT, data BYTEA
// Keys are BYTEA, so any bytes are a key and keys sort as bytes (list's
// prefix scan); in psql: `select convert_from(key, 'UTF8'), generation from
// keepsake_records`. fingerprint and checksum are 64-bit words stored as
// signed integers (the same bits).
//
// This header is always compiled inline, also in keepsake's compiled mode.
#pragma once

#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include <libpq-fe.h>

#include "keepsake/detail/pg_connection.hpp"
#include "keepsake/error.hpp"
#include "keepsake/store.hpp"

namespace keepsake {

struct postgres_store_options {
    std::string table = "keepsake_records";  // letters, digits and '_'
    std::size_t rows_per_statement = 1024;    // records one statement upserts, at most
    std::size_t bytes_per_statement = 64u << 20;  // and bytes, at most (a larger record goes alone)
    // The cluster tier's (cluster/cluster_store.hpp): an ownership table the
    // store's fenced writes check. Empty: none.
    std::string fence_table;
};

// The largest record the store takes: a statement's message must stay below
// PostgreSQL's 1 GiB.
inline constexpr std::size_t postgres_max_record_bytes = 512u << 20;

class postgres_store : public store {
public:
    // `conninfo`: a libpq connection string or URI ("host=127.0.0.1 port=5432
    // dbname=app user=app", "postgresql://app@db/app"). The table is created
    // if it is missing.
    explicit postgres_store(std::string conninfo, postgres_store_options options = {})
        : options_(std::move(options)),
          connection_(std::move(conninfo), "PostgreSQL store", [this](detail::pg_connection& made) { prepare(made); }) {
        check_options();
        std::lock_guard<std::mutex> lock(mutex_);
        connection_.get();
    }

    postgres_store(const postgres_store&) = delete;
    postgres_store& operator=(const postgres_store&) = delete;

    std::vector<std::size_t> put_batch(const std::vector<record>& records) override {
        std::vector<std::size_t> skipped;
        for (const record& each : records) {
            if (each.generation > static_cast<std::uint64_t>(INT64_MAX))
                throw error(errc::invalid_argument, "generation of key '" + each.key + "' is beyond what PostgreSQL orders");
            if (each.bytes.size() + each.key.size() > postgres_max_record_bytes)
                throw error(errc::invalid_argument, "key '" + each.key + "' holds " + std::to_string(each.bytes.size()) +
                                                        " bytes, more than the PostgreSQL store takes (512 MiB)");
        }
        std::lock_guard<std::mutex> lock(mutex_);
        if (!records.empty()) put_pipelined(records, skipped);
        return skipped;
    }

    std::optional<record> get(const std::string& key) override {
        std::lock_guard<std::mutex> lock(mutex_);
        pg_result found = execute_with("keepsake_select", key);
        connection_.expect(found, PGRES_TUPLES_OK, "cannot read key '" + key + "'");
        if (PQntuples(found.get()) == 0) return std::nullopt;
        return row_to_record(found.get(), key);
    }

    bool remove(const std::string& key) override {
        std::lock_guard<std::mutex> lock(mutex_);
        pg_result removed = execute_with("keepsake_delete", key);
        connection_.expect(removed, PGRES_COMMAND_OK, "cannot remove key '" + key + "'");
        return std::strcmp(PQcmdTuples(removed.get()), "0") != 0;
    }

    std::vector<std::string> list(const std::string& prefix) override {
        std::lock_guard<std::mutex> lock(mutex_);
        pg_result rows = list_from(prefix);
        connection_.expect(rows, PGRES_TUPLES_OK, "cannot list keys");
        std::vector<std::string> keys;
        for (int row = 0; row < PQntuples(rows.get()); ++row) {
            std::string key(PQgetvalue(rows.get(), row, 0), static_cast<std::size_t>(PQgetlength(rows.get(), row, 0)));
            if (!detail::has_prefix(key, prefix)) break;  // keys from the prefix on, in byte order
            keys.push_back(std::move(key));
        }
        return keys;
    }

    std::string describe() const override {
        return "PostgreSQL store " + connection_.where() + " table " + options_.table;
    }

protected:
    using pg_result = detail::pg_result;

    // A fenced batch: each record's object and the token held for it, and
    // the writer (node id, incarnation) in text.
    struct fence_plan {
        std::vector<const std::string*> objects;
        std::vector<std::uint64_t> fences;
        std::string writer[2];
    };

    // One statement's seven parameters: arrays in PostgreSQL's binary format
    // (a header, then each element's length and bytes; bigints as 8 bytes in
    // network order).
    class upsert_arrays {
    public:
        explicit upsert_arrays(bool fenced = false) : columns_(fenced ? 9 : 7) {}
        // Fenced: the object that owns the record, and the token held for it.
        void add(const record& r, const std::string& object, std::uint64_t fence) {
            add(r);
            element(7, object.data(), object.size());
            unsigned char big_endian[8];
            detail::pg_put_word(big_endian, fence);
            element(8, big_endian, 8);
        }
        void add(const record& r) {
            element(0, r.key.data(), r.key.size());
            const std::uint64_t words[5] = {r.generation, r.schema_version, r.codec, r.fingerprint,
                                            detail::record_checksum(r)};
            for (int word = 0; word < 5; ++word) {
                unsigned char big_endian[8];
                detail::pg_put_word(big_endian, words[word]);
                element(1 + word, big_endian, 8);
            }
            element(6, r.bytes.data(), r.bytes.size());
            ++count_;
        }
        std::size_t size() const noexcept { return count_; }
        // Sends the statement; false if libpq could not queue it.
        // Fenced: `writer` is the node and its incarnation, in text.
        bool send(PGconn* connection, const std::string* writer = nullptr) {
            const char* values[11];
            int lengths[11];
            int formats[11] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
            for (int column = 0; column < columns_; ++column) {
                arrays_[column].replace(0, header_size, header(column));
                values[column] = arrays_[column].data();
                lengths[column] = static_cast<int>(arrays_[column].size());
            }
            if (columns_ == 7)
                return PQsendQueryPrepared(connection, "keepsake_upsert", 7, values, lengths, formats, 1) == 1;
            values[9] = writer[0].c_str();
            values[10] = writer[1].c_str();
            lengths[9] = lengths[10] = 0;
            return PQsendQueryPrepared(connection, "keepsake_upsert_fenced", 11, values, lengths, formats, 1) == 1;
        }

    private:
        static constexpr std::size_t header_size = 20;
        int columns_;
        std::string arrays_[9] = {std::string(header_size, '\0'), std::string(header_size, '\0'),
                                  std::string(header_size, '\0'), std::string(header_size, '\0'),
                                  std::string(header_size, '\0'), std::string(header_size, '\0'),
                                  std::string(header_size, '\0'), std::string(header_size, '\0'),
                                  std::string(header_size, '\0')};
        std::uint32_t count_ = 0;

        static void put_int32(std::string& out, std::uint32_t value) {
            for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((value >> shift) & 0xff));
        }
        void element(int column, const void* data, std::size_t size) {
            put_int32(arrays_[column], static_cast<std::uint32_t>(size));
            arrays_[column].append(static_cast<const char*>(data), size);
        }
        // One dimension of count_ elements from index 1, no NULLs.
        std::string header(int column) const {
            std::string out;
            put_int32(out, 1);
            put_int32(out, 0);
            put_int32(out, column == 0 || column == 6 || column == 7 ? 17 : 20);  // bytea, int8
            put_int32(out, count_);
            put_int32(out, 1);
            return out;
        }
    };

    postgres_store_options options_;
    detail::pg_connection connection_;
    std::mutex mutex_;  // one connection

    void check_options() const {
        detail::pg_check_identifier(options_.table, "postgres_store_options::table");
        if (!options_.fence_table.empty()) detail::pg_check_identifier(options_.fence_table, "postgres_store_options::fence_table");
        if (options_.rows_per_statement == 0 || options_.rows_per_statement > 100000)
            throw error(errc::invalid_argument, "postgres_store_options::rows_per_statement must be 1 to 100000");
        if (options_.bytes_per_statement == 0 || options_.bytes_per_statement > postgres_max_record_bytes)
            throw error(errc::invalid_argument, "postgres_store_options::bytes_per_statement must be 1 to 512 MiB");
    }

    // A prepared statement of one bytea parameter, results in binary.
    pg_result execute_with(const char* statement, const std::string& key) {
        const char* values[] = {key.data()};
        const int lengths[] = {static_cast<int>(key.size())};
        const int formats[] = {1};
        return pg_result(PQexecPrepared(connection_.get(), statement, 1, values, lengths, formats, 1));
    }

    // Keys from `prefix` up to the first that does not begin with it (the
    // prefix with its last byte below 0xff raised: none if there is none).
    pg_result list_from(const std::string& prefix) {
        std::string above = prefix;
        while (!above.empty() && static_cast<unsigned char>(above.back()) == 0xff) above.pop_back();
        if (!above.empty()) above.back() = static_cast<char>(static_cast<unsigned char>(above.back()) + 1);
        const char* values[] = {prefix.data(), above.empty() ? nullptr : above.data()};
        const int lengths[] = {static_cast<int>(prefix.size()), static_cast<int>(above.size())};
        const int formats[] = {1, 1};
        return pg_result(PQexecPrepared(connection_.get(), "keepsake_list", 2, values, lengths, formats, 1));
    }

    // After every (re)connection: the table if it is missing, the statements.
    void prepare(detail::pg_connection& made) {
        const std::string& t = options_.table;
        made.create_once(detail::pg_create_records_table(t));
        constexpr Oid bytea = 17, bytea_array = 1001, int8_array = 1016;
        const Oid upsert_types[] = {bytea_array, int8_array, int8_array, int8_array, int8_array, int8_array,
                                    bytea_array};
        // The generation rule, in the statement: a row is updated only over
        // a lower generation; RETURNING names the keys written.
        made.prepare("keepsake_upsert",
                "INSERT INTO " + t + " AS stored (key, generation, schema_version, codec, fingerprint, checksum, data)"
                " SELECT * FROM unnest($1::bytea[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[],"
                " $7::bytea[])" + detail::pg_records_upsert_rule + " RETURNING key",
                7, upsert_types);
        if (!options_.fence_table.empty()) {
            // The cluster's fenced write: each record joined with its
            // object's ownership row, locked (FOR SHARE: a claim waits for
            // it) and holding this writer's token, in the same statement.
            const Oid fenced_types[] = {bytea_array, int8_array, int8_array, int8_array, int8_array, int8_array,
                                        bytea_array, bytea_array, int8_array, 25, 20};
            made.prepare("keepsake_upsert_fenced",
                // LATERAL: one index lookup a record, whatever the planner
                // thinks of the tables' sizes (a generic plan made while the
                // ownership table was small scanned it once a record).
                "WITH held AS (SELECT u.key, u.generation, u.schema_version, u.codec, u.fingerprint, u.checksum, u.data"
                " FROM unnest($1::bytea[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::bytea[],"
                " $8::bytea[], $9::int8[]) AS u(key, generation, schema_version, codec, fingerprint, checksum, data,"
                " object, fence) CROSS JOIN LATERAL (SELECT 1 FROM " + options_.fence_table + " o WHERE o.key = u.object"
                " AND o.owner_node = $10 AND o.owner_incarnation = $11 AND o.fence = u.fence FOR SHARE) AS owned)"
                " INSERT INTO " + t + " AS stored (key, generation, schema_version, codec, fingerprint, checksum, data)"
                " SELECT * FROM held" + detail::pg_records_upsert_rule + " RETURNING key",
                11, fenced_types);
        }
        const Oid key_type[] = {bytea};
        made.prepare("keepsake_select",
                "SELECT generation, schema_version, codec, fingerprint, checksum, data FROM " + t + " WHERE key = $1",
                1, key_type);
        made.prepare("keepsake_delete", "DELETE FROM " + t + " WHERE key = $1", 1, key_type);
        const Oid range_types[] = {bytea, bytea};
        made.prepare("keepsake_list", "SELECT key FROM " + t + " WHERE key >= $1 AND ($2::bytea IS NULL OR key < $2)"
                                      " ORDER BY key", 2, range_types);
    }

    // The records in statements of distinct keys, each at most
    // rows_per_statement long and bytes_per_statement large (a larger
    // record alone): [first, end) of `records` each.
    std::vector<std::pair<std::size_t, std::size_t>> split(const std::vector<record>& records) const {
        std::vector<std::pair<std::size_t, std::size_t>> statements;
        std::unordered_set<std::string_view> keys;
        std::size_t first = 0;
        std::size_t bytes = 0;
        for (std::size_t index = 0; index < records.size(); ++index) {
            const std::size_t size = records[index].bytes.size() + records[index].key.size() + 64;
            const bool full = index - first == options_.rows_per_statement ||
                              (index != first && bytes + size > options_.bytes_per_statement);
            if (full || !keys.insert(records[index].key).second) {
                statements.emplace_back(first, index);
                first = index;
                bytes = 0;
                keys.clear();
                keys.insert(records[index].key);
            }
            bytes += size;
        }
        statements.emplace_back(first, records.size());
        return statements;
    }

    // Every statement sent, one sync (the implicit transaction commits
    // there), then every reply read: the keys written and a null for each
    // statement, then the sync's result.
    // Whatever goes wrong in a pipeline (an error, out of memory), the
    // connection is dropped, never left in pipeline mode with replies unread.
    void put_pipelined(const std::vector<record>& records, std::vector<std::size_t>& skipped,
                       const fence_plan* fenced = nullptr) {
        const auto statements = split(records);
        PGconn* connection = connection_.get();
        if (PQenterPipelineMode(connection) != 1) abandon_pipeline("cannot enter pipeline mode");
        std::string failure;
        try {
            failure = pipeline(connection, records, statements, skipped, fenced);
        } catch (...) {
            connection_.drop();
            throw;
        }
        if (!failure.empty()) throw error(errc::store_failed, describe() + ": " + failure + " (the batch was rolled back)");
    }

    // Sends and reads one batch; returns why the server refused it ("": it
    // did not), the connection back out of pipeline mode either way.
    std::string pipeline(PGconn* connection, const std::vector<record>& records,
                         const std::vector<std::pair<std::size_t, std::size_t>>& statements,
                         std::vector<std::size_t>& skipped, const fence_plan* fenced) {
        for (const auto& [first, end] : statements) {
            upsert_arrays arrays(fenced != nullptr);
            for (std::size_t index = first; index < end; ++index) {
                if (fenced != nullptr) arrays.add(records[index], *fenced->objects[index], fenced->fences[index]);
                else arrays.add(records[index]);
            }
            if (!arrays.send(connection, fenced != nullptr ? fenced->writer : nullptr))
                abandon_pipeline("cannot send key '" + records[first].key + "'");
        }
        if (PQpipelineSync(connection) != 1) abandon_pipeline("cannot send the batch");
        std::string failure;  // the first statement the server refused
        for (const auto& [first, end] : statements) {
            pg_result reply(PQgetResult(connection));
            if (reply.get() == nullptr) abandon_pipeline("the server did not answer the batch");
            if (reply.status() == PGRES_TUPLES_OK) {
                note_skipped(records, first, end, reply.get(), skipped);
            } else if (failure.empty()) {
                failure = "cannot write key '" + records[first].key + "' and the " + std::to_string(end - first - 1) +
                          " records after it: " + detail::pg_trimmed(PQresultErrorMessage(reply.get()));
            }
            pg_result end_of_reply(PQgetResult(connection));
        }
        pg_result sync(PQgetResult(connection));
        if (sync.get() == nullptr || sync.status() != PGRES_PIPELINE_SYNC)
            abandon_pipeline(failure.empty() ? "the batch did not complete" : failure);
        PQexitPipelineMode(connection);
        return failure;
    }

    // The records of [first, end) whose keys the statement did not return.
    static void note_skipped(const std::vector<record>& records, std::size_t first, std::size_t end,
                             const PGresult* written, std::vector<std::size_t>& skipped) {
        std::unordered_set<std::string_view> keys;
        for (int row = 0; row < PQntuples(written); ++row)
            keys.emplace(PQgetvalue(written, row, 0), static_cast<std::size_t>(PQgetlength(written, row, 0)));
        for (std::size_t index = first; index < end; ++index)
            if (keys.count(records[index].key) == 0) skipped.push_back(index);
    }

    // A pipeline that went wrong midway: the connection is dropped (and made
    // again at the next call), which is simpler than draining what is left.
    [[noreturn]] void abandon_pipeline(const std::string& what) {
        const std::string why = connection_.last_error();
        connection_.drop();
        throw error(errc::store_failed, describe() + ": " + what + ": " + why + " (the next call connects again)");
    }

    record row_to_record(const PGresult* row, const std::string& key, int at = 0) const {
        for (int column = 0; column < 5; ++column)
            if (PQgetlength(row, at, column) != 8 || PQgetisnull(row, at, column))
                throw error(errc::record_corrupt, describe() + ": key '" + key + "' has a damaged row; remove the key");
        record r;
        r.key = key;
        r.generation = detail::pg_get_word(PQgetvalue(row, at, 0));
        r.schema_version = static_cast<std::uint32_t>(detail::pg_get_word(PQgetvalue(row, at, 1)));
        r.codec = static_cast<std::uint32_t>(detail::pg_get_word(PQgetvalue(row, at, 2)));
        r.fingerprint = detail::pg_get_word(PQgetvalue(row, at, 3));
        const std::uint64_t checksum = detail::pg_get_word(PQgetvalue(row, at, 4));
        const auto* data = reinterpret_cast<const std::byte*>(PQgetvalue(row, at, 5));
        r.bytes.assign(data, data + PQgetlength(row, at, 5));
        detail::check_read_record(r, checksum, true, describe());
        return r;
    }
};

} // namespace keepsake
