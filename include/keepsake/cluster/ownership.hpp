// keepsake/cluster/ownership.hpp: who owns which object, with fencing
// tokens, in PostgreSQL (issue 14, step 3). Link keepsake::postgres.
//
// One row an object in `<prefix>objects`: its key, its owner (node and
// incarnation; none after a release), a fencing token that only grows, and
// whether it is permanently crashed.
//   - claim(key): takes an object that has no owner, or whose owner's
//     incarnation is out (declared dead, or superseded by a restart under
//     the same id); the token goes up by one.
//   - claim_orphans(n): the same for up to n orphans at once. Many nodes may
//     sweep at once: each orphan row is locked by the one claim that takes
//     it (FOR UPDATE SKIP LOCKED, its condition checked again on the newest
//     row), so each is claimed by exactly one.
//   - put_fenced(record, token): the object's state written into the
//     records table (the PostgreSQL store's, same columns and generation
//     rule) only while this node still holds that token, checked in the same
//     statement, which locks the object's row (FOR SHARE): a claim that
//     races with it waits for it, so no write of a fenced-out node lands
//     after the takeover.
//
// What is guaranteed: at most one node holds an object's current token, and
// only the holder's writes land. What is not: a node that was paused (or cut
// off) keeps running its objects' code until it next talks to the database;
// its writes fail from then on, and it must stop them (membership::fenced()).
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "keepsake/cluster/membership.hpp"
#include "keepsake/detail/pg_connection.hpp"
#include "keepsake/error.hpp"
#include "keepsake/store.hpp"

namespace keepsake::cluster {

// An object's owner as the database says.
struct owner_info {
    std::string node_id;          // empty: nobody (released, or never claimed)
    std::uint64_t incarnation = 0;
    std::string address;          // the owner's, as it registered it (for a gateway)
    std::uint64_t fence = 0;      // the current token
    bool owner_alive = false;     // its incarnation is current and not declared dead
};

// A claimed object: its key and the token this node holds.
struct claimed {
    std::string key;
    std::uint64_t fence = 0;
};

class ownership {
public:
    // `self`: this node (its id and incarnation). `records_table`: where
    // put_fenced() writes (a postgres_store's table, to share it).
    ownership(std::string conninfo, const membership& self, std::string table_prefix = "keepsake_",
              std::string records_table = "keepsake_records")
        : self_(self),
          prefix_(std::move(table_prefix)),
          records_(std::move(records_table)),
          connection_(std::move(conninfo), "cluster ownership", [this](detail::pg_connection& made) { prepare(made); }) {
        detail::pg_check_identifier(prefix_, "ownership table prefix");
        detail::pg_check_identifier(records_, "ownership records table");
        std::lock_guard<std::mutex> lock(mutex_);
        connection_.get();
    }

    // Takes `key` if it has no live owner; its new token, or nothing (then
    // owner_of says who has it).
    std::optional<std::uint64_t> claim(const std::string& key) {
        std::lock_guard<std::mutex> lock(mutex_);
        const std::string incarnation = std::to_string(self_.incarnation());
        detail::pg_result got = connection_.run("keepsake_claim", {key.c_str(), self_.node_id().c_str(), incarnation.c_str()});
        connection_.expect(got, PGRES_TUPLES_OK, "cannot claim '" + key + "'");
        if (got.rows() == 0) return std::nullopt;
        return std::stoull(got.text(0, 0));
    }

    // Up to `limit` objects whose owner is out, claimed by this node.
    std::vector<claimed> claim_orphans(std::size_t limit) {
        std::lock_guard<std::mutex> lock(mutex_);
        const std::string incarnation = std::to_string(self_.incarnation());
        const std::string most = std::to_string(limit);
        detail::pg_result got = connection_.run("keepsake_claim_orphans",
                                                {self_.node_id().c_str(), incarnation.c_str(), most.c_str()});
        connection_.expect(got, PGRES_TUPLES_OK, "cannot claim orphans");
        std::vector<claimed> taken;
        for (int row = 0; row < got.rows(); ++row) taken.push_back({got.text(row, 0), std::stoull(got.text(row, 1))});
        return taken;
    }

    std::optional<owner_info> owner_of(const std::string& key) {
        std::lock_guard<std::mutex> lock(mutex_);
        detail::pg_result got = connection_.run("keepsake_owner_of", {key.c_str()});
        connection_.expect(got, PGRES_TUPLES_OK, "cannot read the owner of '" + key + "'");
        if (got.rows() == 0) return std::nullopt;
        owner_info owner;
        owner.node_id = got.text(0, 0);
        owner.incarnation = got.text(0, 1).empty() ? 0 : std::stoull(got.text(0, 1));
        owner.fence = std::stoull(got.text(0, 2));
        owner.address = got.text(0, 3);
        owner.owner_alive = got.text(0, 4) == "t";
        return owner;
    }

    // Gives `key` up (a graceful stop, a rehome): only while holding `fence`.
    bool release(const std::string& key, std::uint64_t fence) {
        std::lock_guard<std::mutex> lock(mutex_);
        const std::string token = std::to_string(fence);
        detail::pg_result got = connection_.run("keepsake_release", {key.c_str(), self_.node_id().c_str(), token.c_str()});
        connection_.expect(got, PGRES_TUPLES_OK, "cannot release '" + key + "'");
        return got.rows() != 0;
    }

    // Marks `key` permanently crashed (cluster-wide: never claimed again)
    // while holding `fence`.
    bool mark_permanently_crashed(const std::string& key, std::uint64_t fence) {
        std::lock_guard<std::mutex> lock(mutex_);
        const std::string token = std::to_string(fence);
        detail::pg_result got =
            connection_.run("keepsake_crashed", {key.c_str(), self_.node_id().c_str(), token.c_str()});
        connection_.expect(got, PGRES_TUPLES_OK, "cannot mark '" + key + "' permanently crashed");
        return got.rows() != 0;
    }

