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
    std::string placed_on;        // where it goes next, or last went (sticky placement, rehome)
    std::string placed_address;   // that node's address
    std::uint64_t node_lost = 0;  // times its owner died holding it (counted apart from crashes)
    bool permanently_crashed = false;
};

// A claimed object: its key, the token this node holds, and who held it
// before (empty: nobody, or it was released).
struct claimed {
    std::string key;
    std::uint64_t fence = 0;
    std::string previous_owner;
};

// A live node and how many objects it owns (placement's input).
struct node_load {
    std::string node_id;
    std::string address;
    std::size_t objects = 0;
    std::size_t capacity = 0;  // 0: no limit
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

    // Takes `key` if nobody live owns it, it is not permanently crashed and
    // it is not placed on another live node; its new token, or nothing
    // (then owner_of says who has it, or where it is placed).
    std::optional<claimed> claim(const std::string& key) {
        std::lock_guard<std::mutex> lock(mutex_);
        const std::string incarnation = std::to_string(self_.incarnation());
        detail::pg_result got =
            connection_.run("keepsake_claim", {key.c_str(), self_.node_id().c_str(), incarnation.c_str()});
        connection_.expect(got, PGRES_TUPLES_OK, "cannot claim '" + key + "'");
        if (got.rows() == 0) return std::nullopt;
        return claimed{key, std::stoull(got.text(0, 0)), got.text(0, 1)};
    }

    // Up to `limit` orphans claimed by this node: objects whose owner is out
    // (declared dead, superseded by a restart, or released), not placed on
    // another live node, of the given directories ("<directory>/<key>";
    // empty: any key). An owner that was out, not released, counts a
    // node_lost for the object.
    std::vector<claimed> claim_orphans(std::size_t limit, const std::vector<std::string>& directories = {}) {
        std::lock_guard<std::mutex> lock(mutex_);
        const std::string incarnation = std::to_string(self_.incarnation());
        const std::string most = std::to_string(limit);
        const std::string names = text_array(directories);
        detail::pg_result got = connection_.run(
            "keepsake_claim_orphans",
            {self_.node_id().c_str(), incarnation.c_str(), most.c_str(), directories.empty() ? nullptr : names.c_str()});
        connection_.expect(got, PGRES_TUPLES_OK, "cannot claim orphans");
        std::vector<claimed> taken;
        for (int row = 0; row < got.rows(); ++row)
            taken.push_back({got.text(row, 0), std::stoull(got.text(row, 1)), got.text(row, 2)});
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
        owner.placed_on = got.text(0, 5);
        owner.placed_address = got.text(0, 6);
        owner.node_lost = std::stoull(got.text(0, 7));
        owner.permanently_crashed = got.text(0, 8) == "t";
        return owner;
    }

    // Says where `key` should start (placement), unless somebody live owns
    // it or it is already placed on a live node; the node it is placed on
    // now.
    std::string place(const std::string& key, const std::string& node_id) {
        std::lock_guard<std::mutex> lock(mutex_);
        detail::pg_result got = connection_.run("keepsake_place", {key.c_str(), node_id.c_str()});
        connection_.expect(got, PGRES_TUPLES_OK, "cannot place '" + key + "'");
        return got.rows() == 0 ? std::string() : got.text(0, 0);
    }

    // Gives `key` up (a graceful stop) while holding `fence`; `next`: the
    // node that should claim it (rehome), empty for any.
    bool release(const std::string& key, std::uint64_t fence, const std::string& next = {}) {
        std::lock_guard<std::mutex> lock(mutex_);
        const std::string token = std::to_string(fence);
        detail::pg_result got = connection_.run(
            "keepsake_release", {key.c_str(), self_.node_id().c_str(), token.c_str(), next.empty() ? nullptr : next.c_str()});
        connection_.expect(got, PGRES_TUPLES_OK, "cannot release '" + key + "'");
        return got.rows() != 0;
    }

