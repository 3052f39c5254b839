// Objects on demand (issue 13): a directory of objects by key, activated
// when called (once, however many callers race), hibernated when idle,
// shut down to the store, evicted past max_active, and durable alarms.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <keepsake/keepsake.hpp>
#include <keepsake/metrics.hpp>
#include <keepsake/objects/directory.hpp>
#include <keepsake/stores/sqlite_store.hpp>
#include <keepsake/testing.hpp>

#include "support.hpp"

namespace objects_tests {  // a unity build's sources keep their names apart (tests/CMakeLists.txt)

using namespace std::chrono_literals;
using keepsake::errc;
using keepsake::event_kind;
using keepsake::object_status;
using test_support::shm_dir;

namespace {

struct player {
    std::uint64_t score = 0;
    std::uint64_t buffs_expired = 0;
    std::uint32_t starts = 0;
};

struct add {
    std::uint64_t points = 0;
};
struct buff {
    std::string name;
    keepsake::duration lasts{};
};
struct boom {};
struct wait_here {
    std::shared_ptr<std::atomic<bool>> release;
    std::shared_ptr<std::atomic<bool>> entered = std::make_shared<std::atomic<bool>>(false);  // set by the handler
};

// Crashes of the alarm handler it should make, shared with the test.
std::atomic<int> alarm_crashes_wanted{0};

struct player_handler {
    std::uint64_t operator()(player& p, const add& a) const { return p.score += a.points; }
    bool operator()(player& p, const buff& b, keepsake::object_context<player>& context) const {
        (void)p;
        context.schedule_alarm(b.name, b.lasts);
        return true;
    }
    bool operator()(player&, const boom&) const { throw std::runtime_error("boom on purpose"); }
    bool operator()(player&, const wait_here& w) const {
        w.entered->store(true);
        while (!w.release->load()) boost::this_fiber::yield();
        return true;
    }
    void operator()(player& p, const keepsake::alarm_fired&) const {
        if (alarm_crashes_wanted.load() > 0) {
            alarm_crashes_wanted.fetch_sub(1);
            throw std::runtime_error("alarm handler crashed on purpose");
        }
        ++p.buffs_expired;
    }
};

using players_directory = keepsake::object_directory<player, player_handler>;

keepsake::directory_spec<player, player_handler> players_spec() {
    keepsake::directory_spec<player, player_handler> spec;
    spec.name = "players";
    spec.hibernate_after = 10s;
    spec.call_timeout = 20s;
    return spec;
}

// A slow start: the initial state takes its time, until the flag is set.
std::shared_ptr<std::atomic<bool>> slow_start(keepsake::directory_spec<player, player_handler>& spec) {
    auto release = std::make_shared<std::atomic<bool>>(false);
    spec.initial = [release](const std::string&) {
        while (!release->load()) boost::this_fiber::yield();
        return player{};
    };
    return release;
}

struct rig {
    explicit rig(std::uint32_t threads = 0)
        : seg("objects", dir.options(8u << 20, 1024)),
          rt(keepsake::runtime_options{threads, clock, 64 * 1024, &seg}) {
        keepsake::set_crash_reports(false);
    }
    shm_dir dir;
    std::shared_ptr<keepsake::manual_clock> clock = std::make_shared<keepsake::manual_clock>(1000s);
    keepsake::segment seg;
    keepsake::runtime rt;
};

} // namespace

TEST_CASE("objects: a call starts the object from its committed state, once", "[objects]") {
    rig r;
    players_directory players(r.rt, players_spec());
    CHECK(players.lookup("ada") == object_status::absent);
    CHECK(players.call("ada", add{5}) == 5);
    CHECK(players.lookup("ada") == object_status::active);
    CHECK(players.call("ada", add{2}) == 7);
    CHECK(players.stats().activations == 1);
    CHECK(players.active_count() == 1);
    // A read that does not wake it.
    CHECK(players.get_state("ada")->score == 7);
    CHECK_FALSE(players.get_state("bob"));
    // Callables run on the object's own state.
    CHECK(players.call("ada", [](player& p) { return p.score * 2; }) == 14);
    CHECK(players.list() == std::vector<std::string>{"ada"});
    CHECK(players.count() == 1);
}

TEST_CASE("objects: a directory's key space is its own, and its objects are counted by directory, not by name",
          "[objects]") {
    rig r;
    keepsake::unit_spec<player> other;
    other.name = "players/zed";
    {
        players_directory players(r.rt, players_spec());
        CHECK(players.call("ada", add{5}) == 5);
        // No unit, supervisor or other directory takes a name in it.
        const keepsake::error unit_refused = test_support::error_from([&] { keepsake::start_unit(r.rt, other); });
        CHECK(unit_refused.code() == errc::already_started);
        CHECK_THAT(unit_refused.what(), Catch::Matchers::Contains("key space of the object directory 'players'"));
        keepsake::supervisor_spec sup;
        sup.name = "players/sup";
        CHECK(test_support::error_from([&] { keepsake::start_supervisor(r.rt, sup); }).code() == errc::already_started);
        CHECK(test_support::error_from([&] { players_directory again(r.rt, players_spec()); }).code() ==
              errc::already_started);
        auto nested_spec = players_spec();
        nested_spec.name = "players.vip";  // its keys begin "players.vip/": apart from "players/"
        players_directory nested(r.rt, nested_spec);
        CHECK(nested.call("ada", add{1}) == 1);
        // Metrics: the directory's counts, and no series of each object.
        const std::string text =
            keepsake::prometheus_text(r.rt, {}, {keepsake::metrics_of(players), keepsake::metrics_of(nested)});
        CHECK_THAT(text, Catch::Matchers::Contains("keepsake_directory_active_objects{directory=\"players\"} 1\n"));
        CHECK_THAT(text, Catch::Matchers::Contains("keepsake_directory_activations_total{directory=\"players.vip\"} 1\n"));
        CHECK_THAT(text, !Catch::Matchers::Contains("players/ada"));
    }
    // Once the directory is gone its key space is free, and a unit in it
    // keeps a directory of that name from opening while it lives.
    auto unit = keepsake::start_unit(r.rt, other);
    CHECK(unit.call([](player& p) { return ++p.score; }) == 1);
    CHECK(test_support::error_from([&] { players_directory blocked(r.rt, players_spec()); }).code() ==
          errc::already_started);
    keepsake::stop_unit(r.rt, unit);
    unit = {};
    players_directory reopened(r.rt, players_spec());
    CHECK(reopened.call("ada", add{1}) == 6);
}

// A handler with state of its own. The objects of a directory share one
// unit spec, but each keeps its own copy of the handler.
struct counting_handler {
    std::uint64_t served = 0;
    std::uint64_t operator()(player&, const add&) { return ++served; }
};

TEST_CASE("objects: each object keeps its own handler copy and its own initial state, made only when needed",
          "[objects]") {
    rig r;
    keepsake::directory_spec<player, counting_handler> spec;
    spec.name = "counted";
    spec.call_timeout = 20s;
    auto made = std::make_shared<std::vector<std::string>>();
    spec.initial = [made](const std::string& key) {
        made->push_back(key);
        player fresh;
        fresh.score = 100 * key.size();
        return fresh;
    };
    keepsake::object_directory<player, counting_handler> counted(r.rt, spec);
    CHECK(counted.call("a", add{}) == 1);
    CHECK(counted.call("a", add{}) == 2);
    CHECK(counted.call("bb", add{}) == 1);  // not 3: its own handler
    CHECK(counted.get_state("a")->score == 100);
    CHECK(counted.get_state("bb")->score == 200);
    CHECK(*made == std::vector<std::string>{"a", "bb"});
    // Woken again from its commit: the initial state is not made again.
    counted.call("a", [](player& p) { p.score = 7; });
    counted.terminate("a");
    CHECK(counted.call("a", [](const player& p) { return p.score; }) == 7);
    CHECK(*made == std::vector<std::string>{"a", "bb"});
}

TEST_CASE("objects: an initial state that throws fails that object's start, not the others'", "[objects]") {
    rig r;
    auto spec = players_spec();
    spec.initial = [](const std::string& key) {
        if (key == "bad") throw std::runtime_error("no initial state for 'bad'");
        return player{};
    };
    players_directory players(r.rt, spec);
    keepsake::set_crash_reports(false);
    CHECK(test_support::error_from([&] { players.call("bad", add{1}); }).code() == errc::start_failed);
    CHECK(players.lookup("bad") == object_status::absent);
    CHECK(players.call("good", add{3}) == 3);
}

TEST_CASE("objects: an idle object hibernates and wakes with its state", "[objects]") {
    rig r;
    players_directory players(r.rt, players_spec());
    players.call("ada", add{3});
    players.cast("bob", add{4});
    keepsake::testing::run_until_idle(r.rt);
    r.clock->advance(5s);
    players.call("bob", add{1});  // bob was active 5 s later than ada
    r.clock->advance(6s);
    keepsake::testing::run_until_idle(r.rt);  // the housekeeping wakes on the clock
    CHECK(players.lookup("ada") == object_status::hibernated);
    CHECK(players.lookup("bob") == object_status::active);
    CHECK(players.active_count() == 1);
    CHECK(players.get_state("ada")->score == 3);
    CHECK(players.call("ada", add{1}) == 4);
    CHECK(players.stats().activations == 3);
    CHECK(players.stats().hibernations == 1);
}

TEST_CASE("objects: terminate hibernates, terminate_and_delete leaves nothing", "[objects]") {
    rig r;
    players_directory players(r.rt, players_spec());
    players.call("ada", add{3});
    CHECK(players.terminate("ada"));
    CHECK_FALSE(players.terminate("ada"));
    CHECK(players.lookup("ada") == object_status::hibernated);
    players.terminate_and_delete("ada");
    CHECK(players.lookup("ada") == object_status::absent);
    CHECK(players.list().empty());
    for (const auto& key : r.seg.list()) CHECK(key.find("players/ada") == std::string::npos);
    CHECK(players.call("ada", add{1}) == 1);  // starts afresh
}

TEST_CASE("objects: max_active evicts the least recently used idle object, never a busy one", "[objects]") {
    rig r(1);
    auto spec = players_spec();
    spec.max_active = 2;
    players_directory players(r.rt, spec);
    players.call("a", add{1});
    players.call("b", add{1});
    // a is busy in a call that waits; b is idle but newer.
    auto release = std::make_shared<std::atomic<bool>>(false);
    const wait_here hold_a{release};
    std::thread busy([&] { players.call("a", hold_a); });
    REQUIRE(test_support::wait_until([&] { return hold_a.entered->load(); }));
    players.call("c", add{1});  // evicts b (a is busy)
    CHECK(players.lookup("b") == object_status::hibernated);
    CHECK(players.lookup("a") == object_status::active);
    CHECK(players.stats().evictions == 1);
    // Both active ones busy now: a new key is refused.
    auto release_c = std::make_shared<std::atomic<bool>>(false);
    const wait_here hold_c{release_c};
    std::thread busy_c([&] { players.call("c", hold_c); });
    REQUIRE(test_support::wait_until([&] { return hold_c.entered->load(); }));
    CHECK(test_support::error_from([&] { players.call("d", add{1}); }).code() == errc::limit_reached);
    release->store(true);
    release_c->store(true);
    busy.join();
    busy_c.join();
    CHECK(players.call("d", add{1}) == 1);
    CHECK(players.get_state("b")->score == 1);
}

TEST_CASE("objects: 64 callers on 4 threads race to a cold key: one activation, all answered", "[objects]") {
    rig r(2);
    players_directory players(r.rt, players_spec());
    std::atomic<int> answered{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&] {
            while (!go.load()) std::this_thread::yield();
            std::vector<std::unique_ptr<boost::fibers::fiber>> callers;
            for (int f = 0; f < 16; ++f)
                callers.push_back(std::make_unique<boost::fibers::fiber>([&] {
                    if (players.call("cold", add{1}) > 0) answered.fetch_add(1);
                }));
            for (auto& each : callers) each->join();
        });
    go.store(true);
    for (auto& each : threads) each.join();
    CHECK(answered.load() == 64);
    CHECK(players.stats().activations == 1);
    CHECK(players.get_state("cold")->score == 64);
}

