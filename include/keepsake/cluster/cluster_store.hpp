// keepsake/cluster/cluster_store.hpp: a node's view of the shared records
// table (issue 14): the store its exporter writes and its objects recover
// from. Made by cluster::node; link keepsake::postgres.
//
// Two kinds of keys:
//   - an object's ("<directory>/<key>" of a clustered directory) and its
//     registry records (status, crash history): shared by every node, and
//     written only while this node holds the object's fencing token, checked
//     by PostgreSQL in the statement that writes (the row of the object
//     locked FOR SHARE, so a claim waits for the write, and no write lands
//     after a takeover). A record whose token this node does not hold is
//     refused (errc::invalid_argument: the exporter reports it as
//     record_rejected and does not retry it), and the node is told, to stop
//     the object;
//   - any other key (the node's own units): private to the node, stored
//     under "@<node id>/<key>", so nodes never overwrite each other's.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "keepsake/cluster/membership.hpp"
#include "keepsake/stores/postgres_store.hpp"

namespace keepsake::cluster {

// The tokens a node holds, by object key.
class fence_book {
public:
    std::optional<std::uint64_t> fence_of(const std::string& object) const {
        std::lock_guard<std::mutex> lock(mutex_);
        auto found = fences_.find(object);
        if (found == fences_.end()) return std::nullopt;
        return found->second;
    }
    void hold(const std::string& object, std::uint64_t fence) {
        std::lock_guard<std::mutex> lock(mutex_);
        fences_[object] = fence;
    }
    bool drop(const std::string& object) {
        std::lock_guard<std::mutex> lock(mutex_);
        return fences_.erase(object) != 0;
    }
    std::vector<std::pair<std::string, std::uint64_t>> all() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return {fences_.begin(), fences_.end()};
    }
    std::size_t size() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return fences_.size();
    }

private:
    mutable std::mutex mutex_;
    std::unordered_map<std::string, std::uint64_t> fences_;
};

// The object a key belongs to: "<directory>/<key>" of one of `directories`,
// or a registry record of one ("ks:u/", "ks:c/", "ks:s/" before it);
// nothing for any other key.
inline std::optional<std::string> object_of(const std::string& key, const std::set<std::string>& directories) {
    std::string rest = key;
    for (const char* registry : {"ks:u/", "ks:c/", "ks:s/"})
        if (key.compare(0, 5, registry) == 0) rest = key.substr(5);
    const std::size_t slash = rest.find('/');
    if (slash == std::string::npos || slash + 1 == rest.size()) return std::nullopt;
    if (directories.count(rest.substr(0, slash)) == 0) return std::nullopt;
    return rest;
}

class cluster_store final : public postgres_store {
public:
    cluster_store(std::string conninfo, postgres_store_options options, const membership& self, const fence_book& fences,
                  std::set<std::string> directories, std::function<void(const std::string&)> fenced_out)
        : postgres_store(conninfo, std::move(options)),
          self_(self),
          fences_(fences),
          directories_(std::move(directories)),
          fenced_out_(std::move(fenced_out)),
          private_prefix_("@" + self.node_id() + "/"),
          checker_(std::move(conninfo), "cluster store",
                   [this](detail::pg_connection& made) {
                       made.prepare("keepsake_holds",
                                    "SELECT 1 FROM " + options_.fence_table + " WHERE key = $1 AND owner_node = $2"
                                    " AND owner_incarnation = $3::bigint AND fence = $4::bigint",
                                    4, nullptr);
                       const Oid keys_type[] = {1001};  // bytea[]
                       made.prepare("keepsake_prefetch",
                                    "SELECT generation, schema_version, codec, fingerprint, checksum, data, key FROM " +
                                        options_.table + " WHERE key = ANY($1::bytea[])",
                                    1, keys_type);
                   }) {}