    // Marks `key` permanently crashed (cluster-wide: never claimed again)
    // while holding `fence`; clear_permanently_crashed() undoes it.
    bool mark_permanently_crashed(const std::string& key, std::uint64_t fence) {
        std::lock_guard<std::mutex> lock(mutex_);
        const std::string token = std::to_string(fence);
        detail::pg_result got =
            connection_.run("keepsake_crashed", {key.c_str(), self_.node_id().c_str(), token.c_str()});
        connection_.expect(got, PGRES_TUPLES_OK, "cannot mark '" + key + "' permanently crashed");
        return got.rows() != 0;
    }
    bool clear_permanently_crashed(const std::string& key) {
        std::lock_guard<std::mutex> lock(mutex_);
        detail::pg_result got = connection_.run("keepsake_clear_crashed", {key.c_str()});
        connection_.expect(got, PGRES_TUPLES_OK, "cannot clear '" + key + "'");
        return got.rows() != 0;
    }

    // The objects whose owner is `node_id` (any incarnation of it).
    std::vector<std::string> owned_by(const std::string& node_id) {
        std::lock_guard<std::mutex> lock(mutex_);
        detail::pg_result got = connection_.run("keepsake_owned_by", {node_id.c_str()});
        connection_.expect(got, PGRES_TUPLES_OK, "cannot list the objects of node '" + node_id + "'");
        std::vector<std::string> keys;
        for (int row = 0; row < got.rows(); ++row) keys.push_back(got.text(row, 0));
        return keys;
    }

    // Every live node (not declared dead) with the objects it owns.
    std::vector<node_load> loads() {
        std::lock_guard<std::mutex> lock(mutex_);
        detail::pg_result got = connection_.run("keepsake_loads", {});
        connection_.expect(got, PGRES_TUPLES_OK, "cannot read the nodes' loads");
        std::vector<node_load> nodes;
        for (int row = 0; row < got.rows(); ++row)
            nodes.push_back({got.text(row, 0), got.text(row, 1), static_cast<std::size_t>(std::stoull(got.text(row, 2))),
                             static_cast<std::size_t>(std::stoull(got.text(row, 3)))});
        return nodes;
    }

    // Writes `r` into the records table while this node holds `fence` for
    // the object `object` (r.key when empty); false when fenced out (the
    // node must stop the object) or when the stored generation is not older.
    bool put_fenced(const record& r, std::uint64_t fence, const std::string& object = {}) {
        std::lock_guard<std::mutex> lock(mutex_);
        const std::string token = std::to_string(fence);
        const std::string incarnation = std::to_string(self_.incarnation());
        const std::string& owned = object.empty() ? r.key : object;
        const std::string words[5] = {std::to_string(r.generation), std::to_string(r.schema_version),
                                      std::to_string(r.codec), std::to_string(static_cast<std::int64_t>(r.fingerprint)),
                                      std::to_string(static_cast<std::int64_t>(detail::record_checksum(r)))};
        const char* values[] = {r.key.data(), self_.node_id().c_str(), token.c_str(), words[0].c_str(),
                                words[1].c_str(), words[2].c_str(), words[3].c_str(), words[4].c_str(),
                                reinterpret_cast<const char*>(r.bytes.data()), owned.data(), incarnation.c_str()};
        const int lengths[] = {static_cast<int>(r.key.size()), 0, 0, 0, 0, 0, 0, 0, static_cast<int>(r.bytes.size()),
                               static_cast<int>(owned.size()), 0};
        const int formats[] = {1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0};
        static const char empty = 0;
        if (r.bytes.empty()) values[8] = &empty;
        detail::pg_result got(
            PQexecPrepared(connection_.get(), "keepsake_put_fenced", 11, values, lengths, formats, 0));
        connection_.expect(got, PGRES_COMMAND_OK, "cannot write '" + r.key + "'");
        return std::string(PQcmdTuples(got.get())) != "0";
    }

    const std::string& objects_table() const noexcept { return objects_; }
    // The channel ownership changes are notified on (cluster/watch.hpp).
    std::string channel() const { return prefix_ + "owners"; }

private:
    const membership& self_;
    std::string prefix_;
    std::string records_;
    std::string objects_ = prefix_ + "objects";
    detail::pg_connection connection_;
    std::mutex mutex_;

    // A text[] literal of names (directory names: letters, digits, '.',
    // '_', '-'; quoted anyway).
    static std::string text_array(const std::vector<std::string>& names) {
        std::string out = "{";
        for (const std::string& name : names) {
            if (out.size() > 1) out += ',';
            out += '"';
            for (char c : name) {
                if (c == '"' || c == '\\') out += '\\';
                out += c;
            }
            out += '"';
        }
        return out + "}";
    }