TEST_CASE("objects: too many waiters for one start fail fast with overloaded", "[objects]") {
    rig r(1);
    auto spec = players_spec();
    spec.max_waiters = 1;
    auto release = slow_start(spec);
    players_directory players(r.rt, spec);
    std::thread starter([&] { players.call("slow", add{1}); });
    while (players.active_count() == 0) std::this_thread::sleep_for(1ms);  // the entry exists: starting
    // Two more callers: whichever comes second is refused at once (which
    // one is up to the scheduler), the other waits for the start.
    std::atomic<int> refused{0};
    std::atomic<int> other_errors{0};
    auto wait_for_start = [&] {
        try {
            players.call("slow", add{1});
        } catch (const keepsake::error& failure) {
            ++(failure.code() == errc::overloaded ? refused : other_errors);
        }
    };
    std::thread first(wait_for_start);
    std::thread second(wait_for_start);
    CHECK(test_support::wait_until([&] { return refused.load() >= 1; }));
    release->store(true);
    starter.join();
    first.join();
    second.join();
    CHECK(refused.load() == 1);
    CHECK(other_errors.load() == 0);
    CHECK(players.get_state("slow")->score == 2);
}

TEST_CASE("objects: alarms fire on the runtime's clock, wake a hibernated object, and are removed once done",
          "[objects]") {
    rig r;
    players_directory players(r.rt, players_spec());
    players.call("ada", buff{"haste", 30s});
    players.call("ada", buff{"shield", 90s});
    REQUIRE(players.alarms("ada").size() == 2);
    r.clock->advance(20s);
    keepsake::testing::run_until_idle(r.rt);
    CHECK(players.lookup("ada") == object_status::hibernated);
    r.clock->advance(11s);
    keepsake::testing::run_until_idle(r.rt);
    CHECK(players.fire_due_alarms() == 0);  // the housekeeping fired it already
    CHECK(players.get_state("ada")->buffs_expired == 1);
    REQUIRE(players.alarms("ada").size() == 1);
    CHECK(players.alarms("ada")[0].name == "shield");
    players.cancel_alarm("ada", "shield");
    r.clock->advance(100s);
    keepsake::testing::run_until_idle(r.rt);
    CHECK(players.get_state("ada")->buffs_expired == 1);
    CHECK(players.alarms("ada").empty());
    CHECK(players.stats().alarms_fired == 1);
}

