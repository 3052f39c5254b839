// keepsake/cluster/membership.hpp: which nodes are alive, decided through
// PostgreSQL without trusting any two machines' clocks to agree (issue 14,
// step 2). Link keepsake::postgres.
//
// One row a node in `<prefix>nodes`: its id, its incarnation, a heartbeat
// counter, the incarnation others declared dead, and its address (what a
// gateway needs to reach it).
//   - join (the constructor): a new incarnation at every start, one above
//     the last under that id, so whatever the previous run owned is an
//     orphan at once (ownership is by node and incarnation).
//   - heartbeat(): the counter goes up by one, only while the row still
//     holds this incarnation and nobody declared it dead, in the same
//     statement; when it does not, the node is fenced and must stop its
//     objects.
//   - sweep(): every observer notes, on its own monotonic clock, when each
//     node's counter last moved; one silent for `ttl` is declared dead, in a
//     statement that holds only if the counter is still the one it saw (a
//     node that heartbeats meanwhile is not declared). No decision compares
//     the wall clocks of two machines, nor a wall clock with anything.
//   - fenced(): a node that could not heartbeat for its own ttl (the
//     database unreachable, the process paused) counts itself out without
//     asking anyone: by then the others may have declared it dead.
//
// Guarantees and limits: a node is declared dead only after every observer
// that declares it saw its counter still for ttl; a declared incarnation
// never heartbeats again (it must join anew). A paused node runs on, unaware,
// until its next heartbeat or fenced() check: what it does meanwhile must be
// fenced by the ownership tokens of its objects, not by membership.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "keepsake/clock.hpp"
#include "keepsake/detail/pg_connection.hpp"
#include "keepsake/error.hpp"

namespace keepsake::cluster {

struct node_options {
    std::string node_id;                      // 1 to 64 characters
    std::string address;                      // how to reach it, for routing (free text)
    duration ttl = std::chrono::seconds(5);   // silence after which a node is out
    std::string table_prefix = "keepsake_";   // tables <prefix>nodes, ...
    std::size_t capacity = 0;                 // objects it takes at most (placement, orphans); 0: no limit
    std::shared_ptr<keepsake::clock> time;    // null: the steady clock (tests: a manual one)
};

// A node as one observer sees it.
struct node_view {
    std::string node_id;
    std::uint64_t incarnation = 0;
    std::uint64_t heartbeat = 0;
    std::string address;
    bool declared_dead = false;  // this incarnation was declared dead
    duration silent_for{};       // on the observer's clock, since its counter or incarnation last moved
};

class membership {
public:
    // Joins: registers `options.node_id` with a new incarnation.
    membership(std::string conninfo, node_options options)
        : options_(std::move(options)),
          time_(options_.time ? options_.time : std::make_shared<keepsake::steady_clock>()),
          connection_(std::move(conninfo), "cluster membership",
                      [this](detail::pg_connection& made) { prepare(made); }) {
        check_options();
        std::lock_guard<std::mutex> lock(mutex_);
        const std::string address = options_.address;
        const std::string capacity = std::to_string(options_.capacity);
        detail::pg_result joined =
            connection_.run("keepsake_join", {options_.node_id.c_str(), address.c_str(), capacity.c_str()});
        connection_.expect(joined, PGRES_TUPLES_OK, "cannot join as node '" + options_.node_id + "'");
        incarnation_ = std::stoull(joined.text(0, 0));
        last_heartbeat_ = time_->now();
    }

    const std::string& node_id() const noexcept { return options_.node_id; }
    const node_options& options() const noexcept { return options_; }
    std::uint64_t incarnation() const noexcept { return incarnation_; }

    // One heartbeat. False when this incarnation is out (superseded by a
    // restart under the same id, or declared dead): fenced() from then on.
    // Throws store_failed when the database cannot be reached (then nothing
    // is decided; fenced() turns true after ttl without a heartbeat).
    bool heartbeat() {
        std::lock_guard<std::mutex> lock(mutex_);
        if (fenced_by_database_) return false;
        const std::string incarnation = std::to_string(incarnation_);
        detail::pg_result beat(nullptr);
        try {
            beat = connection_.run("keepsake_heartbeat", {options_.node_id.c_str(), incarnation.c_str()});
            connection_.expect(beat, PGRES_TUPLES_OK, "cannot heartbeat");
        } catch (...) {
            blind_ = true;  // until the next look at every node
            throw;
        }
        if (beat.rows() == 0) {
            fenced_by_database_ = true;
            return false;
        }
        last_heartbeat_ = time_->now();
        return true;
    }

    // Out: fenced by the database, or no heartbeat for ttl on this clock.
    bool fenced() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return fenced_by_database_ || time_->now() - last_heartbeat_ >= options_.ttl;
    }

    // Every node's row, with how long this observer has seen it silent.
    std::vector<node_view> observe() {
        std::lock_guard<std::mutex> lock(mutex_);
        return observe_locked();
    }

