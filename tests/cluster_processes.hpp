// Node processes of the cluster tests and bench (tests/cluster_node.cpp),
// started, signalled and read back: who owns what (PostgreSQL), what each
// node's store acknowledged and served (its status files).
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <keepsake/detail/pg_connection.hpp>
#include <keepsake/objects/detail/object_reads.hpp>
#include <keepsake/stores/postgres_store.hpp>

#include "cluster_node_state.hpp"
#include "postgres_server.hpp"
#include "support.hpp"

namespace test_support {

struct owner_row {
    std::string node;
    std::uint64_t fence = 0;
    std::uint64_t node_lost = 0;
};

// Node processes (tests/cluster_node.cpp) over one set of tables.
class node_processes {
public:
    node_processes(std::string program, int ttl_ms, int heartbeat_ms = 250, int tick_ms = 50, int export_ms = 20)
        : program_(std::move(program)), ttl_ms_(ttl_ms), heartbeat_ms_(heartbeat_ms), tick_ms_(tick_ms), export_ms_(export_ms),
          prefix_("f" + std::to_string(::getpid()) + "_" + std::to_string(counter()++) + "_") {}
    node_processes(const node_processes&) = delete;
    node_processes& operator=(const node_processes&) = delete;
    ~node_processes() {
        for (auto& [id, pid] : pids_)
            if (pid > 0) {
                ::kill(pid, SIGCONT);
                ::kill(pid, SIGKILL);
                ::waitpid(pid, nullptr, 0);
            }
    }