TEST_CASE("objects: an alarm whose handler crashes is retried with backoff, then dropped", "[objects]") {
    rig r;
    auto spec = players_spec();
    spec.retry = {2s, 2};
    players_directory players(r.rt, spec);
    std::vector<std::uint64_t> retries;
    bool failed = false;
    r.rt.events().subscribe([&](const keepsake::event& e) {
        if (e.kind == event_kind::alarm_retry) retries.push_back(e.instance);
        if (e.kind == event_kind::alarm_failed) failed = true;
    });
    players.call("ada", buff{"haste", 1s});
    alarm_crashes_wanted = 1;
    r.clock->advance(1s);
    keepsake::testing::run_until_idle(r.rt);
    CHECK(retries == std::vector<std::uint64_t>{1});
    CHECK(players.get_state("ada")->buffs_expired == 0);
    r.clock->advance(1s);  // not yet: the first retry waits 2 s
    keepsake::testing::run_until_idle(r.rt);
    CHECK(players.get_state("ada")->buffs_expired == 0);
    r.clock->advance(1s);
    keepsake::testing::run_until_idle(r.rt);
    CHECK(players.get_state("ada")->buffs_expired == 1);
    CHECK(players.alarms("ada").empty());

    alarm_crashes_wanted = 3;  // the first delivery and both retries crash
    players.call("ada", buff{"slow", 1s});
    for (int step = 0; step < 10; ++step) {
        r.clock->advance(1s);
        keepsake::testing::run_until_idle(r.rt);
    }
    CHECK(failed);
    CHECK(players.alarms("ada").empty());
    CHECK(players.get_state("ada")->buffs_expired == 1);
    CHECK(players.stats().alarms_failed == 1);
}

