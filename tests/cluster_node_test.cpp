// Cluster nodes in one process (issue 14, steps 4 to 6): two nodes, each
// its own segment, runtime and directory, over one real PostgreSQL server;
// their rounds run by hand (tick) on a manual clock, so deaths are decided
// without sleeping. Routing errors that name the owner, placements, capacity,
// rehome, permanently crashed objects cluster-wide, ownership changes
// watched through LISTEN/NOTIFY.
#include <catch2/catch.hpp>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include <keepsake/cluster/node.hpp>
#include <keepsake/cluster/watch.hpp>

#include "postgres_server.hpp"
#include "support.hpp"

namespace cluster_node_tests {  // a unity build's sources keep their names apart (tests/CMakeLists.txt)

using keepsake::errc;
using keepsake::cluster::not_owner_error;
using test_support::postgres_server;
using namespace std::chrono_literals;

namespace {

struct tally {
    std::uint64_t total = 0;
};
struct add {
    std::uint64_t amount = 0;
};
struct boom {};
struct tally_handler {
    std::uint64_t operator()(tally& t, const add& a) const { return t.total += a.amount; }
    std::uint64_t operator()(tally&, const boom&) const { throw std::runtime_error("boom on purpose"); }
    void operator()(tally& t, const keepsake::alarm_fired&) const { t.total += 100; }
};
using tallies = keepsake::object_directory<tally, tally_handler>;

std::string fresh_prefix() {
    static std::atomic<int> counter{0};
    return "n" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_";
}

// One node: its segment, runtime, node and directory "tallies".
struct member {
    member(const std::string& id, const std::string& prefix, std::shared_ptr<keepsake::manual_clock> time,
           keepsake::cluster::placement place = keepsake::cluster::placements::local_first(), std::size_t capacity = 0)
        : local(id, shm.options(8u << 20, 1024)),
          run(keepsake::runtime_options{1, nullptr, 64 * 1024, &local}),
          here(run, local, options(id, prefix, std::move(time), std::move(place), capacity)),
          objects(run, spec()) {
        here.serve(objects);
    }
    ~member() { here.stop(); }

    static keepsake::cluster::cluster_options options(const std::string& id, const std::string& prefix,
                                                      std::shared_ptr<keepsake::manual_clock> time,
                                                      keepsake::cluster::placement place, std::size_t capacity) {
        keepsake::cluster::cluster_options made;
        made.conninfo = postgres_server::shared().conninfo();
        made.self.node_id = id;
        made.self.address = id + ".example:7000";
        made.self.table_prefix = prefix;
        made.self.time = std::move(time);
        made.self.capacity = capacity;
        made.directories = {"tallies"};
        made.records_table = prefix + "records";
        made.heartbeat_every = keepsake::duration::zero();
        made.place = std::move(place);
        made.background = false;
        return made;
    }
    keepsake::directory_spec<tally, tally_handler> spec() {
        keepsake::directory_spec<tally, tally_handler> made;
        made.name = "tallies";
        made.guard = &here;
        made.durable = &here.store();
        made.hibernate_after = keepsake::duration::zero();
        made.threshold = keepsake::crash_threshold{2, std::chrono::hours(1), false};
        made.intensity = keepsake::restart_intensity{1000, std::chrono::seconds(10)};
        return made;
    }
    // Writes every committed state to the store now (an exporter's pass).
    void export_now() {
        keepsake::exporter out(local, here.store());
        REQUIRE(out.flush());
    }