    void start(const std::string& id, int create, bool an_hour_ahead = false) {
        std::remove((status_.path() + "/" + id + ".ready").c_str());
        const std::string conninfo = postgres_server::shared().conninfo();  // the server starts in this process
        const pid_t pid = ::fork();
        if (pid < 0) throw std::runtime_error("fork failed");
        if (pid == 0) {
            if (an_hour_ahead) {
                ::setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", 1);
                ::setenv("FAKETIME", "+1h", 1);
                // The wall clock only: the kernel's timed waits do not follow
                // a faked monotonic clock (a node would sleep for an hour).
                ::setenv("FAKETIME_DONT_FAKE_MONOTONIC", "1", 1);
                // Under AddressSanitizer libfaketime comes before its runtime,
                // which only intercepts other calls than libfaketime's.
                const char* asan = std::getenv("ASAN_OPTIONS");
                ::setenv("ASAN_OPTIONS", (std::string(asan != nullptr ? asan : "") + ":verify_asan_link_order=0").c_str(), 1);
            }
            const std::string args[] = {program_, conninfo, prefix_, id, shm_.path(), status_.path(),
                                        std::to_string(create), std::to_string(ttl_ms_),
                                        std::to_string(heartbeat_ms_), std::to_string(tick_ms_),
                                        std::to_string(export_ms_)};
            std::vector<char*> argv;
            for (const std::string& each : args) argv.push_back(const_cast<char*>(each.c_str()));
            argv.push_back(nullptr);
            ::execv(program_.c_str(), argv.data());
            std::_Exit(127);
        }
        pids_[id] = pid;
        const auto began = std::chrono::steady_clock::now();
        while (!std::ifstream(status_.path() + "/" + id + ".ready")) {
            int status = 0;
            if (::waitpid(pid, &status, WNOHANG) == pid) {
                pids_[id] = 0;
                throw std::runtime_error("node " + id + " exited before it was ready (status " + std::to_string(status) + ")");
            }
            if (std::chrono::steady_clock::now() - began > std::chrono::minutes(5))
                throw std::runtime_error("node " + id + " was not ready within 5 minutes");
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
    }

    void signal(const std::string& id, int number) {
        if (::kill(pids_.at(id), number) != 0) throw std::runtime_error("kill failed");
    }
    // Its exit status (-signal when killed).
    int wait(const std::string& id) {
        int status = 0;
        if (::waitpid(pids_.at(id), &status, 0) != pids_.at(id)) throw std::runtime_error("waitpid failed");
        pids_[id] = 0;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    }
    bool running(const std::string& id) {
        int status = 0;
        return pids_.at(id) > 0 && ::waitpid(pids_.at(id), &status, WNOHANG) == 0;
    }

    std::map<std::string, owner_row> owners() {
        keepsake::detail::pg_connection db(postgres_server::shared().conninfo(), "test", [](auto&) {});
        keepsake::detail::pg_result rows(PQexec(db.get(), ("SELECT convert_from(key, 'UTF8'), coalesce(owner_node, ''),"
                                                          " fence, node_lost FROM " + prefix_ + "objects").c_str()));
        if (rows.status() != PGRES_TUPLES_OK)
            throw std::runtime_error(std::string("cannot read the owners: ") + PQresultErrorMessage(rows.get()));
        std::map<std::string, owner_row> found;
        for (int row = 0; row < rows.rows(); ++row)
            found[rows.text(row, 0)] = {rows.text(row, 1), std::stoull(rows.text(row, 2)), std::stoull(rows.text(row, 3))};
        return found;
    }

    // A node's heartbeat counter in the membership table (0 before its first).
    std::uint64_t heartbeats(const std::string& id) {
        keepsake::detail::pg_connection db(postgres_server::shared().conninfo(), "test", [](auto&) {});
        keepsake::detail::pg_result rows(
            PQexec(db.get(), ("SELECT heartbeat FROM " + prefix_ + "nodes WHERE node_id = '" + id + "'").c_str()));
        if (rows.status() != PGRES_TUPLES_OK)
            throw std::runtime_error(std::string("cannot read the heartbeats: ") + PQresultErrorMessage(rows.get()));
        return rows.rows() == 0 ? 0 : std::stoull(rows.text(0, 0));
    }

    cluster_test::counter stored(const std::string& object) {
        keepsake::postgres_store_options options;
        options.table = prefix_ + "records";
        keepsake::postgres_store records(postgres_server::shared().conninfo(), options);
        const auto found = records.get(object);
        if (!found) throw std::runtime_error("no record of " + object);
        keepsake::object_state<cluster_test::counter> decoded;
        keepsake::detail::object_reads<cluster_test::counter>::decode(*found, decoded);
        return decoded.value;
    }

    // What the node's store acknowledged last: object -> count.
    std::map<std::string, std::uint64_t> acked(const std::string& id) {
        std::ifstream in(status_.path() + "/" + id + ".acked");
        std::map<std::string, std::uint64_t> counts;
        std::string object;
        std::uint64_t count = 0;
        while (in >> object >> count) counts[object] = count;
        return counts;
    }

    // Waits until `done` holds (true) or `limit` passes (false), looking
    // every 20 ms (each look may query PostgreSQL).
    template <class Done>
    static bool eventually(Done done, std::chrono::milliseconds limit = std::chrono::seconds(30)) {
        return wait_until(done, limit, std::chrono::milliseconds(20));
    }

    // What the node's last tick answered: how many objects, and when it
    // ended (steady clock, ns); nothing before its first tick.
    std::optional<std::pair<std::size_t, std::int64_t>> served(const std::string& id) {
        std::ifstream in(status_.path() + "/" + id + ".served");
        std::size_t count = 0;
        std::int64_t at = 0;
        if (!(in >> count >> at)) return std::nullopt;
        return std::make_pair(count, at);
    }

    static std::vector<std::string> objects_of(const std::string& id, int objects_per_node) {
        std::vector<std::string> objects;
        for (int i = 0; i < objects_per_node; ++i) objects.push_back("counter/" + id + "-" + std::to_string(i));
        return objects;
    }

private:
    static int& counter() {
        static int made = 0;
        return made;
    }
    std::string program_;
    int ttl_ms_;
    int heartbeat_ms_;
    int tick_ms_;
    int export_ms_;
    std::string prefix_;
    test_support::shm_dir shm_;
    test_support::temp_dir status_;
    std::map<std::string, pid_t> pids_;
};

} // namespace test_support