TEST_CASE("objects: a long idle object is shut down to the store and comes back from it", "[objects]") {
    rig r;
    test_support::temp_dir files;
    keepsake::sqlite_store store(files.path() + "/objects.db");
    auto spec = players_spec();
    spec.durable = &store;
    spec.shutdown_after = 60s;
    players_directory players(r.rt, spec);
    players.call("ada", add{9});
    players.call("ada", buff{"haste", 120s});
    r.clock->advance(11s);
    keepsake::testing::run_until_idle(r.rt);
    CHECK(players.lookup("ada") == object_status::hibernated);
    r.clock->advance(50s);
    keepsake::testing::run_until_idle(r.rt);
    CHECK(players.lookup("ada") == object_status::shut_down);
    CHECK(players.stats().shutdowns == 1);
    CHECK(players.get_state("ada")->score == 9);
    CHECK(players.list() == std::vector<std::string>{"ada"});
    // The alarm travels with it and wakes it from the store.
    r.clock->advance(60s);
    keepsake::testing::run_until_idle(r.rt);
    CHECK(players.get_state("ada")->buffs_expired == 1);
    CHECK(players.call("ada", add{1}) == 10);
}

namespace {

// What a killed run and the test share: per object its last acknowledged
// score; per alarm whether its scheduling was acknowledged, and how many
// times its handler ran (a run killed between the handler and its commit
// runs it again: a duplicate, counted, not an error).
constexpr int kill_objects = 40;
constexpr int kill_alarms = 20000;
struct kill_book {
    std::atomic<int> ready{0};
    std::atomic<int> errors{0};
    char first_error[256]{};
    std::atomic<std::uint64_t> acked[kill_objects];
    std::atomic<std::uint64_t> cycles{0};           // hibernations + activations of the runs before
    std::atomic<std::uint64_t> cycles_this_run{0};  // of the run now
    std::atomic<int> next_alarm{0};
    std::atomic<std::uint8_t> scheduled[kill_alarms];
    std::atomic<std::uint32_t> fired[kill_alarms];
};
kill_book* the_book = nullptr;

void note_error(kill_book& book, const std::string& what) {
    if (book.errors.fetch_add(1) == 0) std::snprintf(book.first_error, sizeof(book.first_error), "%s", what.c_str());
}

struct tick {};
struct arm {
    std::string name;
    keepsake::duration after{};
};
struct counter {
    std::uint64_t value = 0;
    std::uint64_t alarms = 0;
};
struct counter_handler {
    std::uint64_t operator()(counter& c, const tick&) const { return ++c.value; }
    bool operator()(counter&, const arm& a, keepsake::object_context<counter>& context) const {
        context.schedule_alarm(a.name, a.after);
        return true;
    }
    void operator()(counter& c, const keepsake::alarm_fired& fired) const {
        const int id = std::stoi(fired.name.substr(1));
        if (the_book != nullptr && id >= 0 && id < kill_alarms) the_book->fired[id].fetch_add(1);
        ++c.alarms;
    }
};
using counters_directory = keepsake::object_directory<counter, counter_handler>;

std::string object_key(int index) { return "o" + std::to_string(index); }

keepsake::directory_spec<counter, counter_handler> counters_spec() {
    keepsake::directory_spec<counter, counter_handler> spec;
    spec.name = "counters";
    spec.hibernate_after = 2ms;
    spec.call_timeout = 20s;
    spec.threshold = keepsake::crash_threshold::off();
    return spec;
}

[[noreturn]] void drive_counters(counters_directory& counters, kill_book& book, std::mt19937& random);

// One run: check what came back, then call, hibernate and arm alarms at
// random until killed.
[[noreturn]] void run_counters(const shm_dir& dir, kill_book& book, unsigned seed) {
    keepsake::set_crash_reports(false);
    the_book = &book;
    keepsake::segment seg("counters", dir.options(16u << 20, 1024));
    keepsake::runtime rt(keepsake::runtime_options{1, nullptr, 64 * 1024, &seg});
    counters_directory counters(rt, counters_spec());
    for (int index = 0; index < kill_objects; ++index) {
        const auto found = counters.get_state(object_key(index));
        const std::uint64_t acked = book.acked[index].load();
        const std::uint64_t value = found ? found->value : 0;
        // The last acknowledged update is there; at most one more (a call
        // committed but not acknowledged when the kill came).
        if (value < acked || value > acked + 1)
            note_error(book, object_key(index) + ": committed " + std::to_string(value) + ", acknowledged " +
                                 std::to_string(acked));
        book.acked[index].store(value);
    }
    book.cycles.fetch_add(book.cycles_this_run.exchange(0));
    book.ready.store(1, std::memory_order_release);
    std::mt19937 random(seed);
    try {
        drive_counters(counters, book, random);
    } catch (const std::exception& failure) {
        note_error(book, std::string("a call failed: ") + failure.what());
    }
    std::_Exit(5);
}

[[noreturn]] void drive_counters(counters_directory& counters, kill_book& book, std::mt19937& random) {
    for (;;) {
        const int index = static_cast<int>(random() % kill_objects);
        const std::string key = object_key(index);
        switch (random() % 8) {
        case 0: counters.terminate(key); break;
        case 1: {
            if (counters.alarms(key).size() >= keepsake::max_object_alarms) break;
            const int id = book.next_alarm.fetch_add(1);
            if (id >= kill_alarms) break;
            counters.call(key, arm{"a" + std::to_string(id), std::chrono::milliseconds(random() % 20)});
            book.scheduled[id].store(1);
            break;
        }
        default: book.acked[index].store(counters.call(key, tick{}));
        }
        const auto stats = counters.stats();
        book.cycles_this_run.store(stats.activations + stats.hibernations);
    }
}

} // namespace

