// Units: call/cast, crashes and in-place restarts, commit policies, loop
// workers, listeners, the runtime (pumped, threads, manual clock), callers on
// several threads, and a process killed while running units.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <boost/fiber/operations.hpp>
#include <cereal/types/string.hpp>

#include <keepsake/exporter.hpp>
#include <keepsake/stores/file_store.hpp>
#include <keepsake/stores/faulty_store.hpp>
#include <keepsake/stores/memory_store.hpp>

#include "support.hpp"

namespace unit_tests {  // a unity build's sources keep their names apart (tests/CMakeLists.txt)

using namespace std::chrono_literals;
using keepsake::errc;
using test_support::fibers_may_move_threads;
using test_support::shm_dir;

namespace {

struct counter {
    long value = 0;
};

struct tally {
    long increments = 0;
    long last = 0;
};

// Typed messages for a handler.
struct add {
    long amount;
};
struct get {};
struct tally_handler {
    long operator()(tally& state, const add& message) const {
        state.increments += message.amount;
        return state.increments;
    }
    long operator()(const tally& state, const get&) const { return state.increments; }
};

keepsake::runtime_options pumped(const keepsake::segment& where, std::shared_ptr<keepsake::clock> time = nullptr) {
    keepsake::runtime_options options;
    options.threads = 0;
    options.time = std::move(time);
    options.default_segment = &where;
    return options;
}

// A private segment and a runtime the test thread pumps.
struct pumped_runtime {
    shm_dir dir;
    keepsake::segment seg;
    keepsake::runtime rt;
    explicit pumped_runtime(const std::string& name, std::shared_ptr<keepsake::clock> time = nullptr)
        : seg(name, dir.options()), rt(pumped(seg, std::move(time))) {}
};

// The same with one runtime thread of its own.
struct threaded_runtime {
    shm_dir dir;
    keepsake::segment seg;
    keepsake::runtime rt;
    explicit threaded_runtime(const std::string& name)
        : seg(name, dir.options()), rt([this] {
              keepsake::runtime_options options = pumped(seg);
              options.threads = 1;
              return options;
          }()) {}
};

keepsake::unit_spec<counter> counter_spec(const std::string& name, bool direct_calls = true) {
    keepsake::unit_spec<counter> spec;
    spec.name = name;
    spec.direct_calls = direct_calls;
    return spec;
}

long read(keepsake::unit<counter>& unit) {
    return unit.call([](const counter& state) { return state.value; });
}

void crash_with(keepsake::unit<counter>& unit, const char* why) {
    unit.cast([why](counter&) { throw std::runtime_error(why); });
}

} // namespace

TEST_CASE("call returns the handler's result and cast is served in order", "[unit]") {
    const bool direct = GENERATE(true, false);
    pumped_runtime harness("calls");
    auto& rt = harness.rt;
    auto unit = keepsake::start_unit(rt, counter_spec("c", direct));
    for (int i = 0; i < 100; ++i) unit.cast([i](counter& state) { state.value = state.value * 2 % 1000003 + i; });
    long expected = 0;
    for (int i = 0; i < 100; ++i) expected = expected * 2 % 1000003 + i;
    CHECK(read(unit) == expected);
    CHECK(unit.call([](counter& state) { return ++state.value; }) == expected + 1);
    unit.call([](counter& state) { state.value = 7; });  // void result
    CHECK(read(unit) == 7);
}

TEST_CASE("every message that may change the state is committed before its reply, and reads are not", "[unit]") {
    pumped_runtime harness("commits");
    auto& rt = harness.rt;
    auto unit = keepsake::start_unit(rt, counter_spec("c"));
    unit.call([](counter& state) { state.value = 41; });
    const auto after_write = unit.stats().generation;
    CHECK(after_write == 1);
    CHECK(read(unit) == 41);
    CHECK(unit.stats().generation == after_write);
    CHECK(unit.stats().commits == 1);
}

TEST_CASE("typed messages go to the unit's handler, and a const handler is read-only", "[unit]") {
    pumped_runtime harness("typed");
    auto& rt = harness.rt;
    keepsake::unit_spec<tally, tally_handler> spec;
    spec.name = "t";
    auto unit = keepsake::start_unit(rt, spec);
    CHECK(unit.call(add{5}) == 5);
    unit.cast(add{2});
    CHECK(unit.call(get{}) == 7);
    CHECK(unit.stats().commits == 2);
    auto found = keepsake::whereis<tally, tally_handler>(rt, "t");
    REQUIRE(found);
    CHECK(found->call(get{}) == 7);
    // The wrong types are an error that names the right ones.
    try {
        keepsake::whereis<counter>(rt, "t");
        FAIL("whereis with the wrong types should throw");
    } catch (const keepsake::error& failure) {
        CHECK(failure.code() == errc::type_mismatch);
        CHECK_THAT(failure.what(), Catch::Matchers::Contains("State unit_tests::(anonymous namespace)::tally") &&
                                       Catch::Matchers::Contains("Handler unit_tests::(anonymous namespace)::tally_handler") &&
                                       Catch::Matchers::Contains("not as a unit of State unit_tests::(anonymous namespace)::counter"));
    }
    CHECK(test_support::error_from([&] { keepsake::whereis<tally>(rt, "t"); }).code() == errc::type_mismatch);
    CHECK(test_support::error_from([&] { keepsake::whereis_supervisor(rt, "t"); }).code() == errc::type_mismatch);
    CHECK_FALSE(keepsake::whereis<counter>(rt, "nobody"));
}

TEST_CASE("a crash answers the caller with worker_crashed and restarts from the last commit", "[unit]") {
    const bool direct = GENERATE(true, false);
    pumped_runtime harness("crash");
    auto& rt = harness.rt;
    auto unit = keepsake::start_unit(rt, counter_spec("c", direct));
    unit.call([](counter& state) { state.value = 10; });
    try {
        unit.call([](counter& state) -> int {
            state.value = 999;  // changed, then crashed: never committed
            throw std::runtime_error("disk on fire");
        });
        FAIL("the call should have thrown");
    } catch (const keepsake::worker_crashed& crashed) {
        CHECK(crashed.code() == errc::worker_crashed);
        CHECK(crashed.reason() == "disk on fire");
    }
    CHECK(read(unit) == 10);
    CHECK(unit.stats().restarts == 1);
}

TEST_CASE("try_call reports a crash as a value: worker_crashed, the reason, the restart, and then the last commit", "[unit]") {
    const bool direct = GENERATE(true, false);
    pumped_runtime harness("try-crash");
    auto& rt = harness.rt;
    std::vector<std::string> seen;
    rt.events().subscribe([&](const keepsake::event& what) { seen.push_back(keepsake::to_string(what.kind)); });
    auto unit = keepsake::start_unit(rt, counter_spec("c", direct));
    unit.call([](counter& state) { state.value = 10; });
    keepsake::call_result<int> crashed = unit.try_call([](counter& state) -> int {
        state.value = 999;  // changed, then crashed: never committed
        throw std::runtime_error("disk on fire");
    });
    REQUIRE_FALSE(crashed.ok());
    CHECK(crashed.crashed());
    CHECK(crashed.code() == errc::worker_crashed);
    CHECK(crashed.reason() == "disk on fire");
    CHECK(crashed.restarted());
    CHECK(crashed.message() ==
          "unit 'c' crashed while serving this call: disk on fire; the unit restarts from its last commit, so the "
          "call may be retried");
    try {
        crashed.value();
        FAIL("value() of a crashed call should throw");
    } catch (const keepsake::worker_crashed& thrown) {  // what call would have thrown
        CHECK(thrown.reason() == "disk on fire");
        CHECK(thrown.restarted());
        CHECK(thrown.what() == crashed.message());
    }
    CHECK(unit.stats().restarts == 1);
    CHECK(unit.stats().crashes == 1);
    keepsake::call_result<long> next = unit.try_call([](counter& state) { return ++state.value; });
    REQUIRE(next.ok());
    CHECK(next.value() == 11);  // from the last commit
    keepsake::call_result<void> nothing = unit.try_call([](counter& state) { state.value += 1; });
    CHECK(nothing.ok());
    nothing.value();
    CHECK(read(unit) == 12);
    CHECK(seen == std::vector<std::string>{"started", "exited", "restarted"});
    // A call that crashes still throws, with the same message.
    try {
        unit.call([](counter&) -> int { throw std::runtime_error("disk on fire"); });
        FAIL("the call should have thrown");
    } catch (const keepsake::worker_crashed& thrown) {
        CHECK(thrown.what() == crashed.message());
        CHECK(thrown.restarted());
    }
    CHECK(read(unit) == 12);
}

TEST_CASE("try_call: a typed message, a crash that ends the unit, then not_running, all without a throw", "[unit]") {
    const bool direct = GENERATE(true, false);
    auto clock = std::make_shared<keepsake::manual_clock>();
    pumped_runtime harness("try-last", clock);
    auto& rt = harness.rt;
    keepsake::unit_spec<tally, tally_handler> spec;
    spec.name = "t";
    spec.direct_calls = direct;
    spec.intensity = {1, 10s};
    auto unit = keepsake::start_unit(rt, spec);
    CHECK(unit.try_call(add{5}).value() == 5);
    auto first = unit.try_call([](tally&) -> long { throw 42; });  // not a std::exception
    REQUIRE(first.crashed());
    CHECK(first.reason() == "an exception not derived from std::exception");
    CHECK(first.restarted());
    auto last = unit.try_call([](tally& state) -> long {
        state.increments = -1;
        throw std::logic_error("again");
    });
    REQUIRE(last.crashed());
    CHECK(last.reason() == "again");
    CHECK_FALSE(last.restarted());  // past its intensity: it gave up
    CHECK_THAT(last.message(), Catch::Matchers::Contains("this was its last crash"));
    keepsake::testing::run_until_idle(rt);
    CHECK(unit.state() == keepsake::child_state::not_running);
    auto stopped = unit.try_call(get{});
    REQUIRE_FALSE(stopped.ok());
    CHECK_FALSE(stopped.crashed());
    CHECK(stopped.code() == errc::not_running);
    CHECK_THAT(stopped.reason(), Catch::Matchers::Contains("is not running"));
    CHECK(test_support::error_from([&] { stopped.value(); }).code() == errc::not_running);
}

TEST_CASE("try_call from another thread: a crash comes back as a value, and the next call sees the last commit", "[unit][threads]") {
    threaded_runtime harness("try-thread");
    auto& rt = harness.rt;
    auto spec = counter_spec("c");
    spec.intensity = {100000, 10s};
    auto unit = keepsake::start_unit(rt, spec);
    constexpr int rounds = 200;
    std::vector<keepsake::call_result<long>> crashes, nexts;
    std::thread caller([&] {
        for (int i = 0; i < rounds; ++i) {
            crashes.push_back(unit.try_call([](counter& state) -> long {
                state.value = -1000;  // never committed
                throw std::runtime_error("bad input " + std::to_string(state.value));
            }));
            nexts.push_back(unit.try_call([](counter& state) { return ++state.value; }));
        }
    });
    caller.join();
    REQUIRE(crashes.size() == rounds);
    for (int i = 0; i < rounds; ++i) {
        CHECK(crashes[i].crashed());
        CHECK(crashes[i].reason() == "bad input -1000");
        CHECK(crashes[i].restarted());
        REQUIRE(nexts[i].ok());
        CHECK(nexts[i].value() == i + 1);
    }
    CHECK(unit.stats().restarts == rounds);
    // A timeout is a value too (the runtime's thread is kept busy).
    unit.cast([](counter&) { std::this_thread::sleep_for(300ms); });
    auto late = unit.try_call_for([](const counter& state) { return state.value; }, 50ms);
    REQUIRE_FALSE(late.ok());
    CHECK(late.code() == errc::timeout);
    CHECK(read(unit) == rounds);
}

TEST_CASE("a handler that yields serves queued messages beside its own, and a crash among them reaches both callers", "[unit][threads]") {
    const bool inner_crashes = GENERATE(false, true);
    threaded_runtime harness("yield-in-handler");
    auto unit = keepsake::start_unit(harness.rt, counter_spec("y", false));
    // The outer message holds a string on the heap: had a message served
    // during its yield been put where it lies, the string would be freed
    // under the handler that reads it.
    const std::string mine(200, 'm');
    std::atomic<bool> outer_running{false};
    std::optional<keepsake::call_result<std::string>> outer;
    std::thread first([&] {
        outer = unit.try_call([mine, &outer_running](counter& state, keepsake::unit_context<counter>& context) {
            outer_running = true;
            while (state.value < 100) context.yield();  // until a message queued behind it was served
            return mine + std::to_string(state.value);
        });
    });
    while (!outer_running) std::this_thread::sleep_for(1ms);
    const keepsake::call_result<long> inner = unit.try_call([inner_crashes](counter& state) -> long {
        if (inner_crashes) throw std::runtime_error("inner boom");
        return state.value += 100;
    });
    first.join();
    REQUIRE(outer);
    if (!inner_crashes) {
        REQUIRE(inner.ok());
        CHECK(inner.value() == 100);
        REQUIRE(outer->ok());
        CHECK(outer->value() == mine + "100");
        CHECK(unit.stats().crashes == 0);
        CHECK(read(unit) == 100);
    } else {
        // The throw went on through the outer handler's yield: one crash,
        // both callers told, the state back at its last commit.
        CHECK(inner.crashed());
        CHECK(inner.reason() == "inner boom");
        CHECK(outer->crashed());
        CHECK(outer->reason() == "inner boom");
        CHECK(read(unit) == 0);  // served by the restarted worker
        CHECK(unit.stats().crashes == 1);
        CHECK(unit.stats().restarts == 1);
    }
}

TEST_CASE("messages queued behind a crashing one are served by the restarted worker", "[unit]") {
    pumped_runtime harness("queued");
    auto& rt = harness.rt;
    auto unit = keepsake::start_unit(rt, counter_spec("c"));
    unit.cast([](counter& state) { state.value += 1; });
    crash_with(unit, "boom");
    for (int i = 0; i < 5; ++i) unit.cast([](counter& state) { state.value += 10; });
    CHECK(read(unit) == 51);
    CHECK(unit.stats().restarts == 1);
}

TEST_CASE("lost updates: an increment followed at once by a crash, 10 000 times", "[unit]") {
    pumped_runtime harness("lost");
    auto& rt = harness.rt;
    auto spec = counter_spec("c");
    spec.intensity = {100000, 10s};
    auto unit = keepsake::start_unit(rt, spec);
    constexpr int rounds = 10000;
    for (int i = 0; i < rounds; ++i) {
        unit.cast([](counter& state) { ++state.value; });
        crash_with(unit, "right after an increment");
    }
    CHECK(read(unit) == rounds);
    CHECK(unit.stats().restarts == rounds);
}

TEST_CASE("a counter under random crashes ends at exactly the number of increments", "[unit]") {
    const bool direct = GENERATE(true, false);
    pumped_runtime harness("random");
    auto& rt = harness.rt;
    auto spec = counter_spec("c", direct);
    spec.intensity = {100000, 10s};
    auto unit = keepsake::start_unit(rt, spec);
    std::mt19937 random(12345);
    long increments = 0;
    for (int i = 0; i < 20000; ++i) {
        const unsigned dice = random() % 10;
        if (dice < 6) {
            unit.cast([](counter& state) { ++state.value; });
            ++increments;
        } else if (dice < 8) {
            // Changes the state and then crashes: the change must vanish.
            unit.cast([](counter& state) {
                state.value += 1000;
                throw std::runtime_error("half-way");
            });
        } else if (dice < 9) {
            CHECK_THROWS_AS(unit.call([](counter& state) -> long {
                ++state.value;
                throw std::logic_error("in a call");
            }),
                            keepsake::worker_crashed);
        } else {
            CHECK(read(unit) == increments);
        }
    }
    CHECK(read(unit) == increments);
}

TEST_CASE("direct calls: an idle worker's turn is lent to a caller on its thread", "[unit][direct]") {
    pumped_runtime harness("direct");
    auto& rt = harness.rt;
    auto direct = keepsake::start_unit(rt, counter_spec("direct", true));
    auto queued = keepsake::start_unit(rt, counter_spec("queued", false));
    auto served_on = [](keepsake::unit<counter>& unit) {
        return unit.call([](counter& state) {
            ++state.value;
            return boost::this_fiber::get_id();
        });
    };
    rt.run_for(10ms);  // both workers park on their empty mailboxes
    CHECK(served_on(direct) == boost::this_fiber::get_id());
    CHECK(served_on(queued) != boost::this_fiber::get_id());
    CHECK(direct.stats().commits == 1);  // committed before it returned, as on the worker
    CHECK(direct.stats().generation == 1);

    SECTION("messages waiting in the mailbox are served first, in the same lent turn") {
        direct.cast([](counter& state) { state.value *= 100; });
        CHECK(served_on(direct) == boost::this_fiber::get_id());
        CHECK(read(direct) == 101);
        CHECK(direct.stats().commits == 3);
    }
    SECTION("a waiting message that takes the worker's context is never lent: the call queues behind it") {
        direct.cast([](counter& state, keepsake::unit_context<counter>&) { state.value *= 100; });
        CHECK(served_on(direct) != boost::this_fiber::get_id());
        CHECK(read(direct) == 101);
    }
    SECTION("a waiting message that crashes restarts the worker in the lent turn; the call then runs") {
        direct.cast([](counter& state) {
            state.value = -5;  // never committed
            throw std::runtime_error("queued crash");
        });
        direct.cast([](counter& state) { state.value += 10; });
        CHECK(served_on(direct) == boost::this_fiber::get_id());
        CHECK(read(direct) == 12);
        CHECK(direct.stats().restarts == 1);
    }
    SECTION("while a lent turn is suspended, other messages wait: one at a time, in order") {
        bool release = false;
        rt.spawn([&] {
            direct.call([&](counter& state) {
                state.value = 1;
                while (!release) boost::this_fiber::yield();  // suspended inside the message
                state.value += 1;
            });
        });
        rt.run_for(10ms);
        direct.cast([](counter& state) { state.value *= 10; });  // from another fiber: queued
        rt.spawn([&] { direct.call([](counter& state) { state.value += 5; }); });
        rt.run_for(10ms);
        CHECK(direct.stats().queued == 2);
        release = true;
        rt.run_for(10ms);
        CHECK(read(direct) == (1 + 1) * 10 + 5);  // interleaved it would be 1 * 10 + 5 + 1
    }
    SECTION("a message that calls its own unit is refused, as on the worker") {
        try {
            direct.call([&](counter&) { return read(direct); });
            FAIL("a self-call must not succeed");
        } catch (const keepsake::worker_crashed& crashed) {
            CHECK_THAT(crashed.reason(), Catch::Matchers::Contains("called itself"));
        }
        CHECK(read(direct) == 1);
        CHECK(direct.stats().restarts == 1);
    }
    SECTION("a stop waits for a lent turn to come back") {
        bool release = false;
        bool finished = false;
        rt.spawn([&] {
            direct.call([&](counter& state) {
                while (!release) boost::this_fiber::yield();
                state.value = 77;
            });
            finished = true;
        });
        rt.run_for(10ms);
        rt.spawn([&] { keepsake::stop_unit(rt, direct); });
        rt.run_for(10ms);
        CHECK(direct.state() != keepsake::child_state::not_running);
        release = true;
        // Until both hold: run_for alone ends at its budget while a fiber spins.
        CHECK(test_support::pump_until(
            rt, [&] { return finished && direct.state() == keepsake::child_state::not_running; }));
        CHECK(finished);
        CHECK(direct.state() == keepsake::child_state::not_running);
        CHECK(direct.stats().commits == 2);  // the lent message committed before the unit stopped
        CHECK(direct.stats().generation == 2);
    }
}

TEST_CASE("a unit with a store opens through recovery: after a reboot its state comes from the store", "[unit][store]") {
    keepsake::memory_store durable;
    std::vector<keepsake::start_info> starts;
    auto spec = counter_spec("kept");
    spec.recover_from = &durable;
    spec.store_prefix = "app/";
    spec.init = [&starts](counter&, const keepsake::start_info& info) { starts.push_back(info); };
    {
        pumped_runtime before("boot1");
        auto unit = keepsake::start_unit(before.rt, spec);
        REQUIRE(starts.size() == 1);
        CHECK(starts[0].source == keepsake::recovery_source::initial);
        for (int i = 0; i < 5; ++i) unit.call([](counter& state) { ++state.value; });
        {
            keepsake::exporter out(before.seg, durable, [] {
                keepsake::exporter_options options;
                options.prefix = "app/";
                return options;
            }());
            REQUIRE(out.flush());
            REQUIRE(out.stop());  // stopped by hand: the unit runs on (the destructor would stop it)
        }  // it exports nothing more
        unit.call([](counter& state) { state.value += 100; });  // committed, never exported
        keepsake::stop_unit(before.rt, unit);
    }  // the segment's directory is removed: a reboot
    pumped_runtime after("boot2");
    auto unit = keepsake::start_unit(after.rt, spec);
    REQUIRE(starts.size() == 2);
    CHECK(starts[1].source == keepsake::recovery_source::store);
    CHECK(starts[1].restored);
    CHECK(read(unit) == 5);  // the export survived; the unexported commit did not
    CHECK(unit.stats().generation >= starts[1].generation);

    SECTION("a restart inside the same run takes shared memory, which is newer") {
        unit.call([](counter& state) { state.value = 40; });
        CHECK_THROWS_AS(unit.call([](counter&) -> int { throw std::runtime_error("boom"); }), keepsake::worker_crashed);
        REQUIRE(starts.size() == 3);
        CHECK(starts[2].source == keepsake::recovery_source::shared_memory);
        CHECK(read(unit) == 40);
    }
}

TEST_CASE("a store that cannot be read does not keep a unit down: shared memory is taken, an event says why",
          "[unit][store]") {
    test_support::temp_dir disk;
    keepsake::file_store durable(disk.path());
    pumped_runtime env("unreadable");
    {
        keepsake::keeper<counter> earlier(env.seg, "kept");
        earlier.commit(counter{41});
    }
    // The key's record file is a directory: every read of it fails.
    std::filesystem::create_directories(disk.path() + "/kept.rec");
    REQUIRE_THROWS(durable.get("kept"));
    std::vector<std::string> problems;
    env.rt.events().subscribe([&](const keepsake::event& what) {
        if (what.kind == keepsake::event_kind::recovery_problem) problems.emplace_back(what.reason);
    });
    auto spec = counter_spec("kept");
    spec.recover_from = &durable;
    auto unit = keepsake::start_unit(env.rt, spec);
    CHECK(read(unit) == 41);
    REQUIRE(problems.size() == 1);
    CHECK(problems[0].find("could not be read") != std::string::npos);
}

TEST_CASE("a unit's first start publishes its recovery: where from, which generation, how long", "[unit][store][events]") {
    keepsake::memory_store durable;
    auto time = std::make_shared<keepsake::manual_clock>(5s);
    pumped_runtime env("recovered", time);
    {
        keepsake::keeper<counter> earlier(env.seg, "kept");
        earlier.commit(counter{41});
        earlier.commit(counter{42});  // generation 2, in shared memory only
    }
    struct seen {
        std::string supervisor, child, reason;
        std::uint64_t instance;
        keepsake::duration at, took;
    };
    std::vector<seen> recovered;
    env.rt.events().subscribe([&](const keepsake::event& what) {
        if (what.kind == keepsake::event_kind::recovered)
            recovered.push_back(seen{std::string(what.supervisor), std::string(what.child), std::string(what.reason),
                                     what.instance, what.at, what.took});
    });
    auto spec = counter_spec("kept");
    spec.recover_from = &durable;
    auto unit = keepsake::start_unit(env.rt, spec);
    CHECK(read(unit) == 42);
    auto fresh_spec = counter_spec("fresh");
    fresh_spec.recover_from = &durable;
    fresh_spec.store_prefix = "app/";
    auto fresh = keepsake::start_unit(env.rt, fresh_spec);
    CHECK(read(fresh) == 0);
    REQUIRE(recovered.size() == 2);
    CHECK(recovered[0].supervisor == "recovery");
    CHECK(recovered[0].child == "kept");
    CHECK(recovered[0].reason == "shared_memory");
    CHECK(recovered[0].instance == 2);
    CHECK(recovered[1].child == "fresh");
    CHECK(recovered[1].reason == "initial");
    CHECK(recovered[1].instance == 1);  // recovery committed the initial state
    for (const auto& e : recovered) {
        CHECK(e.at == 5s);  // the runtime's clock, which did not move
        CHECK(e.took > keepsake::duration::zero());  // real time
    }
    CHECK_THROWS_AS(unit.call([](counter&) -> int { throw std::runtime_error("boom"); }), keepsake::worker_crashed);
    CHECK(read(unit) == 42);
    CHECK(recovered.size() == 2);  // a restart takes shared memory without recover()
}

TEST_CASE("a unit whose committed bytes do not decode fails to start, saying so, and nothing is overwritten",
          "[unit][decode]") {
    struct wider {
        long value = 0;
        long more = 0;
    };
    pumped_runtime env("undecodable");
    {
        keepsake::keeper<counter> earlier(env.seg, "kept");
        earlier.commit(counter{41});
    }
    keepsake::unit_spec<wider> spec;
    spec.name = "kept";
    keepsake::keeper_options<wider> options;
    options.upgrade = [](const keepsake::stored_record& old) {
        // A hook that decodes the old bytes as the new type: they do not fit.
        return keepsake::decode_as<wider>(old);
    };
    spec.keeper = options;
    try {
        keepsake::start_unit(env.rt, spec);
        FAIL("the unit started from nothing");
    } catch (const keepsake::error& failure) {
        const std::string message = failure.what();
        CHECK(failure.code() == errc::start_failed);
        // What failed inside the hook, with the context of the direct case:
        // the key, what is stored, and the remedy.
        CHECK(message.find("stored state has 8 bytes, the type has 16") != std::string::npos);
        CHECK(message.find("upgrade hook") != std::string::npos);
        CHECK(message.find("key 'kept'") != std::string::npos);
        CHECK(message.find("generation 1") != std::string::npos);
        CHECK(message.find(keepsake::fingerprint_text(keepsake::type_fingerprint<counter>())) != std::string::npos);
        CHECK(message.find("schema_version") != std::string::npos);
        CHECK(message.find("give keeper_options::upgrade") != std::string::npos);
    }
    keepsake::keeper<counter> still(env.seg, "kept");
    CHECK(still.restore()->value.value == 41);
}

namespace {
// A unit state with the cereal codec: a slot cut short and sealed again
// holds bytes that pass their checksum but do not decode.
struct named_count {
    std::string name;
    long count = 0;
    template <class Archive>
    void serialize(Archive& archive) {
        archive(name, count);
    }
};
} // namespace

TEST_CASE("a unit whose committed state is its own type but does not decode fails to start, and the slots stay",
          "[unit][decode]") {
    shm_dir dir;
    {
        keepsake::segment s("not-decoding", dir.options());
        keepsake::keeper<named_count> k(s, "kept");
        k.commit({"first", 1});
        k.commit({"second", 2});
    }
    // Same fingerprint and schema; the string's length prefix (8 bytes)
    // decodes, its characters do not.
    test_support::reseal_slots(dir.file("not-decoding"), "kept", 10);
    const std::string before = test_support::read_file(dir.file("not-decoding"));
    keepsake::memory_store durable;
    keepsake::segment seg("not-decoding", dir.options());
    {
        keepsake::runtime rt(pumped(seg));
        keepsake::unit_spec<named_count> spec;
        spec.name = "kept";
        spec.initial = {"fresh", 0};
        SECTION("from shared memory") {}
        SECTION("through recover(), with a store") { spec.recover_from = &durable; }
        try {
            keepsake::start_unit(rt, spec);
            FAIL("the unit started from its initial state over a committed one");
        } catch (const keepsake::error& failure) {
            const std::string message = failure.what();
            CHECK(failure.code() == errc::start_failed);
            CHECK(message.find("key 'kept'") != std::string::npos);
            CHECK(message.find("generation 2") != std::string::npos);
            CHECK(message.find("type fingerprint " +
                               keepsake::fingerprint_text(keepsake::type_fingerprint<named_count>())) !=
                  std::string::npos);
            CHECK(message.find("schema 1") != std::string::npos);
            CHECK(message.find("schema_version") != std::string::npos);
            CHECK(message.find("give keeper_options::upgrade") != std::string::npos);
        }
    }
    // Nothing was written: the slots hold the same generations and bytes,
    // and the store was given nothing in their place.
    const test_support::slot_place place = test_support::find_slots(before, "kept");
    const std::size_t span = static_cast<std::size_t>(place.header(place.count) - place.first);
    CHECK(test_support::read_file(dir.file("not-decoding")).substr(place.first, span) ==
          before.substr(place.first, span));
    CHECK_FALSE(durable.get("kept"));
    keepsake::keeper<named_count> still(seg, "kept");
    CHECK(still.generation() == 2);
    named_count out{"untouched", 9};
    CHECK(test_support::error_from([&] { still.restore_into(out); }).code() == errc::decode_failed);
    CHECK(out.name == "untouched");
}

TEST_CASE("a unit's side table is committed with its state, and a crash undoes both together", "[unit][table]") {
    pumped_runtime env("with-table");
    using roster = keepsake::side_table<int, std::string>;
    auto join = [](int id) {
        return [id](counter& state, keepsake::unit_context<counter>& context) {
            context.table<int, std::string>("players").put(id, "player" + std::to_string(id));
            ++state.value;
        };
    };
    auto players_and_count = [](counter& state, keepsake::unit_context<counter>& context) {
        roster& players = context.table<int, std::string>("players");
        return std::make_pair(players.size(), state.value);
    };
    {
        auto unit = keepsake::start_unit(env.rt, counter_spec("lobby"));
        unit.call(join(1));
        unit.call(join(2));
        // A message that changes both, then crashes: neither change stays.
        CHECK_THROWS_AS(unit.call([](counter& state, keepsake::unit_context<counter>& context) -> int {
                            context.table<int, std::string>("players").put(3, "intruder");
                            context.table<int, std::string>("players").erase(1);
                            ++state.value;
                            throw std::runtime_error("crash mid-change");
                        }),
                        keepsake::worker_crashed);
        CHECK(unit.call(players_and_count) == std::make_pair(std::size_t{2}, 2L));
        unit.call(join(4));
        keepsake::stop_unit(env.rt, unit);
    }
    // A new instance (as after kill -9) finds the table as last committed.
    auto again = keepsake::start_unit(env.rt, counter_spec("lobby"));
    CHECK(again.call(players_and_count) == std::make_pair(std::size_t{3}, 3L));
    CHECK(again.call([](counter&, keepsake::unit_context<counter>& context) {
        return *context.table<int, std::string>("players").find(4);
    }) == "player4");
}

TEST_CASE("units stopped out of order leave the others running, before and after the runtime squeezes its roots", "[unit]") {
    pumped_runtime env("roots");
    std::vector<keepsake::unit<counter>> units;
    for (int index = 0; index < 100; ++index)
        units.push_back(keepsake::start_unit(env.rt, counter_spec("u" + std::to_string(index))));
    std::vector<bool> stopped(units.size(), false);
    auto stop = [&](std::size_t index) {
        keepsake::stop_unit(env.rt, units[index]);
        stopped[index] = true;
    };
    // 70 holes: past half the list, so it is squeezed (and each root's
    // slot renumbered) once on the way.
    for (std::size_t step = 0; step < 70; ++step) stop((step * 37) % 100);
    for (int index = 0; index < 5; ++index)
        units.push_back(keepsake::start_unit(env.rt, counter_spec("late" + std::to_string(index))));
    stopped.resize(units.size(), false);
    stop(100 + 2);                                   // one started after the squeeze
    for (std::size_t index = 0; index < 100; ++index)  // and one from before it
        if (!stopped[index]) {
            stop(index);
            break;
        }
    for (std::size_t index = 0; index < units.size(); ++index) {
        INFO("unit " << units[index].name());
        if (stopped[index]) {
            CHECK(units[index].state() == keepsake::child_state::not_running);
        } else {
            units[index].cast([](counter& state) { ++state.value; });
            CHECK(read(units[index]) == 1);
        }
    }
}

TEST_CASE("a unit gives up past its restart intensity, and then calls fail at once", "[unit]") {
    auto clock = std::make_shared<keepsake::manual_clock>();
    pumped_runtime harness("intensity", clock);
    auto& rt = harness.rt;
    auto spec = counter_spec("c");
    spec.intensity = {2, 10s};
    std::vector<std::string> seen;
    rt.events().subscribe([&](const keepsake::event& what) { seen.push_back(keepsake::to_string(what.kind)); });
    auto unit = keepsake::start_unit(rt, spec);
    crash_with(unit, "one");
    crash_with(unit, "two");
    CHECK(read(unit) == 0);
    CHECK(unit.state() == keepsake::child_state::running);
    crash_with(unit, "three");
    keepsake::testing::run_until_idle(rt);
    CHECK(unit.state() == keepsake::child_state::not_running);
    const auto started = std::chrono::steady_clock::now();
    try {
        read(unit);
        FAIL("a call to a stopped unit should fail");
    } catch (const keepsake::error& failure) {
        CHECK(failure.code() == errc::not_running);
    }
    CHECK(std::chrono::steady_clock::now() - started < 1s);
    CHECK_THROWS_AS(unit.cast([](counter&) {}), keepsake::error);
    CHECK(seen == std::vector<std::string>{"started", "exited", "restarted", "exited", "restarted", "exited", "gave_up"});
}

TEST_CASE("the default intensity allows 1000 restarts in 10 s", "[unit]") {
    auto clock = std::make_shared<keepsake::manual_clock>();
    pumped_runtime harness("default-intensity", clock);
    auto& rt = harness.rt;
    auto unit = keepsake::start_unit(rt, counter_spec("c"));
    for (int i = 0; i < 1000; ++i) crash_with(unit, "again");
    CHECK(read(unit) == 0);
    CHECK(unit.stats().restarts == 1000);
    crash_with(unit, "one too many");
    keepsake::testing::run_until_idle(rt);
    CHECK(unit.state() == keepsake::child_state::not_running);
}

TEST_CASE("commit policies: every N, manual, and the commit at a graceful stop", "[unit]") {
    pumped_runtime harness("policies");
    auto& rt = harness.rt;

    auto batched = counter_spec("batched");
    batched.commit = keepsake::commit_policy::every(3);
    auto every3 = keepsake::start_unit(rt, batched);
    for (int i = 0; i < 4; ++i) every3.call([](counter& state) { ++state.value; });
    CHECK(every3.stats().commits == 1);  // after the third; the fourth is not committed yet
    CHECK_THROWS_AS(every3.call([](counter&) -> int { throw std::runtime_error("x"); }), keepsake::worker_crashed);
    CHECK(read(every3) == 3);  // the policy's stated loss: up to N-1 messages

    auto by_hand = counter_spec("manual");
    by_hand.commit = keepsake::commit_policy::manual();
    auto manual = keepsake::start_unit(rt, by_hand);
    manual.call([](counter& state) { state.value = 5; });
    manual.call([](counter& state, keepsake::unit_context<counter>& context) {
        state.value = 6;
        context.commit();
    });
    manual.call([](counter& state) { state.value = 7; });
    CHECK(manual.stats().commits == 1);
    keepsake::stop_unit(rt, manual);  // a graceful stop commits the rest
    CHECK(manual.stats().generation == 2);
}

TEST_CASE("the init hook sees the handed-over state on every (re)start and may adjust it", "[unit]") {
    pumped_runtime harness("init");
    auto& rt = harness.rt;
    std::vector<keepsake::start_info> starts;
    auto spec = counter_spec("c");
    spec.initial.value = 100;
    spec.init = [&](counter& state, const keepsake::start_info& info) {
        starts.push_back(info);
        state.value += 1;  // adjusted, not committed by itself
    };
    auto unit = keepsake::start_unit(rt, spec);
    CHECK(read(unit) == 101);
    unit.call([](counter& state) { state.value = 500; });
    crash_with(unit, "x");
    CHECK(read(unit) == 501);
    REQUIRE(starts.size() == 2);
    CHECK_FALSE(starts[0].restored);
    CHECK(starts[0].generation == 0);
    CHECK(starts[1].restored);
    CHECK(starts[1].generation == 1);
    CHECK(starts[1].restarts == 1);
}

TEST_CASE("initial_for makes a fresh start's state from the unit's name; a commit wins over it", "[unit]") {
    pumped_runtime harness("initial-for");
    auto& rt = harness.rt;
    int made = 0;
    auto spec = counter_spec("seven-letters");
    spec.initial.value = -1;  // not used: initial_for is set
    spec.initial_for = [&](const std::string& name) {
        ++made;
        return counter{static_cast<long>(name.size())};
    };
    auto unit = keepsake::start_unit(rt, spec);
    CHECK(read(unit) == 13);
    CHECK(made == 1);
    crash_with(unit, "nothing committed yet");
    CHECK(read(unit) == 13);  // a fresh start again: made again
    CHECK(made == 2);
    unit.call([](counter& state) { state.value = 40; });
    crash_with(unit, "after a commit");
    CHECK(read(unit) == 40);  // restored: the initial state is not needed
    CHECK(made == 2);
}

// A handler that cannot be copied (it owns a resource): start_unit moves
// the spec's into the unit.
struct owning_handler {
    std::unique_ptr<long> served = std::make_unique<long>(0);
    long operator()(counter& state, const add& message) {
        state.value += message.amount;
        return ++*served;
    }
};

TEST_CASE("start_unit takes a handler that cannot be copied, and the unit keeps it", "[unit]") {
    pumped_runtime harness("move-only");
    keepsake::unit_spec<counter, owning_handler> spec;
    spec.name = "owner";
    auto unit = keepsake::start_unit(harness.rt, std::move(spec));
    CHECK(unit.call(add{5}) == 1);
    CHECK(unit.call(add{5}) == 2);
    CHECK(unit.call([](const counter& state) { return state.value; }) == 10);
}

TEST_CASE("a loop worker ticks, commits when it says, serves messages at yields, and stops when asked", "[unit]") {
    auto clock = std::make_shared<keepsake::manual_clock>();
    pumped_runtime harness("loop", clock);
    auto& rt = harness.rt;
    auto spec = counter_spec("ticker");
    spec.loop = [](keepsake::unit_context<counter>& context) {
        while (!context.stop_requested()) {
            ++context.state().value;
            context.commit();
            context.sleep_for(10ms);
        }
    };
    auto unit = keepsake::start_unit(rt, spec);
    keepsake::testing::run_until_idle(rt);
    const auto first = unit.stats().generation;
    CHECK(first == 1);
    keepsake::testing::run_until_idle(rt);
    CHECK(unit.stats().generation == first);  // sleeping on the manual clock
    for (int i = 0; i < 5; ++i) {
        clock->advance(10ms);
        keepsake::testing::run_until_idle(rt);
    }
    CHECK(unit.stats().generation == 6);
    unit.cast([](counter& state) { state.value += 1000; });
    clock->advance(10ms);
    keepsake::testing::run_until_idle(rt);
    CHECK(unit.call([](const counter& state) { return state.value; }) >= 1006);
    keepsake::stop_unit(rt, unit);
    CHECK(unit.state() == keepsake::child_state::not_running);
}

TEST_CASE("a loop worker that crashes restarts from its last commit, and an explicit crash counts", "[unit]") {
    pumped_runtime harness("loop-crash");
    auto& rt = harness.rt;
    std::atomic<int> runs{0};
    auto spec = counter_spec("l");
    spec.loop = [&](keepsake::unit_context<counter>& context) {
        ++runs;
        context.state().value += 1;
        context.commit();
        context.state().value += 100;  // not committed
        if (context.state().value < 103) context.crash("on purpose");
        while (!context.stop_requested()) context.sleep_for(1ms);
    };
    auto unit = keepsake::start_unit(rt, spec);
    keepsake::testing::run_until_idle(rt);
    // Committed 1, crashed at 101; restored 1, committed 2, crashed at 102;
    // restored 2, committed 3, runs on at 103.
    CHECK(runs == 3);
    CHECK(unit.stats().restarts == 2);
    CHECK(unit.stats().generation == 3);
    CHECK(unit.call([](const counter& state) { return state.value; }) == 103);
}

TEST_CASE("listeners: on_state_changed in commit order, on_terminate with the reason", "[unit]") {
    pumped_runtime harness("listeners");
    auto& rt = harness.rt;
    auto unit = keepsake::start_unit(rt, counter_spec("c"));
    std::vector<std::pair<long, long>> changes;
    std::vector<std::string> ends;
    unit.on_state_changed([&](const counter& before, const counter& after) { changes.emplace_back(before.value, after.value); });
    unit.on_terminate([&](const keepsake::exit_reason& why, const counter&) { ends.push_back(keepsake::to_string(why.kind)); });
    unit.call([](counter& state) { state.value = 1; });  // before it: the initial state, as nothing was committed
    unit.call([](counter& state) { state.value = 2; });
    unit.call([](counter& state) { state.value = 3; });
    crash_with(unit, "x");
    unit.call([](counter& state) { state.value = 4; });
    keepsake::stop_unit(rt, unit);
    CHECK(changes == std::vector<std::pair<long, long>>{{0, 1}, {1, 2}, {2, 3}, {3, 4}});
    CHECK(ends == std::vector<std::string>{"crashed", "shutdown"});  // stopped by stop_unit
}

TEST_CASE("on_state_changed reports the first commit after it subscribes, with the committed state before it",
          "[unit]") {
    pumped_runtime harness("late-listener");
    auto& rt = harness.rt;
    auto spec = counter_spec("c");
    spec.init = [](counter& state, const keepsake::start_info& info) {
        if (info.restarts != 0) state.value += 100;  // changed by the init, not committed
    };
    auto unit = keepsake::start_unit(rt, spec);
    unit.call([](counter& state) { state.value = 5; });  // committed before anyone listens
    std::vector<std::pair<long, long>> changes;
    auto listen = [&] {
        return unit.on_state_changed(
            [&](const counter& before, const counter& after) { changes.emplace_back(before.value, after.value); });
    };
    auto id = listen();
    unit.call([](counter& state) { state.value = 6; });
    CHECK(changes == std::vector<std::pair<long, long>>{{5, 6}});

    // Commits while nobody listens: a listener that comes later gets the
    // newest committed state as "before", not the one its predecessor saw.
    unit.remove_listener(id);
    unit.call([](counter& state) { state.value = 7; });
    unit.call([](counter& state) { state.value = 8; });
    id = listen();
    unit.call([](counter& state) { state.value = 9; });
    CHECK(changes == std::vector<std::pair<long, long>>{{5, 6}, {8, 9}});

    // After a restart whose init changed the state, "before" is still what
    // was committed.
    crash_with(unit, "x");
    unit.call([](counter& state) { state.value += 1; });
    CHECK(changes == std::vector<std::pair<long, long>>{{5, 6}, {8, 9}, {9, 110}});
}

TEST_CASE("roots publish started, and whereis finds only units that accept calls", "[unit]") {
    pumped_runtime harness("roots");
    auto& rt = harness.rt;
    std::vector<std::string> seen;
    rt.events().subscribe([&](const keepsake::event& what) {
        if (what.kind == keepsake::event_kind::started)
            seen.push_back(std::string(what.supervisor) + " started " + std::string(what.child) + " #" +
                           std::to_string(what.instance));
    });
    auto solo = keepsake::start_unit(rt, counter_spec("solo"));
    keepsake::supervisor_spec tree;
    tree.name = "tree";
    tree.children.push_back(keepsake::child(counter_spec("leaf")));
    auto root = keepsake::start_supervisor(rt, tree);
    CHECK(seen == std::vector<std::string>{"runtime started solo #1", "tree started leaf #1", "runtime started tree #1"});

    REQUIRE(keepsake::whereis<counter>(rt, "solo"));
    REQUIRE(keepsake::whereis_supervisor(rt, "tree"));
    keepsake::stop_unit(rt, solo);
    keepsake::stop_supervisor(rt, root);
    // The handles still hold them, stopped: whereis does not hand them out.
    CHECK(solo.state() == keepsake::child_state::not_running);
    CHECK_FALSE(keepsake::whereis<counter>(rt, "solo"));
    CHECK_FALSE(keepsake::whereis<counter>(rt, "leaf"));
    CHECK_FALSE(keepsake::whereis_supervisor(rt, "tree"));
    CHECK(test_support::error_from([&] { read(solo); }).code() == errc::not_running);
}

TEST_CASE("a call that is not answered in time fails with timeout", "[unit]") {
    threaded_runtime harness("timeout");
    auto& rt = harness.rt;
    auto unit = keepsake::start_unit(rt, counter_spec("slow"));
    unit.cast([](counter&) { std::this_thread::sleep_for(300ms); });  // blocks the runtime thread
    try {
        unit.call_for([](const counter& state) { return state.value; }, 50ms);
        FAIL("expected a timeout");
    } catch (const keepsake::error& failure) {
        CHECK(failure.code() == errc::timeout);
    }
    CHECK(read(unit) == 0);  // the unit itself is fine
}

TEST_CASE("calls and casts from two OS threads at once", "[unit][threads]") {
    shm_dir dir;
    keepsake::segment seg("threads", dir.options());
    for (unsigned mode : {1u, 2u, 3u}) {  // 1 thread; 2 threads; 2 threads sharing work
        if (mode == 3 && !fibers_may_move_threads) continue;
        keepsake::runtime_options options;
        options.threads = mode == 1 ? 1 : 2;
        options.share_work = mode == 3;
        options.default_segment = &seg;
        keepsake::runtime rt(options);
        auto spec = counter_spec("shared" + std::to_string(mode));
        auto unit = keepsake::start_unit(rt, spec);
        constexpr int per_thread = 3000;
        std::atomic<int> bad{0};
        auto hammer = [&] {
            for (int i = 0; i < per_thread; ++i) {
                if (i % 2 == 0) unit.cast([](counter& state) { ++state.value; });
                else if (unit.call([](counter& state) { return ++state.value; }) <= 0) ++bad;
            }
        };
        std::thread first(hammer);
        std::thread second(hammer);
        first.join();
        second.join();
        CHECK(bad == 0);
        CHECK(read(unit) == 2 * per_thread);
    }
}

TEST_CASE("threads sharing work: fibers move to a free thread, and crashes, calls and stops still hold", "[unit][threads]") {
    if (!fibers_may_move_threads) {
        WARN("skipped under ThreadSanitizer, which cannot follow fibers between threads");
        return;
    }
    shm_dir dir;
    keepsake::segment seg("sharing", dir.options());
    keepsake::runtime_options options;
    options.threads = 2;
    options.share_work = true;
    options.default_segment = &seg;
    keepsake::runtime rt(options);
    constexpr int loops = 4;
    // Lock-free: a std::mutex taken in a loop that never blocks would starve
    // the other thread (glibc's mutex is not fair).
    std::atomic<std::size_t> first_thread[loops] = {};
    std::atomic<bool> moved_threads{false};
    std::vector<keepsake::unit<counter>> spinning;
    for (int i = 0; i < loops; ++i) {
        auto spec = counter_spec("spin" + std::to_string(i));
        spec.loop = [i, &first_thread, &moved_threads](keepsake::unit_context<counter>& ctx) {
            while (!ctx.stop_requested()) {
                // gettid, not std::this_thread::get_id(): pthread_self() is
                // declared const, so a compiler may read it once for the
                // whole loop, across the yields that move the fiber.
                const auto here = static_cast<std::size_t>(::syscall(SYS_gettid));
                std::size_t expected = 0;
                if (!first_thread[i].compare_exchange_strong(expected, here) && expected != here)
                    moved_threads.store(true);
                ++ctx.state().value;
                if (ctx.state().value % 64 == 0) ctx.commit();
                ctx.yield();
            }
        };
        spinning.push_back(keepsake::start_unit(rt, spec));
    }
    auto moved = [&] { return moved_threads.load(); };
    for (int waited = 0; waited < 1000 && !moved(); ++waited) std::this_thread::sleep_for(10ms);
    CHECK(moved());  // some fiber ran on both threads
    // A message unit beside them: crashes restart in place, nothing is lost.
    auto spec = counter_spec("beside");
    spec.intensity = {100000, 10s};
    auto unit = keepsake::start_unit(rt, spec);
    for (int i = 0; i < 500; ++i) {
        unit.cast([](counter& state) { ++state.value; });
        if (i % 50 == 0) unit.cast([](counter&) { throw std::runtime_error("shared boom"); });
    }
    CHECK(read(unit) == 500);
    CHECK(unit.stats().restarts == 10);
    for (auto& each : spinning) keepsake::stop_unit(rt, each);
    for (auto& each : spinning) CHECK(each.state() == keepsake::child_state::not_running);
}

TEST_CASE("a pumped runtime runs only when polled, and run_for returns once nothing is ready", "[unit][runtime]") {
    pumped_runtime harness("pump");
    auto& rt = harness.rt;
    auto unit = keepsake::start_unit(rt, counter_spec("c"));
    unit.cast([](counter& state) { state.value = 3; });
    CHECK(unit.stats().messages == 0);  // nothing runs until the host lets it
    rt.run_for(100ms);
    CHECK(unit.stats().messages == 1);
    const auto started = std::chrono::steady_clock::now();
    rt.run_for(2s);  // idle: returns long before the budget
    CHECK(std::chrono::steady_clock::now() - started < 1s);
    bool refused = false;
    std::thread([&] {
        try {
            rt.poll();
        } catch (const keepsake::error&) {
            refused = true;
        }
    }).join();
    CHECK(refused);
}

TEST_CASE("a process killed while running units resumes every unit at its last commit", "[unit][crash]") {
    shm_dir dir;
    struct progress {
        std::atomic<int> ready{0};
        std::atomic<long> committed[3];
    };
    auto* shared = test_support::shared_anonymous<progress>();
    const pid_t child = test_support::fork_child([&] {
        keepsake::segment seg("killed", dir.options());
        keepsake::runtime rt(pumped(seg));
        std::vector<keepsake::unit<counter>> units;
        for (int i = 0; i < 3; ++i) units.push_back(keepsake::start_unit(rt, counter_spec("u" + std::to_string(i))));
        for (long round = 1;; ++round) {
            for (int i = 0; i < 3; ++i) {
                const long value = units[static_cast<std::size_t>(i)].call([i](counter& state) { return state.value += i + 1; });
                shared->committed[i].store(value, std::memory_order_release);  // the reply came after the commit
            }
            if (round == 50) shared->ready.store(1, std::memory_order_release);
        }
    });
    REQUIRE(test_support::wait_ready(shared->ready, child));
    std::this_thread::sleep_for(20ms);
    test_support::kill_and_reap(child);

    keepsake::segment seg("killed", dir.options());
    CHECK(seg.outcome() == keepsake::open_outcome::reopened_after_crash);
    keepsake::runtime rt(pumped(seg));
    for (int i = 0; i < 3; ++i) {
        auto unit = keepsake::start_unit(rt, counter_spec("u" + std::to_string(i)));
        const long resumed = read(unit);
        const long acknowledged = shared->committed[i].load();
        // Every acknowledged update survived; at most the one in flight was
        // committed without its reply being seen.
        CHECK(resumed >= acknowledged);
        CHECK(resumed <= acknowledged + (i + 1));
        CHECK(resumed % (i + 1) == 0);
    }
    test_support::release_shared(shared);
}

TEST_CASE("unit specs are checked when the unit is made", "[unit]") {
    pumped_runtime harness("specs");
    auto& rt = harness.rt;
    auto bad_policy = counter_spec("p");
    bad_policy.commit = keepsake::commit_policy::every(0);
    CHECK_THROWS_AS(keepsake::start_unit(rt, bad_policy), keepsake::error);
    auto bad_period = counter_spec("q");
    bad_period.intensity = {3, 0s};
    CHECK_THROWS_AS(keepsake::start_unit(rt, bad_period), keepsake::error);
    auto negative_shutdown = counter_spec("r");
    negative_shutdown.shutdown = keepsake::shutdown_spec::after(-1s);
    try {
        keepsake::start_unit(rt, negative_shutdown);
        FAIL("a negative shutdown timeout should be refused");
    } catch (const keepsake::error& failure) {
        CHECK(failure.code() == errc::invalid_argument);
    }
    auto first = keepsake::start_unit(rt, counter_spec("dup"));
    CHECK_THROWS_AS(keepsake::start_unit(rt, counter_spec("dup")), keepsake::error);
    keepsake::runtime no_segment({1, nullptr, 128 * 1024, nullptr});
    try {
        keepsake::start_unit(no_segment, counter_spec("orphan"));
        FAIL("expected start_failed");
    } catch (const keepsake::error& failure) {
        CHECK(failure.code() == errc::start_failed);
    }
}

namespace {

// One scripted run of a small tree on a manual clock and a pumped runtime:
// loop workers tick on the clock, one crashes every few ticks, casts and
// calls arrive at fixed times; every event is recorded with its timestamp.
std::vector<std::string> scripted_run(const std::string& name) {
    auto clock = std::make_shared<keepsake::manual_clock>();
    pumped_runtime harness(name, clock);
    auto& rt = harness.rt;
    std::vector<std::string> trace;
    rt.events().subscribe([&](const keepsake::event& what) {
        trace.push_back(std::to_string(what.at.count()) + " " + keepsake::to_string(what.kind) + " " +
                        std::string(what.supervisor) + "/" + std::string(what.child) + " #" +
                        std::to_string(what.instance) + " " + keepsake::to_string(what.reason_kind) + " " +
                        std::string(what.reason));
    });
    auto ticker = [](const std::string& id, long crash_every) {
        auto spec = counter_spec(id);
        spec.intensity = {3, 1s};
        spec.loop = [crash_every](keepsake::unit_context<counter>& ctx) {
            while (!ctx.stop_requested()) {
                ++ctx.state().value;
                ctx.commit();
                if (crash_every != 0 && ctx.state().value % crash_every == 0) ctx.crash("tick " + std::to_string(ctx.state().value));
                ctx.sleep_for(10ms);
            }
        };
        return spec;
    };
    keepsake::supervisor_spec tree;
    tree.name = "root";
    tree.flags.strategy = keepsake::strategy::rest_for_one;
    tree.flags.intensity = {2, 1s};
    tree.children = {keepsake::child(ticker("steady", 0)), keepsake::child(ticker("flaky", 7)),
                     keepsake::child(counter_spec("mailbox"))};
    auto root = keepsake::start_supervisor(rt, tree);
    auto mailbox = keepsake::whereis<counter>(rt, "mailbox");
    REQUIRE(mailbox);
    for (int step = 0; step < 400; ++step) {
        clock->advance(1ms);
        try {
            if (step % 13 == 0) mailbox->cast([step](counter& state) { state.value += step; });
            if (step % 50 == 0) trace.push_back("read " + std::to_string(read(*mailbox)));
        } catch (const keepsake::error& failure) {
            trace.push_back(std::string("failed ") + failure.what());
        }
        rt.run_for(100ms);
    }
    keepsake::stop_supervisor(rt, root);
    rt.run_for(100ms);
    return trace;
}

} // namespace

TEST_CASE("a manual clock and a pumped runtime make a run deterministic", "[unit][runtime][determinism]") {
    const std::vector<std::string> first = scripted_run("determinism-a");
    const std::vector<std::string> second = scripted_run("determinism-b");
    CHECK(first == second);
    // The run is not trivial: crashes, restarts and a give-up all happened.
    auto count = [&](const std::string& word) {
        return std::count_if(first.begin(), first.end(),
                             [&](const std::string& line) { return line.find(word) != std::string::npos; });
    };
    CHECK(count(" restarted ") >= 3);
    CHECK(count(" exited ") >= 3);
    CHECK(count(" stopped ") >= 1);
}

// --- the last commits reach the store, whatever the declaration order --------

namespace {

// 150 updates through calls to three units that commit only at their
// graceful stop (manual policy), with an exporter declared before or after
// the runtime; then a reboot: the segment is removed and each key recovered
// from the store.
long updates_after_reboot(bool exporter_declared_first) {
    shm_dir dir;
    keepsake::memory_store durable;
    const std::vector<std::string> keys{"a", "b", "c"};
    {
        keepsake::segment seg("order", dir.options());
        keepsake::exporter_options options;
        options.interval = std::chrono::hours(1);  // only its last pass exports
        std::optional<keepsake::exporter> before;
        if (exporter_declared_first) before.emplace(seg, durable, options);
        keepsake::runtime rt({1, nullptr, 128 * 1024, &seg});
        std::optional<keepsake::exporter> after;
        if (!exporter_declared_first) after.emplace(seg, durable, options);
        std::vector<keepsake::unit<counter>> units;
        for (const std::string& key : keys) {
            auto spec = counter_spec(key);
            spec.commit = keepsake::commit_policy::manual();
            units.push_back(keepsake::start_unit(rt, spec));
        }
        for (int i = 0; i < 150; ++i) units[static_cast<std::size_t>(i) % units.size()].call([](counter& state) { ++state.value; });
        CHECK(units[0].stats().commits == 0);  // all of it is still to be committed at the stop
    }  // destroyed in reverse: `after` before rt, or rt before `before`
    REQUIRE(keepsake::segment::remove("order", dir.path()));  // what a reboot does to /dev/shm
    keepsake::segment rebooted("order", dir.options());
    REQUIRE(rebooted.outcome() == keepsake::open_outcome::created);
    long total = 0;
    for (const std::string& key : keys) {
        keepsake::keeper<counter> kept(rebooted, key);
        const auto found = keepsake::recover(kept, durable, counter{});
        CHECK(found.source == keepsake::recovery_source::store);
        total += found.value.value;
    }
    return total;
}

} // namespace

TEST_CASE("the last commits reach the store whether the exporter is declared before or after the runtime",
          "[unit][store]") {
    CHECK(updates_after_reboot(true) == 150);
    CHECK(updates_after_reboot(false) == 150);
}

TEST_CASE("an exporter stopped by hand leaves the units running", "[unit][store]") {
    pumped_runtime harness("hand-stop");
    keepsake::memory_store durable;
    auto unit = keepsake::start_unit(harness.rt, counter_spec("c"));
    {
        keepsake::exporter out(harness.seg, durable);
        unit.call([](counter& state) { state.value = 3; });
        REQUIRE(out.stop());
    }
    CHECK(unit.state() == keepsake::child_state::running);
    CHECK(unit.call([](counter& state) { return ++state.value; }) == 4);
    {
        keepsake::exporter out(harness.seg, durable);
    }  // not stopped by hand: it stops the units of its segment first
    CHECK(unit.state() == keepsake::child_state::not_running);
}

// --- crash reports --------------------------------------------------------------

namespace {

std::atomic<std::int64_t> fake_second{1000};
std::int64_t fake_seconds() noexcept { return fake_second.load(); }

// Reports go to `lines` (or stderr) on a clock the test moves; everything
// back to the defaults after.
struct captured_reports {
    std::mutex mutex;
    std::vector<std::string> lines;