    // An owner is out when its node row says another incarnation now, or
    // that its incarnation was declared dead; an object without an owner
    // (released, or only placed) is free.
    std::string owner_out(const std::string& object) const {
        return "(" + object + ".owner_node IS NULL OR NOT EXISTS (SELECT 1 FROM " + prefix_ + "nodes n WHERE n.node_id = " +
               object + ".owner_node AND n.incarnation = " + object + ".owner_incarnation AND n.dead_incarnation < n.incarnation))";
    }
    // Its placement lets node `me` claim it: none, this node, or a node
    // that is not alive (sticky placement waits for a live node only).
    std::string placement_allows(const std::string& object, const std::string& me) const {
        return "(" + object + ".placed_on IS NULL OR " + object + ".placed_on = " + me + " OR NOT EXISTS (SELECT 1 FROM " +
               prefix_ + "nodes p WHERE p.node_id = " + object + ".placed_on AND p.dead_incarnation < p.incarnation))";
    }

    void prepare(detail::pg_connection& made) {
        const std::string& t = objects_;
        made.create_once("CREATE TABLE IF NOT EXISTS " + t +
                         " (key BYTEA PRIMARY KEY, owner_node TEXT, owner_incarnation BIGINT, fence BIGINT NOT NULL,"
                         " permanently_crashed BOOLEAN NOT NULL DEFAULT false, placed_on TEXT,"
                         " node_lost BIGINT NOT NULL DEFAULT 0)");
        // Ownership changes are notified (LISTEN <prefix>owners): the key, a
        // tab, the owner (empty: none).
        made.create_once("CREATE OR REPLACE FUNCTION " + prefix_ + "notify_owner() RETURNS trigger LANGUAGE plpgsql AS"
                         " $$BEGIN PERFORM pg_notify('" + channel() + "', convert_from(NEW.key, 'UTF8') || chr(9) ||"
                         " coalesce(NEW.owner_node, '')); RETURN NULL; END$$");
        made.create_once("CREATE OR REPLACE TRIGGER " + prefix_ + "owner_changed AFTER INSERT OR UPDATE OF owner_node,"
                         " owner_incarnation ON " + t + " FOR EACH ROW EXECUTE FUNCTION " + prefix_ + "notify_owner()");
        made.create_once(detail::pg_create_records_table(records_));
        const Oid bytea = 17;
        const Oid fenced_types[] = {bytea, 0, 0, 0, 0, 0, 0, 0, bytea, bytea, 0};
        // A new key, or one whose owner is out (and not permanently crashed,
        // and not placed on another live node). RETURNING the owner before.
        made.prepare("keepsake_claim",
                     "WITH before AS (SELECT owner_node FROM " + t + " WHERE key = convert_to($1, 'UTF8'))"
                     " INSERT INTO " + t + " AS o VALUES (convert_to($1, 'UTF8'), $2, $3, 1, false, $2, 0)"
                     " ON CONFLICT (key) DO UPDATE SET owner_node = excluded.owner_node,"
                     " owner_incarnation = excluded.owner_incarnation, fence = o.fence + 1, placed_on = excluded.owner_node,"
                     " node_lost = o.node_lost + (o.owner_node IS NOT NULL)::int"
                     " WHERE NOT o.permanently_crashed AND " + owner_out("o") + " AND " + placement_allows("o", "$2") +
                     " RETURNING fence, coalesce((SELECT owner_node FROM before), '')",
                     3, nullptr);
        // The candidates come from the indexes: per node, the objects of
        // its older incarnations (and of this one, once declared dead), and
        // the objects nobody owns; a sweep reads the orphans, not every
        // object. Each is then locked and checked again.
        made.create_once("CREATE INDEX IF NOT EXISTS " + t + "_by_owner ON " + t + " (owner_node, owner_incarnation)");
        made.create_once("CREATE INDEX IF NOT EXISTS " + t + "_unowned ON " + t + " (key) WHERE owner_node IS NULL");
        const std::string candidates =
            "ARRAY(SELECT c.key FROM " + prefix_ + "nodes n JOIN " + t + " c ON c.owner_node = n.node_id AND"
            " c.owner_incarnation < n.incarnation + (n.dead_incarnation >= n.incarnation)::int"
            " UNION ALL SELECT key FROM " + t + " WHERE owner_node IS NULL)";
        made.prepare("keepsake_claim_orphans",
                     "UPDATE " + t + " o SET owner_node = $1, owner_incarnation = $2, fence = o.fence + 1, placed_on = $1,"
                     " node_lost = o.node_lost + (picked.owner_node IS NOT NULL)::int FROM"
                     " (SELECT key, owner_node FROM " + t + " c WHERE c.key = ANY(" + candidates + ") AND"
                     " NOT c.permanently_crashed AND " + owner_out("c") +
                     " AND " + placement_allows("c", "$1") + " AND ($4::text[] IS NULL OR"
                     " split_part(convert_from(c.key, 'UTF8'), '/', 1) = ANY($4::text[]))"
                     " ORDER BY key LIMIT $3 FOR UPDATE SKIP LOCKED) picked WHERE o.key = picked.key"
                     " RETURNING convert_from(o.key, 'UTF8'), o.fence, coalesce(picked.owner_node, '')",
                     4, nullptr);
        made.prepare("keepsake_owner_of",
                     "SELECT coalesce(o.owner_node, ''), o.owner_incarnation, o.fence, coalesce(n.address, ''),"
                     " coalesce(n.incarnation = o.owner_incarnation AND n.dead_incarnation < n.incarnation, false),"
                     " coalesce(o.placed_on, ''), coalesce(p.address, ''), o.node_lost, o.permanently_crashed"
                     " FROM " + t + " o LEFT JOIN " + prefix_ + "nodes n ON n.node_id = o.owner_node"
                     " LEFT JOIN " + prefix_ + "nodes p ON p.node_id = o.placed_on"
                     " WHERE o.key = convert_to($1, 'UTF8')",
                     1, nullptr);
        made.prepare("keepsake_place",
                     "INSERT INTO " + t + " AS o VALUES (convert_to($1, 'UTF8'), NULL, NULL, 0, false, $2, 0)"
                     " ON CONFLICT (key) DO UPDATE SET placed_on = excluded.placed_on WHERE " + owner_out("o") +
                     " AND " + placement_allows("o", "$2") + " RETURNING placed_on",
                     2, nullptr);
        made.prepare("keepsake_release",
                     "UPDATE " + t + " SET owner_node = NULL, owner_incarnation = NULL, placed_on = $4"
                     " WHERE key = convert_to($1, 'UTF8') AND owner_node = $2 AND fence = $3 RETURNING key",
                     4, nullptr);
        made.prepare("keepsake_crashed",
                     "UPDATE " + t + " SET permanently_crashed = true WHERE key = convert_to($1, 'UTF8')"
                     " AND owner_node = $2 AND fence = $3 RETURNING key",
                     3, nullptr);
        made.prepare("keepsake_clear_crashed",
                     "UPDATE " + t + " SET permanently_crashed = false WHERE key = convert_to($1, 'UTF8')"
                     " AND permanently_crashed RETURNING key",
                     1, nullptr);
        made.prepare("keepsake_owned_by", "SELECT convert_from(key, 'UTF8') FROM " + t + " WHERE owner_node = $1", 1, nullptr);
        made.prepare("keepsake_loads",
                     "SELECT n.node_id, n.address, (SELECT count(*) FROM " + t + " o WHERE o.owner_node = n.node_id"
                     " AND o.owner_incarnation = n.incarnation), n.capacity FROM " + prefix_ + "nodes n"
                     " WHERE n.dead_incarnation < n.incarnation ORDER BY n.node_id",
                     0, nullptr);
        // The fenced write: the object's row locked (FOR SHARE) and its
        // token checked in the same statement as the upsert.
        made.prepare("keepsake_put_fenced",
                     "WITH held AS (SELECT 1 FROM " + t + " WHERE key = $10 AND owner_node = $2 AND fence = $3::bigint"
                     " AND owner_incarnation = $11::bigint FOR SHARE) INSERT INTO " + records_ +
                     " AS stored (key, generation, schema_version, codec,"
                     " fingerprint, checksum, data) SELECT $1, $4::bigint, $5::bigint, $6::bigint, $7::bigint,"
                     " $8::bigint, $9 FROM held" + detail::pg_records_upsert_rule,
                     11, fenced_types);
    }
};

} // namespace keepsake::cluster