    // Declares dead each node this observer saw silent for ttl (itself
    // excepted); returns them. Safe with many observers sweeping at once: a
    // node is declared once, and not if its counter moved meanwhile.
    std::vector<node_view> sweep() {
        std::lock_guard<std::mutex> lock(mutex_);
        std::vector<node_view> declared;
        for (node_view& node : observe_locked()) {
            if (node.declared_dead || node.silent_for < options_.ttl) continue;
            if (node.node_id == options_.node_id && node.incarnation == incarnation_) continue;
            const std::string incarnation = std::to_string(node.incarnation);
            const std::string heartbeat = std::to_string(node.heartbeat);
            detail::pg_result done = connection_.run(
                "keepsake_declare_dead", {node.node_id.c_str(), incarnation.c_str(), heartbeat.c_str()});
            connection_.expect(done, PGRES_TUPLES_OK, "cannot declare node '" + node.node_id + "' dead");
            if (done.rows() == 0) continue;  // it moved, or another observer was first
            node.declared_dead = true;
            declared.push_back(std::move(node));
        }
        return declared;
    }

    std::string nodes_table() const { return options_.table_prefix + "nodes"; }

private:
    struct seen {
        std::uint64_t incarnation = 0;
        std::uint64_t heartbeat = 0;
        duration since{};  // this clock, when either last moved
    };

    node_options options_;
    std::shared_ptr<keepsake::clock> time_;
    detail::pg_connection connection_;
    mutable std::mutex mutex_;
    std::uint64_t incarnation_ = 0;
    duration last_heartbeat_{};
    bool fenced_by_database_ = false;
    std::map<std::string, seen> seen_;
    bool blind_ = false;  // a statement failed since the last look

    void check_options() const {
        if (options_.node_id.empty() || options_.node_id.size() > 64)
            throw error(errc::invalid_argument, "node_options::node_id must be 1 to 64 characters");
        if (options_.ttl <= duration::zero())
            throw error(errc::invalid_argument, "node_options::ttl must be positive");
        detail::pg_check_identifier(options_.table_prefix, "node_options::table_prefix");
    }

    void prepare(detail::pg_connection& made) {
        const std::string t = nodes_table();
        made.create_once("CREATE TABLE IF NOT EXISTS " + t +
                         " (node_id TEXT PRIMARY KEY, incarnation BIGINT NOT NULL, heartbeat BIGINT NOT NULL,"
                         " dead_incarnation BIGINT NOT NULL, address TEXT NOT NULL, capacity BIGINT NOT NULL DEFAULT 0)");
        made.prepare("keepsake_join",
                     "INSERT INTO " + t + " AS known VALUES ($1, 1, 0, 0, $2, $3) ON CONFLICT (node_id) DO UPDATE SET"
                     " incarnation = known.incarnation + 1, heartbeat = 0, address = excluded.address,"
                     " capacity = excluded.capacity RETURNING incarnation",
                     3, nullptr);
        made.prepare("keepsake_heartbeat",
                     "UPDATE " + t + " SET heartbeat = heartbeat + 1 WHERE node_id = $1 AND incarnation = $2"
                     " AND dead_incarnation < incarnation RETURNING heartbeat",
                     2, nullptr);
        made.prepare("keepsake_nodes", "SELECT node_id, incarnation, heartbeat, dead_incarnation, address FROM " + t +
                                           " ORDER BY node_id",
                     0, nullptr);
        made.prepare("keepsake_declare_dead",
                     "UPDATE " + t + " SET dead_incarnation = incarnation WHERE node_id = $1 AND incarnation = $2"
                     " AND heartbeat = $3 AND dead_incarnation < incarnation RETURNING node_id",
                     3, nullptr);
    }

    std::vector<node_view> observe_locked() {
        detail::pg_result rows(nullptr);
        try {
            rows = connection_.run("keepsake_nodes", {});
            connection_.expect(rows, PGRES_TUPLES_OK, "cannot read the nodes");
        } catch (...) {
            blind_ = true;
            throw;
        }
        const duration now = time_->now();
        // An observer that could not reach the database saw nobody's
        // silence (nobody could heartbeat either): it counts again from now,
        // so no node is declared dead for an outage of the database.
        if (blind_)
            for (auto& [id, known] : seen_) known.since = now;
        blind_ = false;
        std::vector<node_view> nodes;
        for (int row = 0; row < rows.rows(); ++row) {
            node_view node;
            node.node_id = rows.text(row, 0);
            node.incarnation = std::stoull(rows.text(row, 1));
            node.heartbeat = std::stoull(rows.text(row, 2));
            node.declared_dead = std::stoull(rows.text(row, 3)) >= node.incarnation;
            node.address = rows.text(row, 4);
            auto [known, first_look] = seen_.try_emplace(node.node_id, seen{node.incarnation, node.heartbeat, now});
            if (!first_look && (known->second.incarnation != node.incarnation || known->second.heartbeat != node.heartbeat))
                known->second = seen{node.incarnation, node.heartbeat, now};
            node.silent_for = now - known->second.since;
            nodes.push_back(std::move(node));
        }
        return nodes;
    }
};

} // namespace keepsake::cluster