    // Writes `r` (under r.key, which names the object) into the records
    // table while this node holds `fence` for it; false when fenced out (the
    // node must stop the object) or when the stored generation is not older.
    bool put_fenced(const record& r, std::uint64_t fence) {
        std::lock_guard<std::mutex> lock(mutex_);
        const std::string token = std::to_string(fence);
        const std::string words[5] = {std::to_string(r.generation), std::to_string(r.schema_version),
                                      std::to_string(r.codec), std::to_string(static_cast<std::int64_t>(r.fingerprint)),
                                      std::to_string(static_cast<std::int64_t>(detail::record_checksum(r)))};
        const char* values[] = {r.key.data(), self_.node_id().c_str(), token.c_str(), words[0].c_str(),
                                words[1].c_str(), words[2].c_str(), words[3].c_str(), words[4].c_str(),
                                reinterpret_cast<const char*>(r.bytes.data())};
        const int lengths[] = {static_cast<int>(r.key.size()), 0, 0, 0, 0, 0, 0, 0, static_cast<int>(r.bytes.size())};
        const int formats[] = {1, 0, 0, 0, 0, 0, 0, 0, 1};
        static const char empty = 0;
        if (r.bytes.empty()) values[8] = &empty;
        detail::pg_result got(
            PQexecPrepared(connection_.get(), "keepsake_put_fenced", 9, values, lengths, formats, 0));
        connection_.expect(got, PGRES_COMMAND_OK, "cannot write '" + r.key + "'");
        return std::string(PQcmdTuples(got.get())) != "0";
    }

private:
    const membership& self_;
    std::string prefix_;
    std::string records_;
    detail::pg_connection connection_;
    std::mutex mutex_;

    // An owner is out when its node row says another incarnation now, or
    // that its incarnation was declared dead; an object without an owner
    // (released) is free.
    std::string owner_out(const std::string& object) const {
        return "(" + object + ".owner_node IS NULL OR NOT EXISTS (SELECT 1 FROM " + prefix_ + "nodes n WHERE n.node_id = " +
               object + ".owner_node AND n.incarnation = " + object + ".owner_incarnation AND n.dead_incarnation < n.incarnation))";
    }

    void prepare(detail::pg_connection& made) {
        const std::string t = prefix_ + "objects";
        made.create_once("CREATE TABLE IF NOT EXISTS " + t +
                         " (key BYTEA PRIMARY KEY, owner_node TEXT, owner_incarnation BIGINT, fence BIGINT NOT NULL,"
                         " permanently_crashed BOOLEAN NOT NULL DEFAULT false)");
        made.create_once(detail::pg_create_records_table(records_));
        const Oid bytea = 17;
        const Oid key_first[] = {bytea, 0, 0, 0, 0, 0, 0, 0, bytea};
        // A new key, or one whose owner is out (and not permanently crashed).
        made.prepare("keepsake_claim",
                     "INSERT INTO " + t + " AS o VALUES (convert_to($1, 'UTF8'), $2, $3, 1, false) ON CONFLICT (key) DO UPDATE"
                     " SET owner_node = excluded.owner_node, owner_incarnation = excluded.owner_incarnation,"
                     " fence = o.fence + 1 WHERE NOT o.permanently_crashed AND " + owner_out("o") + " RETURNING fence",
                     3, nullptr);
        made.prepare("keepsake_claim_orphans",
                     "UPDATE " + t + " o SET owner_node = $1, owner_incarnation = $2, fence = o.fence + 1 FROM"
                     " (SELECT key FROM " + t + " c WHERE NOT c.permanently_crashed AND " + owner_out("c") +
                     " ORDER BY key LIMIT $3 FOR UPDATE SKIP LOCKED) picked WHERE o.key = picked.key"
                     " RETURNING convert_from(o.key, 'UTF8'), o.fence",
                     3, nullptr);
        made.prepare("keepsake_owner_of",
                     "SELECT coalesce(o.owner_node, ''), o.owner_incarnation, o.fence, coalesce(n.address, ''),"
                     " coalesce(n.incarnation = o.owner_incarnation AND n.dead_incarnation < n.incarnation, false)"
                     " FROM " + t + " o LEFT JOIN " + prefix_ + "nodes n ON n.node_id = o.owner_node"
                     " WHERE o.key = convert_to($1, 'UTF8')",
                     1, nullptr);
        made.prepare("keepsake_release",
                     "UPDATE " + t + " SET owner_node = NULL, owner_incarnation = NULL WHERE key = convert_to($1, 'UTF8')"
                     " AND owner_node = $2 AND fence = $3 RETURNING key",
                     3, nullptr);
        made.prepare("keepsake_crashed",
                     "UPDATE " + t + " SET permanently_crashed = true WHERE key = convert_to($1, 'UTF8')"
                     " AND owner_node = $2 AND fence = $3 RETURNING key",
                     3, nullptr);
        // The fenced write: the object's row locked (FOR SHARE) and its
        // token checked in the same statement as the upsert.
        made.prepare("keepsake_put_fenced",
                     "WITH held AS (SELECT 1 FROM " + t + " WHERE key = $1 AND owner_node = $2 AND fence = $3::bigint"
                     " FOR SHARE) INSERT INTO " + records_ + " AS stored (key, generation, schema_version, codec,"
                     " fingerprint, checksum, data) SELECT $1, $4::bigint, $5::bigint, $6::bigint, $7::bigint,"
                     " $8::bigint, $9 FROM held" + detail::pg_records_upsert_rule,
                     9, key_first);
    }
};

} // namespace keepsake::cluster