TEST_CASE("objects: hibernate and reactivate under random SIGKILL: no committed update or alarm lost",
          "[objects][kill]") {
    shm_dir dir;
    auto* book = test_support::shared_anonymous<kill_book>();
    const int kills = test_support::env_count("KEEPSAKE_OBJECT_KILLS", 150);
    std::mt19937 random(20261126);
    int landed = 0;
    for (int round = 0; round < kills && book->errors.load() == 0; ++round) {
        book->ready.store(0);
        const unsigned seed = static_cast<unsigned>(random());
        const auto run_for = std::chrono::microseconds(random() % 100000);
        if (keepsake::testing::run_and_kill([&] { run_counters(dir, *book, seed); }, book->ready, run_for)) ++landed;
    }
    // A last run checks the last kill and fires every overdue alarm.
    book->ready.store(0);
    const pid_t last = test_support::fork_child([&] {
        keepsake::set_crash_reports(false);
        the_book = book;
        keepsake::segment seg("counters", dir.options(16u << 20, 1024));
        keepsake::runtime rt(keepsake::runtime_options{1, nullptr, 64 * 1024, &seg});
        counters_directory counters(rt, counters_spec());
        for (int index = 0; index < kill_objects; ++index) {
            const auto found = counters.get_state(object_key(index));
            const std::uint64_t value = found ? found->value : 0;
            const std::uint64_t acked = book->acked[index].load();
            if (value < acked || value > acked + 1) note_error(*book, object_key(index) + ": lost an update");
        }
        // Overdue alarms fire at once; give them a generous limit.
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
        for (;;) {
            bool pending = false;
            for (int index = 0; index < kill_objects; ++index)
                pending = pending || !counters.alarms(object_key(index)).empty();
            if (!pending || std::chrono::steady_clock::now() > deadline) break;
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        book->ready.store(1);
    });
    int status = 0;
    ::waitpid(last, &status, 0);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    INFO(book->first_error);
    CHECK(book->errors.load() == 0);
    CHECK(landed > kills / 2);
    int scheduled = 0;
    int lost = 0;
    int duplicates = 0;
    for (int id = 0; id < kill_alarms; ++id) {
        if (book->scheduled[id].load() == 0) continue;
        ++scheduled;
        if (book->fired[id].load() == 0) ++lost;
        if (book->fired[id].load() > 1) duplicates += static_cast<int>(book->fired[id].load()) - 1;
    }
    WARN("kills landed " << landed << " of " << kills << ", hibernate/activate cycles "
                         << book->cycles.load() + book->cycles_this_run.load()
                         << ", alarms acknowledged " << scheduled << ", duplicate firings " << duplicates);
    CHECK(scheduled > 0);
    CHECK(lost == 0);
    test_support::release_shared(book);
}

TEST_CASE("objects: alarms survive a reboot: the segment is gone, state and alarms come from the store",
          "[objects]") {
    shm_dir dir;
    test_support::temp_dir files;
    const std::string db = files.path() + "/objects.db";
    auto clock = std::make_shared<keepsake::manual_clock>(5000s);
    {
        keepsake::sqlite_store store(db);
        keepsake::segment seg("reboot", dir.options(8u << 20, 1024));
        keepsake::exporter out(seg, store);
        keepsake::runtime rt(keepsake::runtime_options{0, clock, 64 * 1024, &seg});
        auto spec = players_spec();
        spec.durable = &store;
        players_directory players(rt, spec);
        players.call("ada", add{7});
        players.call("ada", buff{"haste", 30s});
        players.call("bob", buff{"shield", 60s});
        REQUIRE(out.flush());
    }
    REQUIRE(keepsake::segment::remove("reboot", dir.path()));
    keepsake::sqlite_store store(db);
    keepsake::segment seg("reboot", dir.options(8u << 20, 1024));
    keepsake::runtime rt(keepsake::runtime_options{0, clock, 64 * 1024, &seg});
    auto spec = players_spec();
    spec.durable = &store;
    players_directory players(rt, spec);
    CHECK(players.lookup("ada") == object_status::shut_down);
    REQUIRE(players.alarms("ada").size() == 1);
    CHECK(players.get_state("ada")->score == 7);
    clock->advance(31s);
    keepsake::testing::run_until_idle(rt);
    CHECK(players.get_state("ada")->buffs_expired == 1);
    CHECK(players.get_state("bob")->buffs_expired == 0);
    clock->advance(30s);
    keepsake::testing::run_until_idle(rt);
    CHECK(players.get_state("bob")->buffs_expired == 1);
    CHECK(players.call("ada", add{1}) == 8);
}

// The unit registry's record and crash history travel with the state: an
// object woken after a reboot counts its earlier crashes, and one that was
// permanently crashed stays so.
TEST_CASE("objects: after a reboot an object's crash history and permanently_crashed status come back from the "
          "store",
          "[objects][registry]") {
    keepsake::set_crash_reports(false);
    shm_dir dir;
    test_support::temp_dir files;
    const std::string db = files.path() + "/objects.db";
    auto clock = std::make_shared<keepsake::manual_clock>(5000s);
    auto spec_on = [](keepsake::store& store) {
        auto spec = players_spec();
        spec.durable = &store;
        spec.threshold = keepsake::crash_threshold{2, std::chrono::hours(1), false};
        return spec;
    };
    std::uint64_t ada_starts = 0;
    {
        keepsake::sqlite_store store(db);
        keepsake::segment seg("reboot", dir.options(8u << 20, 1024));
        keepsake::exporter out(seg, store);
        keepsake::runtime rt(keepsake::runtime_options{0, clock, 64 * 1024, &seg});
        players_directory players(rt, spec_on(store));
        players.call("ada", add{7});
        CHECK_THROWS_AS(players.call("ada", boom{}), keepsake::worker_crashed);
        CHECK(players.call("ada", add{1}) == 8);
        CHECK_THROWS_AS(players.call("bob", boom{}), keepsake::worker_crashed);
        CHECK_THROWS_AS(players.call("bob", boom{}), keepsake::worker_crashed);
        REQUIRE(keepsake::info(seg, "players/bob")->status == keepsake::unit_status::permanently_crashed);
        ada_starts = keepsake::info(seg, "players/ada")->starts;
        REQUIRE(out.flush());
    }
    REQUIRE(keepsake::segment::remove("reboot", dir.path()));
    keepsake::sqlite_store store(db);
    keepsake::segment seg("reboot", dir.options(8u << 20, 1024));
    keepsake::runtime rt(keepsake::runtime_options{0, clock, 64 * 1024, &seg});
    players_directory players(rt, spec_on(store));
    CHECK(players.call("ada", add{1}) == 9);
    const auto ada = keepsake::info(seg, "players/ada").value();
    CHECK(ada.crashes == 1);
    CHECK(ada.starts == ada_starts + 1);
    REQUIRE(ada.history.size() == 1);
    CHECK(ada.history[0].reason == "boom on purpose");
    const keepsake::error refused = test_support::error_from([&] { players.call("bob", add{1}); });
    CHECK(refused.code() == errc::permanently_crashed);
    CHECK(keepsake::info(seg, "players/bob")->history.size() == 2);
}

namespace {
// A real SQLite store that notes the keys it is asked for.
class noting_store final : public keepsake::store {
public:
    explicit noting_store(const std::string& path) : inner_(path) {}
    std::vector<std::size_t> put_batch(const std::vector<keepsake::record>& records) override {
        return inner_.put_batch(records);
    }
    std::optional<keepsake::record> get(const std::string& key) override {
        std::lock_guard<std::mutex> lock(mutex_);
        asked_.push_back(key);
        return inner_.get(key);
    }
    bool remove(const std::string& key) override {
        if (fail_removes) throw keepsake::error(errc::store_failed, "noting_store: removes fail on purpose");
        return inner_.remove(key);
    }
    std::vector<std::string> list(const std::string& prefix) override { return inner_.list(prefix); }
    std::string describe() const override { return inner_.describe(); }
    std::atomic<bool> fail_removes{false};
    std::vector<std::string> take_asked() {
        std::lock_guard<std::mutex> lock(mutex_);
        return std::exchange(asked_, {});
    }

private:
    keepsake::sqlite_store inner_;
    std::mutex mutex_;
    std::vector<std::string> asked_;
};

// A rig with a noting store, and the players' spec on it.
struct noted_rig : rig {
    test_support::temp_dir files;
    noting_store store{files.path() + "/objects.db"};
    keepsake::directory_spec<player, player_handler> spec() {
        auto made = players_spec();
        made.durable = &store;
        return made;
    }
};
} // namespace

// What an activation reads from the store: a new object its state and its
// registry record (a reboot may have left them there), once each; an object
// woken from the store after its shutdown, its state only (its registry
// record stayed in shared memory).
TEST_CASE("objects: an activation asks the store for its state and, only when shared memory lacks it, its "
          "registry record",
          "[objects][registry]") {
    noted_rig r;
    auto& store = r.store;
    auto spec = r.spec();
    spec.shutdown_after = 1s;
    players_directory players(r.rt, spec);
    CHECK(players.call("ada", add{3}) == 3);
    CHECK(store.take_asked() ==
          std::vector<std::string>{std::string(keepsake::detail::unit_record_prefix) + "players/ada", "players/ada"});
    players.terminate("ada");
    r.clock->advance(2s);
    players.collect_idle();
    REQUIRE(players.lookup("ada") == object_status::shut_down);
    store.take_asked();  // the shutdown's own check of what it wrote, and lookup's
    CHECK(players.call("ada", add{1}) == 4);
    CHECK(store.take_asked() == std::vector<std::string>{"players/ada"});
}

// A delete that fails (the store cannot remove the record) says so, and
// leaves the key usable: not held "stopping" for ever, which would make
// every later call wait out its start timeout and the directory's close
// wait for good.
TEST_CASE("objects: terminate_and_delete that fails leaves the key callable and the directory closable",
          "[objects]") {
    noted_rig r;
    auto& store = r.store;
    auto spec = r.spec();
    spec.start_timeout = 2s;
    {
        players_directory players(r.rt, spec);
        CHECK(players.call("ada", add{3}) == 3);
        store.fail_removes = true;
        const keepsake::error failed = test_support::error_from([&] { players.terminate_and_delete("ada"); });
        CHECK(failed.code() == errc::store_failed);
        store.fail_removes = false;
        CHECK(players.call("bob", add{1}) == 1);
        // The state went before the store failed: ada starts afresh.
        CHECK(players.call("ada", add{1}) == 1);
        players.terminate_and_delete("ada");
        CHECK(players.lookup("ada") == object_status::absent);
    }  // closes: returns
    SUCCEED("the directory closed");
}

TEST_CASE("objects: a paused directory fires nothing until its housekeeping starts", "[objects]") {
    rig r;
    auto spec = players_spec();
    spec.start_paused = true;
    players_directory players(r.rt, spec);
    players.call("ada", buff{"haste", 1s});
    r.clock->advance(30s);  // overdue, and idle past hibernate_after
    keepsake::testing::run_until_idle(r.rt);
    CHECK(players.get_state("ada")->buffs_expired == 0);
    CHECK(players.lookup("ada") == object_status::active);
    players.start_housekeeping();
    keepsake::testing::run_until_idle(r.rt);
    CHECK(players.get_state("ada")->buffs_expired == 1);
    CHECK(players.lookup("ada") == object_status::active);  // the alarm was activity
    r.clock->advance(11s);
    keepsake::testing::run_until_idle(r.rt);
    CHECK(players.lookup("ada") == object_status::hibernated);
}

TEST_CASE("objects: terminate waits for the calls in flight, which are answered", "[objects]") {
    rig r(1);
    players_directory players(r.rt, players_spec());
    players.call("a", add{1});
    auto release = std::make_shared<std::atomic<bool>>(false);
    std::atomic<int> answered{0};
    const wait_here hold{release};
    std::thread busy([&] {
        if (players.call("a", hold)) answered.fetch_add(1);
    });
    REQUIRE(test_support::wait_until([&] { return hold.entered->load(); }));  // the call is in the handler
    std::thread releaser([&] {
        std::this_thread::sleep_for(50ms);
        release->store(true);
    });
    CHECK(players.terminate("a"));
    busy.join();
    releaser.join();
    CHECK(answered.load() == 1);
    CHECK(players.lookup("a") == object_status::hibernated);
    CHECK(players.call("a", add{1}) == 2);
}

TEST_CASE("objects: a caller waiting for a start gives up after start_timeout", "[objects]") {
    rig r(1);
    auto spec = players_spec();
    spec.start_timeout = 1s;
    auto release = slow_start(spec);
    players_directory players(r.rt, spec);
    std::thread starter([&] { players.call("slow", add{1}); });
    while (players.active_count() == 0) std::this_thread::sleep_for(1ms);
    std::atomic<int> code{-1};
    std::atomic<bool> calling{false};
    std::thread waiter([&] {
        calling = true;
        code = static_cast<int>(test_support::error_from([&] { players.call("slow", add{1}); }).code());
    });
    // Past the waiter's deadline on the runtime's clock, which it reads as
    // it begins to wait: a loaded machine may hold it back, so the clock
    // moves again (never as far as the starter's 20 s call timeout).
    REQUIRE(test_support::wait_until([&] { return calling.load(); }));
    std::this_thread::sleep_for(50ms);
    for (int step = 0; step < 8 && code.load() == -1; ++step) {
        r.clock->advance(2s);
        test_support::wait_until([&] { return code.load() != -1; }, 500ms);
    }
    waiter.join();
    CHECK(code.load() == static_cast<int>(errc::timeout));
    release->store(true);
    starter.join();
    CHECK(players.get_state("slow")->score == 1);
}

}  // namespace objects_tests
