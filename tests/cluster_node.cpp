// A cluster node process for the failover tests and bench (issue 14): joins,
// serves a directory of counters, creates its own, and every tick adds one
// to each object it owns (its own and those it claimed), then flushes its
// exporter and writes what the store acknowledged.
//
//   keepsake_cluster_node CONNINFO PREFIX NODE_ID SHM_DIR STATUS_DIR CREATE
//                         TTL_MS HEARTBEAT_MS TICK_MS EXPORT_MS
//
// EXPORT_MS: the exporter's interval; with 1000 or more, the loop does not
// flush (the bench: ticking 10 000 objects every 50 ms, a flush a tick
// would only measure how fast PostgreSQL updates rows).
//
// Files in STATUS_DIR, each written whole (a rename):
//   <id>.ready   once its CREATE objects answered
//   <id>.acked   "<object> <count>" a line: counts the store held at the last flush
//   <id>.served  "<objects answered in the last tick> <monotonic ns at its end>"
// Exits 42 when it finds itself out of the cluster, 0 on SIGTERM, 1 on an
// error.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <thread>

#include <signal.h>

#include <keepsake/cluster/node.hpp>
#include <keepsake/exporter.hpp>

#include "cluster_node_state.hpp"

namespace {

std::atomic<bool> asked_to_stop{false};

void write_whole(const std::string& path, const std::string& text) {
    const std::string temporary = path + ".tmp";
    {
        std::ofstream out(temporary, std::ios::trunc);
        out << text;
    }
    std::rename(temporary.c_str(), path.c_str());
}

} // namespace

int main(int argc, char** argv) {
    if (argc != 11) {
        std::cerr << "usage: keepsake_cluster_node CONNINFO PREFIX NODE_ID SHM_DIR STATUS_DIR CREATE TTL_MS "
                     "HEARTBEAT_MS TICK_MS EXPORT_MS\n";
        return 2;
    }
    const std::string conninfo = argv[1], prefix = argv[2], id = argv[3], shm = argv[4], status = argv[5];
    const int create = std::stoi(argv[6]);
    const auto ttl = std::chrono::milliseconds(std::stoi(argv[7]));
    const auto heartbeat = std::chrono::milliseconds(std::stoi(argv[8]));
    const auto tick = std::chrono::milliseconds(std::stoi(argv[9]));
    const auto export_every = std::chrono::milliseconds(std::stoi(argv[10]));
    const bool flush_each_tick = export_every < std::chrono::seconds(1);
    ::signal(SIGTERM, [](int) { asked_to_stop.store(true); });
    try {
        keepsake::segment_options where;
        where.directory = shm;
        where.size = 64u << 20;
        where.max_entries = 1u << 16;
        keepsake::segment local("node-" + id, where);
        keepsake::runtime run(keepsake::runtime_options{1, nullptr, 64 * 1024, &local});

        keepsake::cluster::cluster_options options;
        options.conninfo = conninfo;
        options.self.node_id = id;
        options.self.address = id + ".local:7000";
        options.self.ttl = ttl;
        options.self.table_prefix = prefix;
        options.directories = {"counter"};
        options.records_table = prefix + "records";
        options.heartbeat_every = heartbeat;
        options.sweep_every = std::chrono::milliseconds(100);
        keepsake::cluster::node here(run, local, options);

        keepsake::directory_spec<cluster_test::counter, keepsake::no_handler> spec;
        spec.name = "counter";
        spec.guard = &here;
        spec.durable = &here.store();
        spec.hibernate_after = keepsake::duration::zero();
        spec.call_timeout = std::chrono::seconds(30);
        spec.start_timeout = std::chrono::seconds(30);
        keepsake::object_directory<cluster_test::counter> counters(run, spec);
        here.serve(counters);
        keepsake::exporter_options export_options;
        export_options.interval = export_every;
        export_options.batch_size = 4096;
        keepsake::exporter out(local, here.store(), export_options);

        auto add_one = [&](const std::string& key) {
            return counters.call(key, [&id](cluster_test::counter& c) {
                ++c.count;
                std::snprintf(c.writer, sizeof(c.writer), "%s", id.c_str());
                return c.count;
            });
        };
        for (int i = 0; i < create; ++i) add_one(id + "-" + std::to_string(i));
        out.flush(std::chrono::seconds(60));
        write_whole(status + "/" + id + ".ready", "ready\n");

        while (!asked_to_stop.load()) {
            if (here.standing() == keepsake::cluster::node_standing::out) std::_Exit(42);
            std::map<std::string, std::uint64_t> counts;
            for (const std::string& object : here.owned_objects()) {
                try {
                    counts[object] = add_one(object.substr(std::strlen("counter/")));
                } catch (const keepsake::error&) {
                    // stopped meanwhile (out, or lost): the next tick knows
                }
            }
            const auto now = std::chrono::steady_clock::now().time_since_epoch();
            write_whole(status + "/" + id + ".served",
                        std::to_string(counts.size()) + " " +
                            std::to_string(std::chrono::duration_cast<std::chrono::nanoseconds>(now).count()) + "\n");
            if (flush_each_tick && out.flush(std::chrono::seconds(5))) {
                std::string acked;
                for (const auto& [object, count] : counts) acked += object + " " + std::to_string(count) + "\n";
                write_whole(status + "/" + id + ".acked", acked);
            }
            std::this_thread::sleep_for(tick);
        }
        here.stop();
        return 0;
    } catch (const std::exception& failure) {
        std::cerr << "cluster node '" << id << "': " << failure.what() << "\n";
        return 1;
    }
}
