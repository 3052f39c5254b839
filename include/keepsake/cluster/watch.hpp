// keepsake/cluster/watch.hpp: ownership changes as they happen (issue 14,
// step 5), through PostgreSQL's LISTEN/NOTIFY: every claim, release or
// placement of an object is notified by a trigger on the ownership table
// (ownership.hpp), so a gateway can keep its routing table without polling.
// Link keepsake::postgres.
//
// Notifications are not durable: a watcher that reconnects may have missed
// some, and says so (ownership_change::missed), so it can read owner_of()
// again for what it caches.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include <poll.h>

#include <libpq-fe.h>

#include "keepsake/detail/pg_connection.hpp"
#include "keepsake/error.hpp"

namespace keepsake::cluster {

struct ownership_change {
    std::string key;   // "<directory>/<key>"
    std::string node;  // the owner now; empty: none (released, or only placed)
    bool missed = false;  // the connection was made again: changes may have been lost before this one
};

class ownership_watch {
public:
    // Watches the ownership table of `table_prefix` (as ownership's).
    ownership_watch(std::string conninfo, const std::string& table_prefix = "keepsake_")
        : channel_(table_prefix + "owners"),
          connection_(std::move(conninfo), "ownership watch",
                      [this](detail::pg_connection& made) { made.execute("LISTEN " + channel_); }) {
        detail::pg_check_identifier(table_prefix, "ownership_watch table prefix");
        connection_.get();
    }

    // The changes notified so far, waiting up to `timeout` for the first.
    // Throws store_failed when the database cannot be reached (the next
    // call connects again, and its first change says missed).
    std::vector<ownership_change> wait(std::chrono::milliseconds timeout) {
        PGconn* connection = reconnect_if_lost();
        std::vector<ownership_change> changes = take(connection);
        if (!changes.empty() || timeout.count() <= 0) return mark(std::move(changes));
        pollfd ready{PQsocket(connection), POLLIN, 0};
        if (::poll(&ready, 1, static_cast<int>(timeout.count())) > 0) changes = take(connection);
        return mark(std::move(changes));
    }

private:
    std::string channel_;
    detail::pg_connection connection_;
    bool reconnected_ = false;

    PGconn* reconnect_if_lost() {
        const bool lost = connection_.raw() == nullptr || PQstatus(connection_.raw()) != CONNECTION_OK;
        PGconn* connection = connection_.get();
        reconnected_ = reconnected_ || lost;
        return connection;
    }

    std::vector<ownership_change> take(PGconn* connection) {
        if (PQconsumeInput(connection) != 1) {
            const std::string why = connection_.last_error();
            connection_.drop();
            throw error(errc::store_failed, "ownership watch: the connection was lost: " + why +
                                                " (the next wait connects again)");
        }
        std::vector<ownership_change> changes;
        while (PGnotify* note = PQnotifies(connection)) {
            const std::string payload = note->extra;
            PQfreemem(note);
            const std::size_t tab = payload.rfind('\t');
            if (tab == std::string::npos) continue;
            changes.push_back({payload.substr(0, tab), payload.substr(tab + 1), false});
        }
        return changes;
    }

    std::vector<ownership_change> mark(std::vector<ownership_change> changes) {
        if (reconnected_ && !changes.empty()) {
            changes.front().missed = true;
            reconnected_ = false;
        }
        return changes;
    }
};

} // namespace keepsake::cluster
