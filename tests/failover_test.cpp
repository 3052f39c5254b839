// Objects fail over between node processes (issue 14): three real node
// processes (tests/cluster_node.cpp) against a real PostgreSQL server the
// test starts; SIGKILL, SIGSTOP past the ttl, a database restart longer than
// the ttl, a node under libfaketime an hour ahead, a restart under the same
// id. What the nodes did is read back from PostgreSQL.
#include <catch2/catch.hpp>

#include <chrono>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
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

using test_support::postgres_server;
using namespace std::chrono_literals;

namespace {

constexpr int objects_per_node = 30;
constexpr int ttl_ms = 1000;

struct owner_row {
    std::string node;
    std::uint64_t fence = 0;
    std::uint64_t node_lost = 0;
};

// Three (or fewer) node processes over one set of tables.
class cluster {
public:
    cluster() : prefix_("f" + std::to_string(::getpid()) + "_" + std::to_string(counter()++) + "_") {}
    ~cluster() {
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
        REQUIRE(pid >= 0);
        if (pid == 0) {
            if (an_hour_ahead) {
                ::setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", 1);
                ::setenv("FAKETIME", "+1h", 1);
                // The wall clock only: the kernel's timed waits do not follow
                // a faked monotonic clock (a node would sleep for an hour).
                ::setenv("FAKETIME_DONT_FAKE_MONOTONIC", "1", 1);
            }
            const std::string args[] = {KEEPSAKE_CLUSTER_NODE, conninfo, prefix_, id,
                                        shm_.path(), status_.path(), std::to_string(create), std::to_string(ttl_ms),
                                        "250", "50"};
            std::vector<char*> argv;
            for (const std::string& each : args) argv.push_back(const_cast<char*>(each.c_str()));
            argv.push_back(nullptr);
            ::execv(KEEPSAKE_CLUSTER_NODE, argv.data());
            std::_Exit(127);
        }
        pids_[id] = pid;
        const auto began = std::chrono::steady_clock::now();
        while (!std::ifstream(status_.path() + "/" + id + ".ready")) {
            int status = 0;
            if (::waitpid(pid, &status, WNOHANG) == pid) {
                pids_[id] = 0;
                FAIL("node " << id << " exited before it was ready (status " << status << ")");
            }
            REQUIRE(std::chrono::steady_clock::now() - began < 60s);
            std::this_thread::sleep_for(20ms);
        }
    }

    void signal(const std::string& id, int number) { REQUIRE(::kill(pids_.at(id), number) == 0); }
    // Its exit status (-signal when killed).
    int wait(const std::string& id) {
        int status = 0;
        REQUIRE(::waitpid(pids_.at(id), &status, 0) == pids_.at(id));
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
        INFO(PQresultErrorMessage(rows.get()));
        REQUIRE(rows.status() == PGRES_TUPLES_OK);
        std::map<std::string, owner_row> found;
        for (int row = 0; row < rows.rows(); ++row)
            found[rows.text(row, 0)] = {rows.text(row, 1), std::stoull(rows.text(row, 2)), std::stoull(rows.text(row, 3))};
        return found;
    }