    test_support::shm_dir shm;
    keepsake::segment local;
    keepsake::runtime run;
    keepsake::cluster::node here;
    tallies objects;
};

not_owner_error not_owner_from(const std::function<void()>& call) {
    try {
        call();
    } catch (const not_owner_error& refused) {
        return refused;
    }
    FAIL("no not_owner_error");
    throw std::logic_error("unreachable");
}

} // namespace

TEST_CASE("cluster node: a call for an object another node owns fails fast with an error that names the owner and "
          "its address",
          "[postgres][cluster][node]") {
    const std::string prefix = fresh_prefix();
    auto time = std::make_shared<keepsake::manual_clock>();
    member a("a", prefix, time);
    member b("b", prefix, time);
    CHECK(a.objects.call("p1", add{5}) == 5);  // local_first: placed and claimed on a
    const not_owner_error refused = not_owner_from([&] { b.objects.call("p1", add{1}); });
    CHECK(refused.code() == errc::not_owner);
    CHECK(refused.node_id() == "a");
    CHECK(refused.address() == "a.example:7000");
    const auto owner = b.here.owner_of("tallies", "p1");
    REQUIRE(owner);
    CHECK(owner->node_id == "a");
    CHECK(owner->owner_alive);
    CHECK(b.objects.active_count() == 0);
    CHECK(a.objects.call("p1", add{1}) == 6);
}

TEST_CASE("cluster node: placements choose the node a new object starts on, and every node agrees",
          "[postgres][cluster][node]") {
    const std::string prefix = fresh_prefix();
    auto time = std::make_shared<keepsake::manual_clock>();
    SECTION("on_node") {
        member a("a", prefix, time, keepsake::cluster::placements::on_node("b"));
        member b("b", prefix, time);
        CHECK(not_owner_from([&] { a.objects.call("p1", add{1}); }).node_id() == "b");
        CHECK(b.objects.call("p1", add{2}) == 2);  // placed on b: b claims it at its call
        CHECK(a.here.owner_of("tallies", "p1")->node_id == "b");
    }
    SECTION("least_loaded") {
        member a("a", prefix, time, keepsake::cluster::placements::least_loaded());
        member b("b", prefix, time);
        for (int i = 0; i < 3; ++i) b.objects.call("b" + std::to_string(i), add{1});
        CHECK(a.objects.call("new", add{1}) == 1);  // a holds none, b three
        CHECK(not_owner_from([&] { b.objects.call("new", add{1}); }).node_id() == "a");
    }
    SECTION("round_robin") {
        member a("a", prefix, time, keepsake::cluster::placements::round_robin());
        member b("b", prefix, time);
        std::map<std::string, int> placed;
        for (int i = 0; i < 4; ++i) {
            const std::string key = "r" + std::to_string(i);
            try {
                a.objects.call(key, add{1});
                ++placed["a"];
            } catch (const not_owner_error& refused) {
                ++placed[refused.node_id()];
                b.objects.call(key, add{1});
            }
        }
        CHECK(placed["a"] == 2);
        CHECK(placed["b"] == 2);
    }
    SECTION("random") {
        member a("a", prefix, time, keepsake::cluster::placements::random());
        member b("b", prefix, time);
        std::map<std::string, int> placed;
        for (int i = 0; i < 24; ++i) {
            try {
                a.objects.call("x" + std::to_string(i), add{1});
                ++placed["a"];
            } catch (const not_owner_error& refused) {
                ++placed[refused.node_id()];
            }
        }
        CHECK(placed["a"] + placed["b"] == 24);
        CHECK(placed["a"] > 0);  // all on one node: 2 chances in 2^24
        CHECK(placed["b"] > 0);
    }
    SECTION("a function of the key") {
        member a("a", prefix, time, [](const keepsake::cluster::placement_request& request) {
            return request.key.back() == '1' ? std::string("a") : std::string("b");
        });
        member b("b", prefix, time);
        CHECK(a.objects.call("x1", add{1}) == 1);
        CHECK(not_owner_from([&] { a.objects.call("x2", add{1}); }).node_id() == "b");
    }
    SECTION("a node at its capacity takes no more") {
        member a("a", prefix, time);
        member b("b", prefix, time, keepsake::cluster::placements::local_first(), 1);
        CHECK(b.objects.call("first", add{1}) == 1);
        CHECK(not_owner_from([&] { b.objects.call("second", add{1}); }).node_id() == "a");
        CHECK(a.objects.call("second", add{1}) == 1);
    }
}

TEST_CASE("cluster node: rehome stops the object, writes its final state, and the target claims it",
          "[postgres][cluster][node]") {
    const std::string prefix = fresh_prefix();
    auto time = std::make_shared<keepsake::manual_clock>();
    keepsake::cluster::ownership_watch watch(postgres_server::shared().conninfo(), prefix);
    member a("a", prefix, time);
    member b("b", prefix, time);
    CHECK(a.objects.call("p1", add{41}) == 41);
    a.here.rehome("tallies", "p1", "b");
    CHECK(a.objects.active_count() == 0);
    CHECK(not_owner_from([&] { a.objects.call("p1", add{1}); }).node_id() == "b");
    b.here.tick();  // claims what was placed on it
    CHECK(b.objects.active_count() == 1);
    CHECK(b.objects.call("p1", add{1}) == 42);  // the state moved with it
    const auto owner = a.here.owner_of("tallies", "p1");
    CHECK(owner->node_id == "b");
    CHECK(owner->fence == 2);
    CHECK(owner->node_lost == 0);  // given up, not lost

    // The watch saw a claim it, give it up, and b claim it.
    std::vector<keepsake::cluster::ownership_change> seen;
    for (int round = 0; round < 50 && seen.size() < 3; ++round)
        for (auto& each : watch.wait(100ms)) seen.push_back(each);
    REQUIRE(seen.size() >= 3);
    CHECK(seen[0].key == "tallies/p1");
    CHECK(seen[0].node == "a");
    CHECK(seen[seen.size() - 2].node.empty());
    CHECK(seen.back().node == "b");
}

TEST_CASE("cluster node: a dead node's objects are claimed by a sweep and start there; a permanently crashed "
          "object is claimed by no node",
          "[postgres][cluster][node]") {
    const std::string prefix = fresh_prefix();
    auto time = std::make_shared<keepsake::manual_clock>();
    auto a = std::make_unique<member>("a", prefix, time);
    member b("b", prefix, time);
    CHECK(a->objects.call("good", add{7}) == 7);
    CHECK(a->objects.call("poison", add{1}) == 1);
    for (int crash = 0; crash < 2; ++crash) CHECK_THROWS(a->objects.call("poison", boom{}));
    a->export_now();
    a->here.tick();  // marks the permanently crashed object in the cluster
    CHECK(a->here.owner_of("tallies", "poison")->permanently_crashed);
    b.here.tick();   // b sees a heartbeating
    a->here.stop();
    time->advance(6s);  // a is silent on b's clock past its ttl
    b.here.tick();
    CHECK(b.here.owned() == 1);
    CHECK(b.objects.active_count() == 1);  // started at once
    CHECK(b.objects.call("good", add{1}) == 8);
    CHECK(b.here.owner_of("tallies", "good")->node_lost == 1);
    CHECK(b.here.owner_of("tallies", "poison")->node_id == "a");
    const keepsake::error refused = test_support::error_from([&] { b.objects.call("poison", add{1}); });
    CHECK(refused.code() == errc::permanently_crashed);
    b.here.clear_crashed("tallies", "poison");
    CHECK(b.here.owner_of("tallies", "poison")->node_id == "b");
    CHECK_FALSE(b.here.owner_of("tallies", "poison")->permanently_crashed);
    CHECK(b.objects.call("poison", add{1}) == 2);  // its committed state, on b
}

TEST_CASE("cluster node: the crash threshold holds across nodes: crashes on a dead node count on the node that "
          "claims its object",
          "[postgres][cluster][node]") {
    const std::string prefix = fresh_prefix();
    auto time = std::make_shared<keepsake::manual_clock>();
    auto a = std::make_unique<member>("a", prefix, time);
    member b("b", prefix, time);
    CHECK(a->objects.call("fragile", add{3}) == 3);
    CHECK_THROWS(a->objects.call("fragile", boom{}));  // one crash of two allowed
    CHECK(a->objects.call("fragile", add{1}) == 4);
    a->export_now();
    b.here.tick();
    a->here.stop();
    a.reset();  // the node is gone
    time->advance(6s);
    b.here.tick();
    REQUIRE(b.here.owner_of("tallies", "fragile")->node_id == "b");
    CHECK(b.objects.call("fragile", add{1}) == 5);
    CHECK_THROWS(b.objects.call("fragile", boom{}));  // the second crash, counted with a's
    b.here.tick();
    CHECK(b.here.owner_of("tallies", "fragile")->permanently_crashed);
}

TEST_CASE("cluster node: an object's alarms move with it: a dead node's alarm fires on the node that claims it, "
          "and no node fires the alarms of objects it does not own",
          "[postgres][cluster][node]") {
    const std::string prefix = fresh_prefix();
    auto time = std::make_shared<keepsake::manual_clock>();
    auto a = std::make_unique<member>("a", prefix, time);
    member b("b", prefix, time);
    CHECK(a->objects.call("sleepy", add{1}) == 1);
    a->objects.schedule_alarm("sleepy", "wake", 1500ms);
    a->export_now();
    member c("c", prefix, time);  // its directory starts with a's objects in the store
    b.here.tick();
    c.here.tick();
    a->here.stop();
    a.reset();
    time->advance(6s);
    b.here.tick();  // b claims "sleepy" and starts it
    c.here.tick();
    REQUIRE(b.here.owner_of("tallies", "sleepy")->node_id == "b");
    bool fired = false;
    for (int wait = 0; wait < 500 && !fired; ++wait) {
        fired = b.objects.call("sleepy", add{0}) == 101;
        if (!fired) std::this_thread::sleep_for(10ms);
    }
    CHECK(fired);
    // Counted on b's runtime thread once the handler's turn ends, which may
    // be just after the call above saw its effect.
    CHECK(test_support::wait_until([&] { return b.objects.stats().alarms_fired == 1; }, std::chrono::seconds(5)));
    CHECK(b.objects.stats().alarms_fired == 1);
    CHECK(c.objects.stats().alarms_fired == 0);
    CHECK(c.objects.stats().alarm_retries == 0);
    CHECK(c.objects.active_count() == 0);
}

}  // namespace cluster_node_tests
