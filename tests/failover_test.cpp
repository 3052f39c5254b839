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
#include <utility>
#include <vector>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cluster_processes.hpp"

namespace failover_tests {  // a unity build's sources keep their names apart (tests/CMakeLists.txt)

using test_support::postgres_server;
using namespace std::chrono_literals;

namespace {

constexpr int objects_per_node = 30;
constexpr int ttl_ms = 2000;  // heartbeats every 250 ms: room for a loaded CI machine

// Three (or fewer) node processes, ttl 1 s, heartbeat 250 ms, tick 50 ms.
class cluster : public test_support::node_processes {
public:
    explicit cluster(int ttl = ttl_ms) : node_processes(KEEPSAKE_CLUSTER_NODE, ttl) {}
    static std::vector<std::string> objects_of(const std::string& id) { return node_processes::objects_of(id, objects_per_node); }
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
    // Some ticks, exported; meanwhile a's heartbeat counter is read, to
    // know when its last heartbeat was written (a loaded machine may delay
    // one well past its period).
    std::vector<std::pair<std::chrono::steady_clock::time_point, std::uint64_t>> beats;
    const auto warmed = std::chrono::steady_clock::now() + 500ms;
    while (std::chrono::steady_clock::now() < warmed) {
        const auto read_at = std::chrono::steady_clock::now();
        beats.emplace_back(read_at, nodes.heartbeats("a"));
        std::this_thread::sleep_for(20ms);
    }
    nodes.signal("a", SIGKILL);
    const auto killed = std::chrono::steady_clock::now();
    CHECK(nodes.wait("a") == -SIGKILL);
    // Its last heartbeat was written after the last read that saw fewer.
    const std::uint64_t last_beat = nodes.heartbeats("a");
    auto last_beat_after = killed - std::chrono::milliseconds(ttl_ms);  // no read saw fewer: no tighter bound
    for (const auto& [read_at, count] : beats)
        if (count < last_beat) last_beat_after = read_at;
    const auto acked = nodes.acked("a");
    REQUIRE(acked.size() == objects_per_node);
    REQUIRE(cluster::eventually([&] { return all_owned_by_others(nodes, "a"); }));
    const auto claimed = std::chrono::steady_clock::now();
    INFO("claimed " << std::chrono::duration_cast<std::chrono::milliseconds>(claimed - killed).count()
                    << " ms after the kill, "
                    << std::chrono::duration_cast<std::chrono::milliseconds>(claimed - last_beat_after).count()
                    << " ms after its last heartbeat at the latest");
    CHECK(claimed - last_beat_after >= std::chrono::milliseconds(ttl_ms));  // never before its ttl
    const auto owners = nodes.owners();
    std::set<std::string> takers;
    for (const std::string& object : cluster::objects_of("a")) {
        CAPTURE(object);
        const test_support::owner_row& row = owners.at(object);
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
    // Until both have acknowledged a write of every object (a loaded machine
    // may take longer than a few ticks).
    REQUIRE(cluster::eventually([&] {
        return nodes.acked("a").size() == objects_per_node && nodes.acked("b").size() == objects_per_node;
    }));
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
    // A long ttl: b must not take a's objects while a restarts, however
    // slowly a loaded machine starts it (the test never waits for the ttl).
    cluster nodes(10 * ttl_ms);
    nodes.start("a", objects_per_node);
    nodes.start("b", objects_per_node);
    REQUIRE(cluster::eventually([&] { return nodes.acked("a").size() == objects_per_node; }));
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

}  // namespace failover_tests