    cluster_test::counter stored(const std::string& object) {
        keepsake::postgres_store_options options;
        options.table = prefix_ + "records";
        keepsake::postgres_store records(postgres_server::shared().conninfo(), options);
        const auto found = records.get(object);
        REQUIRE(found);
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

    // Waits until `done` holds (true) or `limit` passes (false).
    template <class Done>
    static bool eventually(Done done, std::chrono::milliseconds limit = 30s) {
        const auto began = std::chrono::steady_clock::now();
        while (!done()) {
            if (std::chrono::steady_clock::now() - began > limit) return false;
            std::this_thread::sleep_for(20ms);
        }
        return true;
    }

    static std::vector<std::string> objects_of(const std::string& id) {
        std::vector<std::string> objects;
        for (int i = 0; i < objects_per_node; ++i) objects.push_back("counter/" + id + "-" + std::to_string(i));
        return objects;
    }

private:
    static int& counter() {
        static int made = 0;
        return made;
    }
    std::string prefix_;
    test_support::shm_dir shm_;
    test_support::temp_dir status_;
    std::map<std::string, pid_t> pids_;
};

bool all_owned_by_others(cluster& nodes, const std::string& lost) {
    const auto owners = nodes.owners();
    for (const std::string& object : cluster::objects_of(lost)) {
        auto found = owners.find(object);
        if (found == owners.end() || found->second.node == lost) return false;
    }
    return true;
}

// Nodes a and b both run, and each still owns its objects under its first
// token.
void check_nobody_moved(cluster& nodes) {
    CHECK(nodes.running("a"));
    CHECK(nodes.running("b"));
    const auto owners = nodes.owners();
    for (const char* id : {"a", "b"})
        for (const std::string& object : cluster::objects_of(id)) {
            CAPTURE(object);
            CHECK(owners.at(object).node == id);
            CHECK(owners.at(object).fence == 1);
        }
}

} // namespace

TEST_CASE("failover: a SIGKILLed node's objects are claimed exactly once by the others, after its ttl, from a "
          "state at least as new as its last acknowledged export",
          "[postgres][cluster][failover]") {
    cluster nodes;
    for (const char* id : {"a", "b", "c"}) nodes.start(id, objects_per_node);
    std::this_thread::sleep_for(500ms);  // some ticks, exported
    nodes.signal("a", SIGKILL);
    const auto killed = std::chrono::steady_clock::now();
    CHECK(nodes.wait("a") == -SIGKILL);
    const auto acked = nodes.acked("a");
    REQUIRE(acked.size() == objects_per_node);
    REQUIRE(cluster::eventually([&] { return all_owned_by_others(nodes, "a"); }));
    const auto took = std::chrono::steady_clock::now() - killed;
    INFO("claimed " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms after the kill");
    CHECK(took >= std::chrono::milliseconds(ttl_ms) - 300ms);  // never before its ttl (less the last heartbeat's age)
    const auto owners = nodes.owners();
    std::set<std::string> takers;
    for (const std::string& object : cluster::objects_of("a")) {
        CAPTURE(object);
        const owner_row& row = owners.at(object);
        CHECK(row.fence == 2);  // a's claim, then exactly one more
        CHECK(row.node_lost == 1);
        takers.insert(row.node);
    }
    for (const std::string& taker : takers) CHECK((taker == "b" || taker == "c"));
    // The survivors go on ticking a's objects, from at least what a's store
    // acknowledged.
    std::this_thread::sleep_for(300ms);
    for (const std::string& object : cluster::objects_of("a")) {
        CAPTURE(object);
        REQUIRE(cluster::eventually([&] { return std::string(nodes.stored(object).writer) != "a"; }));
        CHECK(nodes.stored(object).count > acked.at(object));
    }
    for (const std::string& object : cluster::objects_of("b")) CHECK(owners.at(object).fence == 1);  // not moved
    CHECK(nodes.running("b"));
    CHECK(nodes.running("c"));
}

TEST_CASE("failover: a node SIGSTOPped past its ttl loses its objects; after SIGCONT it finds itself out, stops, and "
          "none of its writes land",
          "[postgres][cluster][failover]") {
    cluster nodes;
    for (const char* id : {"a", "b", "c"}) nodes.start(id, objects_per_node);
    std::this_thread::sleep_for(300ms);
    nodes.signal("a", SIGSTOP);
    REQUIRE(cluster::eventually([&] { return all_owned_by_others(nodes, "a"); }));
    // The survivors write a's objects as theirs.
    for (const std::string& object : cluster::objects_of("a"))
        REQUIRE(cluster::eventually([&] { return std::string(nodes.stored(object).writer) != "a"; }));
    std::map<std::string, std::uint64_t> before;
    for (const std::string& object : cluster::objects_of("a")) before[object] = nodes.stored(object).count;
    nodes.signal("a", SIGCONT);
    CHECK(nodes.wait("a") == 42);  // it found itself out
    std::this_thread::sleep_for(300ms);
    for (const std::string& object : cluster::objects_of("a")) {
        CAPTURE(object);
        const cluster_test::counter now = nodes.stored(object);
        CHECK(std::string(now.writer) != "a");  // none of a's writes after the takeover landed
        CHECK(now.count >= before.at(object));
    }
}

TEST_CASE("failover: PostgreSQL down for longer than the ttl: no node loses its objects, and acknowledged writes "
          "survive",
          "[postgres][cluster][failover]") {
    cluster nodes;
    for (const char* id : {"a", "b"}) nodes.start(id, objects_per_node);
    std::this_thread::sleep_for(300ms);
    postgres_server::shared().stop();
    const auto acked_a = nodes.acked("a");
    const auto acked_b = nodes.acked("b");
    std::this_thread::sleep_for(std::chrono::milliseconds(3 * ttl_ms));
    postgres_server::shared().start();
    std::this_thread::sleep_for(std::chrono::milliseconds(3 * ttl_ms));
    check_nobody_moved(nodes);
    for (const char* id : {"a", "b"})
        for (const std::string& object : cluster::objects_of(id)) {
            CAPTURE(object);
            const auto& acked = std::string(id) == "a" ? acked_a : acked_b;
            // Ticking again after the outage, from at least what was acknowledged.
            REQUIRE(cluster::eventually([&] { return nodes.stored(object).count > acked.at(object); }));
        }
}

TEST_CASE("failover: a node whose wall clock is an hour ahead (libfaketime) causes no takeover",
          "[postgres][cluster][failover]") {
    cluster nodes;
    nodes.start("a", objects_per_node, true);
    nodes.start("b", objects_per_node);
    std::this_thread::sleep_for(std::chrono::milliseconds(4 * ttl_ms));
    check_nobody_moved(nodes);
}

TEST_CASE("failover: a node SIGKILLed and restarted under the same id takes its objects back at once, from its own "
          "shared memory",
          "[postgres][cluster][failover]") {
    cluster nodes;
    nodes.start("a", objects_per_node);
    nodes.start("b", objects_per_node);
    std::this_thread::sleep_for(300ms);
    nodes.signal("a", SIGKILL);
    CHECK(nodes.wait("a") == -SIGKILL);
    const auto acked = nodes.acked("a");
    nodes.start("a", 0);  // no ttl waited: the old incarnation's objects are orphans at once, placed on a
    REQUIRE(cluster::eventually([&] {
        const auto owners = nodes.owners();
        for (const std::string& object : cluster::objects_of("a"))
            if (owners.at(object).node != "a" || owners.at(object).fence != 2) return false;
        return true;
    }));
    for (const std::string& object : cluster::objects_of("a")) {
        CAPTURE(object);
        REQUIRE(cluster::eventually([&] { return nodes.stored(object).count > acked.at(object); }));
        CHECK(std::string(nodes.stored(object).writer) == "a");
    }
}
