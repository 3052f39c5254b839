// The cluster tier's first steps (issue 14) against a real PostgreSQL server
// the tests start. Membership: incarnations, heartbeats, death declared on
// the observer's own clock (a manual clock here, so no test sleeps for a
// ttl), racing sweepers, a SIGSTOPped node process that finds itself fenced
// after SIGCONT. Ownership: one owner, claims with growing tokens, fenced
// writes, racing orphan sweeps, permanently crashed objects, restarts under
// the same id.
#include <catch2/catch.hpp>

#include <atomic>
#include <map>
#include <mutex>
#include <thread>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <keepsake/cluster/membership.hpp>
#include <keepsake/cluster/ownership.hpp>
#include <keepsake/stores/postgres_store.hpp>

#include "postgres_server.hpp"
#include "support.hpp"

namespace cluster_tests {  // a unity build's sources keep their names apart (tests/CMakeLists.txt)

using keepsake::cluster::membership;
using keepsake::cluster::node_options;
using keepsake::cluster::ownership;
using test_support::postgres_server;
using namespace std::chrono_literals;

namespace {

// Each test its own tables (each section runs the case again).
std::string fresh_prefix() {
    static std::atomic<int> counter{0};
    return "c" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_";
}

node_options node(const std::string& id, const std::string& prefix, std::shared_ptr<keepsake::clock> time,
                  keepsake::duration ttl = 5s) {
    node_options options;
    options.node_id = id;
    options.address = id + ".example:7000";
    options.ttl = ttl;
    options.table_prefix = prefix;
    options.time = std::move(time);
    return options;
}

bool declared(const std::vector<keepsake::cluster::node_view>& nodes, const std::string& id) {
    for (const auto& each : nodes)
        if (each.node_id == id) return true;
    return false;
}

} // namespace

TEST_CASE("cluster: each start is a new incarnation, and the old one is fenced at its next heartbeat",
          "[postgres][cluster]") {
    const std::string prefix = fresh_prefix();
    auto time = std::make_shared<keepsake::manual_clock>();
    membership first(postgres_server::shared().conninfo(), node("a", prefix, time));
    CHECK(first.incarnation() == 1);
    CHECK(first.heartbeat());
    membership again(postgres_server::shared().conninfo(), node("a", prefix, time));
    CHECK(again.incarnation() == 2);
    CHECK_FALSE(first.heartbeat());
    CHECK(first.fenced());
    CHECK(again.heartbeat());
    CHECK_FALSE(again.fenced());
    for (const auto& each : again.observe())
        if (each.node_id == "a") {
            CHECK(each.incarnation == 2);
            CHECK(each.address == "a.example:7000");
        }
}

TEST_CASE("cluster: a node silent for its ttl on the observer's clock is declared dead, once, and fenced",
          "[postgres][cluster]") {
    const std::string prefix = fresh_prefix();
    auto time = std::make_shared<keepsake::manual_clock>();
    membership a(postgres_server::shared().conninfo(), node("a", prefix, time));
    membership b(postgres_server::shared().conninfo(), node("b", prefix, time));
    a.observe();  // a first sees b now
    SECTION("a heartbeat within the ttl keeps it alive") {
        for (int beat = 0; beat < 10; ++beat) {
            time->advance(4s);
            CHECK(b.heartbeat());
            CHECK(a.sweep().empty());
        }
        CHECK_FALSE(b.fenced());
    }
    SECTION("silent for the ttl: declared, and its next heartbeat fails") {
        time->advance(4s);
        CHECK(a.sweep().empty());
        time->advance(1s);
        const auto gone = a.sweep();
        REQUIRE(gone.size() == 1);
        CHECK(gone[0].node_id == "b");
        CHECK(a.sweep().empty());  // once
        CHECK(b.fenced());         // on its own clock too
        CHECK_FALSE(b.heartbeat());
        CHECK(b.fenced());
        CHECK(a.heartbeat());  // the observer's own row is untouched
    }
    SECTION("a restart under the same id is a new, live incarnation") {
        time->advance(6s);
        REQUIRE(a.sweep().size() == 1);
        membership b_again(postgres_server::shared().conninfo(), node("b", prefix, time));
        CHECK(b_again.incarnation() == 2);
        CHECK(b_again.heartbeat());
        time->advance(1s);
        CHECK(a.sweep().empty());
    }
}

TEST_CASE("cluster: no decision rests on wall clocks: a node's own clock decides it is out", "[postgres][cluster]") {
    const std::string prefix = fresh_prefix();
    auto time = std::make_shared<keepsake::manual_clock>();
    membership a(postgres_server::shared().conninfo(), node("a", prefix, time, 2s));
    CHECK_FALSE(a.fenced());
    time->advance(1999ms);
    CHECK_FALSE(a.fenced());
    time->advance(1ms);
    CHECK(a.fenced());  // could not heartbeat for its ttl: out, whatever the others think
    CHECK(a.heartbeat());  // nobody declared it: it may go on
    CHECK_FALSE(a.fenced());
}

TEST_CASE("cluster: several sweepers racing declare a silent node exactly once", "[postgres][cluster]") {
    const std::string prefix = fresh_prefix();
    auto time = std::make_shared<keepsake::manual_clock>();
    membership silent(postgres_server::shared().conninfo(), node("silent", prefix, time));
    std::vector<std::unique_ptr<membership>> sweepers;
    for (int i = 0; i < 4; ++i) {
        sweepers.push_back(
            std::make_unique<membership>(postgres_server::shared().conninfo(), node("s" + std::to_string(i), prefix, time)));
        sweepers.back()->observe();
    }
    time->advance(6s);
    for (auto& each : sweepers) REQUIRE(each->heartbeat());
    std::atomic<int> declarations{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> threads;
    for (auto& each : sweepers)
        threads.emplace_back([&, sweeper = each.get()] {
            while (!go.load()) std::this_thread::yield();
            declarations += declared(sweeper->sweep(), "silent") ? 1 : 0;
        });
    go = true;
    for (auto& thread : threads) thread.join();
    CHECK(declarations.load() == 1);
    CHECK_FALSE(silent.heartbeat());
}

TEST_CASE("cluster: a SIGSTOPped node is declared dead by the others and finds itself fenced after SIGCONT",
          "[postgres][cluster][stop]") {
    const std::string prefix = fresh_prefix();
    const std::string conninfo = postgres_server::shared().conninfo();
    const auto ttl = 3s;  // heartbeats every 50 ms: a loaded machine must not make it look dead too soon
    int ready[2];
    REQUIRE(::pipe(ready) == 0);
    const pid_t child = ::fork();
    if (child == 0) {
        // The node: heartbeats every 50 ms on the real clock; exits 42 when
        // it finds itself out (fenced), 1 on anything else.
        try {
            membership self(conninfo, node("paused", prefix, nullptr, ttl));
            const char one = 1;
            if (::write(ready[1], &one, 1) != 1) std::_Exit(1);
            for (;;) {
                if (!self.heartbeat() || self.fenced()) std::_Exit(42);
                std::this_thread::sleep_for(50ms);
            }
        } catch (...) {
            std::_Exit(1);
        }
    }
    char one = 0;
    REQUIRE(::read(ready[0], &one, 1) == 1);
    ::close(ready[0]);
    ::close(ready[1]);
    membership observer(conninfo, node("observer", prefix, nullptr, ttl));
    observer.observe();
    std::this_thread::sleep_for(300ms);
    CHECK(observer.sweep().empty());  // it is heartbeating
    REQUIRE(::kill(child, SIGSTOP) == 0);
    const auto stopped = std::chrono::steady_clock::now();
    // How long the observer had already seen it silent: a loaded machine
    // may have held its last heartbeats back, and the ttl counts from the
    // last one the observer saw, not from the stop.
    keepsake::duration silent_at_stop{};
    for (const auto& each : observer.observe())
        if (each.node_id == "paused") silent_at_stop = each.silent_for;
    bool gone = false;
    while (!gone && std::chrono::steady_clock::now() - stopped < 30s) {
        gone = declared(observer.sweep(), "paused");
        if (!gone) std::this_thread::sleep_for(50ms);
    }
    const auto took = std::chrono::steady_clock::now() - stopped;
    CHECK(gone);
    INFO("declared " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms after the stop, "
                     << std::chrono::duration_cast<std::chrono::milliseconds>(silent_at_stop).count()
                     << " ms of silence seen before it");
    CHECK(took + silent_at_stop >= ttl);  // never before its ttl of silence
    REQUIRE(::kill(child, SIGCONT) == 0);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 42);
}

// --- ownership (issue 14, step 3) ---------------------------------------------

namespace {

keepsake::record state_of(const std::string& key, std::uint64_t generation, const std::string& text) {
    keepsake::record r;
    r.key = key;
    r.generation = generation;
    r.schema_version = 1;
    r.codec = 1;
    r.fingerprint = 0xABCDEF0123456789ull;
    for (char c : text) r.bytes.push_back(static_cast<std::byte>(c));
    return r;
}

} // namespace

TEST_CASE("cluster: an object has one owner; a dead owner's objects are claimed with a higher token, and its "
          "writes no longer land",
          "[postgres][cluster][ownership]") {
    const std::string prefix = fresh_prefix();
    const std::string records = prefix + "records";
    const std::string conninfo = postgres_server::shared().conninfo();
    auto time = std::make_shared<keepsake::manual_clock>();
    membership a(conninfo, node("a", prefix, time));
    membership b(conninfo, node("b", prefix, time));
    ownership at_a(conninfo, a, prefix, records);
    ownership at_b(conninfo, b, prefix, records);

    const auto first = at_a.claim("player/1");
    REQUIRE(first);
    CHECK(first->fence == 1);
    CHECK_FALSE(at_b.claim("player/1"));  // a is alive
    auto owner = at_b.owner_of("player/1");
    REQUIRE(owner);
    CHECK(owner->node_id == "a");
    CHECK(owner->address == "a.example:7000");
    CHECK(owner->owner_alive);
    CHECK(at_a.put_fenced(state_of("player/1", 1, "a-1"), first->fence));
    CHECK_FALSE(at_b.put_fenced(state_of("player/1", 2, "b-2"), first->fence));  // b holds no token

    b.observe();
    time->advance(6s);
    REQUIRE(b.heartbeat());
    REQUIRE(declared(b.sweep(), "a"));
    const auto second = at_b.claim("player/1");
    REQUIRE(second);
    CHECK(second->fence == 2);
    CHECK_FALSE(at_a.put_fenced(state_of("player/1", 5, "a-5"), first->fence));  // fenced out
    CHECK(at_b.put_fenced(state_of("player/1", 2, "b-2"), second->fence));
    keepsake::postgres_store_options read_records;
    read_records.table = records;
    keepsake::postgres_store store(conninfo, read_records);
    const auto kept = store.get("player/1");
    REQUIRE(kept);
    CHECK(kept->generation == 2);
    CHECK(kept->bytes == state_of("player/1", 2, "b-2").bytes);
    owner = at_a.owner_of("player/1");
    CHECK(owner->node_id == "b");
    CHECK(owner->fence == 2);
}

TEST_CASE("cluster: sweepers racing for a dead node's orphans claim each exactly once; a permanently crashed "
          "object is never claimed",
          "[postgres][cluster][ownership]") {
    const std::string prefix = fresh_prefix();
    const std::string conninfo = postgres_server::shared().conninfo();
    auto time = std::make_shared<keepsake::manual_clock>();
    membership dead(conninfo, node("dead", prefix, time));
    ownership at_dead(conninfo, dead, prefix);
    constexpr int objects = 300;
    for (int i = 0; i < objects; ++i) REQUIRE(at_dead.claim("o" + std::to_string(i)));
    REQUIRE(at_dead.mark_permanently_crashed("o7", 1));

    std::vector<std::unique_ptr<membership>> nodes;
    std::vector<std::unique_ptr<ownership>> owners;
    for (int i = 0; i < 3; ++i) {
        nodes.push_back(std::make_unique<membership>(conninfo, node("n" + std::to_string(i), prefix, time)));
        owners.push_back(std::make_unique<ownership>(conninfo, *nodes.back(), prefix));
        nodes.back()->observe();
    }
    time->advance(6s);
    for (auto& each : nodes) REQUIRE(each->heartbeat());
    REQUIRE(declared(nodes[0]->sweep(), "dead"));

    std::mutex taken_lock;
    std::map<std::string, int> taken;
    std::vector<std::thread> sweepers;
    for (auto& each : owners)
        sweepers.emplace_back([&, mine = each.get()] {
            for (;;) {
                const auto got = mine->claim_orphans(17);
                if (got.empty()) return;
                std::lock_guard<std::mutex> lock(taken_lock);
                for (const auto& one : got) ++taken[one.key];
            }
        });
    for (auto& thread : sweepers) thread.join();
    CHECK(taken.size() == objects - 1);
    CHECK(taken.count("o7") == 0);
    for (const auto& [key, times] : taken) {
        CAPTURE(key);
        CHECK(times == 1);
    }
    CHECK(owners[0]->owner_of("o7")->node_id == "dead");
}

TEST_CASE("cluster: a node restarted under the same id orphans its old objects at once", "[postgres][cluster][ownership]") {
    const std::string prefix = fresh_prefix();
    const std::string conninfo = postgres_server::shared().conninfo();
    auto time = std::make_shared<keepsake::manual_clock>();
    membership before(conninfo, node("a", prefix, time));
    ownership at_before(conninfo, before, prefix);
    REQUIRE(at_before.claim("k1"));
    REQUIRE(at_before.claim("k2"));
    membership after(conninfo, node("a", prefix, time));  // no ttl waited
    ownership at_after(conninfo, after, prefix);
    const auto orphans = at_after.claim_orphans(10);
    CHECK(orphans.size() == 2);
    for (const auto& one : orphans) CHECK(one.fence == 2);
    CHECK_FALSE(at_before.put_fenced(state_of("k1", 1, "old"), 1));
    CHECK(at_after.release("k1", 2));
    CHECK_FALSE(at_after.release("k1", 2));  // released already
    const auto again = at_after.claim("k1");
    REQUIRE(again);
    CHECK(again->fence == 3);
}

}  // namespace cluster_tests