    explicit captured_reports(std::uint32_t per_second = 3, bool to_sink = true) {
        keepsake::crash_report_options options;
        options.lines_per_second = per_second;
        if (to_sink)
            options.sink = [this](std::string_view line) {
                std::lock_guard<std::mutex> lock(mutex);
                lines.emplace_back(line);
            };
        keepsake::set_crash_reports(std::move(options));
        keepsake::detail::crash_reports().set_time_source(&fake_seconds);
    }
    ~captured_reports() {
        keepsake::set_crash_reports(keepsake::crash_report_options{});
        keepsake::detail::crash_reports().set_time_source(nullptr);
    }
    std::vector<std::string> taken() {
        std::lock_guard<std::mutex> lock(mutex);
        return std::exchange(lines, {});
    }
    std::size_t count() {
        std::lock_guard<std::mutex> lock(mutex);
        return lines.size();
    }
};

// fd 2 goes to a file while it lives.
class stderr_to_file {
public:
    explicit stderr_to_file(const std::string& path) {
        std::fflush(stderr);
        saved_ = ::dup(2);
        const int file = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        ::dup2(file, 2);
        ::close(file);
    }
    ~stderr_to_file() {
        std::fflush(stderr);
        ::dup2(saved_, 2);
        ::close(saved_);
    }

private:
    int saved_ = -1;
};

std::string contents(const std::string& path) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

} // namespace

TEST_CASE("crash reports: a crash, a give-up and a store failure are one line each, rate-limited per kind",
          "[unit][reports]") {
    captured_reports reports(3);
    pumped_runtime harness("reports");
    auto& rt = harness.rt;
    auto spec = counter_spec("c");
    spec.intensity = {100, 10s};
    auto unit = keepsake::start_unit(rt, spec);
    for (int i = 0; i < 10; ++i) crash_with(unit, "disk on fire");
    read(unit);
    CHECK(reports.taken() == std::vector<std::string>{
                                 "keepsake: unit 'c' crashed (restarts so far: 0): disk on fire",
                                 "keepsake: unit 'c' crashed (restarts so far: 1): disk on fire",
                                 "keepsake: unit 'c' crashed (restarts so far: 2): disk on fire"});
    ++fake_second;  // the next second: what was left out is counted first
    crash_with(unit, "again");
    read(unit);
    CHECK(reports.taken() ==
          std::vector<std::string>{"keepsake: 7 more crash report(s) left out (at most 3 a second; "
                                   "keepsake::set_crash_reports(false) silences them)",
                                   "keepsake: unit 'c' crashed (restarts so far: 10): again"});

    // A give-up, of a unit and of its supervisor: kinds have their own limits.
    ++fake_second;
    keepsake::supervisor_spec tree;
    tree.name = "tree";
    tree.flags.intensity = {0, 5s};
    auto fragile = counter_spec("fragile");
    fragile.intensity = {0, 1s};
    tree.children.push_back(keepsake::child(fragile));
    keepsake::start_supervisor(rt, tree);
    auto victim = *keepsake::whereis<counter>(rt, "fragile");
    crash_with(victim, "bad input");
    // Until the three lines are in (a loaded machine may need more than one pass).
    for (int i = 0; i < 10000 && reports.count() < 3; ++i) rt.run_for(1ms);
    rt.run_for(20ms);
    CHECK(reports.taken() ==
          std::vector<std::string>{"keepsake: unit 'fragile' crashed (restarts so far: 0): bad input",
                                   "keepsake: unit 'fragile' gave up: more than 0 restarts in 1 s; last crash: bad input",
                                   "keepsake: supervisor 'tree' gave up: more than 0 restarts in 5 s; last exit: child "
                                   "'fragile' (crashed: gave up after 0 restarts within the period; last crash: bad input)"});

    // A store failure, from the exporter's thread.
    unit.call([](counter& state) { state.value = 1; });  // something to export
    keepsake::memory_store inner;
    keepsake::faulty_store broken(inner);
    broken.fail_every(1);
    keepsake::exporter_options options;
    options.interval = std::chrono::hours(1);
    options.retry_min = options.retry_max = std::chrono::hours(1);  // one attempt
    keepsake::exporter out(harness.seg, broken, options);
    CHECK_FALSE(out.flush(std::chrono::milliseconds(1)));  // starts a pass
    for (int i = 0; i < 60000 && broken.failures() == 0; ++i) std::this_thread::sleep_for(1ms);
    out.stop(std::chrono::milliseconds(0));
    const auto lines = reports.taken();
    REQUIRE_FALSE(lines.empty());
    CHECK_THAT(lines.front(), Catch::Matchers::StartsWith("keepsake: exporter: store_failed: ") &&
                                  Catch::Matchers::Contains("injected failure"));
}

TEST_CASE("crash reports go to stderr by default, and set_crash_reports(false) makes keepsake quiet",
          "[unit][reports]") {
    captured_reports reports(10, false);
    shm_dir files;
    const std::string path = files.path() + "/stderr";
    pumped_runtime harness("stderr");
    auto unit = keepsake::start_unit(harness.rt, counter_spec("loud"));
    {
        stderr_to_file redirected(path);
        crash_with(unit, "printed");
        read(unit);
        keepsake::set_crash_reports(false);
        for (int i = 0; i < 50; ++i) crash_with(unit, "quiet");
        read(unit);
        ++fake_second;
        crash_with(unit, "quiet");
        read(unit);
    }
    CHECK(contents(path) == "keepsake: unit 'loud' crashed (restarts so far: 0): printed\n");
}

}  // namespace unit_tests