    // Reads the records of `objects` and their registry records in one
    // statement; the next get() of each is answered from them, absent ones
    // too (a node that claimed a dead node's objects starts them without a
    // round trip each).
    // Damaged records are left for get() to report.
    void prefetch(const std::vector<std::string>& objects) {
        if (objects.empty()) return;
        std::vector<std::string> keys;
        for (const std::string& object : objects) {
            keys.push_back(object);
            for (const char* registry : {"ks:u/", "ks:c/", "ks:s/"}) keys.push_back(registry + object);
        }
        const std::string array = bytea_array(keys);
        const char* values[] = {array.data()};
        const int lengths[] = {static_cast<int>(array.size())};
        const int formats[] = {1};
        detail::pg_result rows(nullptr);
        {
            std::lock_guard<std::mutex> lock(checker_lock_);
            rows = detail::pg_result(PQexecPrepared(checker_.get(), "keepsake_prefetch", 1, values, lengths, formats, 1));
            checker_.expect(rows, PGRES_TUPLES_OK, "cannot read the claimed objects");
        }
        std::lock_guard<std::mutex> lock(prefetched_lock_);
        for (const std::string& key : keys) prefetched_[key] = std::nullopt;  // absent, unless a row says otherwise
        for (int row = 0; row < rows.rows(); ++row) {
            std::string key(PQgetvalue(rows.get(), row, 6), static_cast<std::size_t>(PQgetlength(rows.get(), row, 6)));
            try {
                prefetched_[key] = row_to_record(rows.get(), key, row);
            } catch (const error&) {
                prefetched_.erase(key);  // damaged: get() reads it again and says so
            }
        }
    }

    std::vector<std::size_t> put_batch(const std::vector<record>& records) override {
        std::vector<record> owned_by_node;  // private keys, renamed
        std::vector<std::size_t> node_index;
        std::vector<std::size_t> shared_index;
        std::vector<std::string> objects;
        fence_plan plan;
        plan.writer[0] = self_.node_id();
        plan.writer[1] = std::to_string(self_.incarnation());
        std::vector<std::size_t> refused;
        objects.reserve(records.size());
        for (std::size_t i = 0; i < records.size(); ++i) {
            std::optional<std::string> object = object_of(records[i].key, directories_);
            if (!object) {
                owned_by_node.push_back(records[i]);
                owned_by_node.back().key = private_prefix_ + records[i].key;
                node_index.push_back(i);
                continue;
            }
            const std::optional<std::uint64_t> fence = fences_.fence_of(*object);
            if (!fence) {
                refused.push_back(i);
                continue;
            }
            objects.push_back(std::move(*object));
            plan.fences.push_back(*fence);
            shared_index.push_back(i);
        }
        std::vector<std::size_t> skipped;
        if (!owned_by_node.empty()) {
            std::vector<std::size_t> node_skipped = postgres_store::put_batch(owned_by_node);
            for (std::size_t at : node_skipped) skipped.push_back(node_index.at(at));
        }
        if (!shared_index.empty()) put_shared(records, shared_index, objects, plan, skipped, refused);
        if (!refused.empty()) refuse(records, refused);
        std::sort(skipped.begin(), skipped.end());
        return skipped;
    }

    // An object claimed for the first time (token 1) has no records: its
    // first start asks the database nothing (its state, its unit record and
    // crash history are known absent).
    void expect_absent(const std::string& object) {
        std::lock_guard<std::mutex> lock(prefetched_lock_);
        for (const char* kind : {"", "ks:u/", "ks:c/"}) prefetched_[kind + object] = std::nullopt;
    }
    // Forgets what is known of `object` (claimed again: others may have
    // written since).
    void forget_cached(const std::string& object) {
        std::lock_guard<std::mutex> lock(prefetched_lock_);
        for (const char* kind : {"", "ks:u/", "ks:c/", "ks:s/"}) prefetched_.erase(kind + object);
    }

    // Forgets what prefetch() read and no get() took.
    void drop_prefetched() {
        std::lock_guard<std::mutex> lock(prefetched_lock_);
        prefetched_.clear();
    }

    std::optional<record> get(const std::string& key) override {
        if (object_of(key, directories_)) {
            {
                std::lock_guard<std::mutex> lock(prefetched_lock_);
                auto found = prefetched_.find(key);
                if (found != prefetched_.end()) {
                    std::optional<record> taken = std::move(found->second);
                    prefetched_.erase(found);
                    return taken;
                }
            }
            return postgres_store::get(key);
        }
        std::optional<record> found = postgres_store::get(private_prefix_ + key);
        if (found) found->key = key;
        return found;
    }

    // An object's records go only while this node holds its token.
    bool remove(const std::string& key) override {
        std::optional<std::string> object = object_of(key, directories_);
        if (!object) return postgres_store::remove(private_prefix_ + key);
        if (!fences_.fence_of(*object))
            throw error(errc::not_owner, "cannot remove '" + key + "': this node does not own '" + *object + "'");
        return postgres_store::remove(key);
    }

    std::vector<std::string> list(const std::string& prefix) override {
        std::vector<std::string> keys;
        for (std::string& each : postgres_store::list(prefix))
            if (object_of(each, directories_)) keys.push_back(std::move(each));
        for (const std::string& each : postgres_store::list(private_prefix_ + prefix))
            keys.push_back(each.substr(private_prefix_.size()));
        std::sort(keys.begin(), keys.end());
        return keys;
    }

    std::string describe() const override { return "cluster " + postgres_store::describe() + " as node " + self_.node_id(); }

private:
    const membership& self_;
    const fence_book& fences_;
    const std::set<std::string> directories_;
    std::function<void(const std::string&)> fenced_out_;
    const std::string private_prefix_;
    std::mutex checker_lock_;  // the exporter's thread and the sweeps share checker_
    detail::pg_connection checker_;  // is a token still held (after a write did not land); prefetch
    std::mutex prefetched_lock_;
    std::unordered_map<std::string, std::optional<record>> prefetched_;  // nullopt: known absent

    // A bytea[] in PostgreSQL's binary format.
    static std::string bytea_array(const std::vector<std::string>& items) {
        std::string out;
        auto put_int32 = [&out](std::uint32_t value) {
            for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((value >> shift) & 0xff));
        };
        put_int32(1);
        put_int32(0);
        put_int32(17);
        put_int32(static_cast<std::uint32_t>(items.size()));
        put_int32(1);
        for (const std::string& item : items) {
            put_int32(static_cast<std::uint32_t>(item.size()));
            out += item;
        }
        return out;
    }

    // The shared records, fenced. One the statement did not write was either
    // not newer (skipped) or written without the token (refused).
    void put_shared(const std::vector<record>& records, const std::vector<std::size_t>& index,
                    const std::vector<std::string>& objects, fence_plan& plan, std::vector<std::size_t>& skipped,
                    std::vector<std::size_t>& refused) {
        std::vector<record> batch;
        batch.reserve(index.size());
        for (std::size_t i : index) batch.push_back(records[i]);
        for (const std::string& each : objects) plan.objects.push_back(&each);
        std::vector<std::size_t> not_written;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            put_pipelined(batch, not_written, &plan);
        }
        for (std::size_t at : not_written) {
            if (holds(objects[at], plan.fences[at])) skipped.push_back(index[at]);
            else refused.push_back(index[at]);
        }
    }

    bool holds(const std::string& object, std::uint64_t fence) {
        const std::string token = std::to_string(fence);
        const std::string incarnation = std::to_string(self_.incarnation());
        const char* values[] = {object.data(), self_.node_id().c_str(), incarnation.c_str(), token.c_str()};
        const int lengths[] = {static_cast<int>(object.size()), 0, 0, 0};
        const int formats[] = {1, 0, 0, 0};
        std::lock_guard<std::mutex> lock(checker_lock_);
        detail::pg_result got(PQexecPrepared(checker_.get(), "keepsake_holds", 4, values, lengths, formats, 0));
        checker_.expect(got, PGRES_TUPLES_OK, "cannot check the token of '" + object + "'");
        return got.rows() != 0;
    }

    // Records of objects this node does not own (any more): the node is
    // told (it stops them), and the put fails as invalid for them, after
    // the others were written (the exporter then puts the batch again one
    // record at a time, and reports only these).
    [[noreturn]] void refuse(const std::vector<record>& records, const std::vector<std::size_t>& refused) {
        std::string keys;
        for (std::size_t i : refused) {
            const std::string& key = records[i].key;
            if (fenced_out_) fenced_out_(*object_of(key, directories_));
            if (keys.size() < 200) keys += (keys.empty() ? "'" : ", '") + key + "'";
        }
        throw error(errc::invalid_argument, describe() + ": node '" + self_.node_id() + "' does not own " + keys +
                                                " (fenced out: another node claimed it); the object is stopped here");
    }
};

} // namespace keepsake::cluster
