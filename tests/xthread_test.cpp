// Calls from other threads: callers on four OS threads into units on two
// runtime threads, beside two busy-loop threads (on the 2-core machines this
// runs on, the runtime threads are descheduled all the time), for
// KEEPSAKE_STRESS_SECONDS (30 by default): every call answered, none timed
// out, no commit lost. Also units calling units on the other runtime thread,
// with timeouts that race their answers.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <keepsake/keepsake.hpp>

#include "support.hpp"

namespace xthread_tests {  // a unity build's sources keep their names apart (tests/CMakeLists.txt)

using namespace std::chrono_literals;
using keepsake::errc;
using test_support::fibers_may_move_threads;
using test_support::shm_dir;

namespace {

struct counter {
    long value = 0;
};

// A private segment and a runtime on `threads` threads of its own (0:
// pumped by the test's thread).
struct test_runtime {
    shm_dir dir;
    keepsake::segment seg;
    keepsake::runtime rt;
    test_runtime(const std::string& name, unsigned threads, bool share_work = false)
        : seg(name, dir.options()), rt(options(seg, threads, share_work)) {}

    static keepsake::runtime_options options(const keepsake::segment& where, unsigned threads, bool share_work) {
        keepsake::runtime_options made;
        made.threads = threads;
        made.share_work = share_work;
        made.default_segment = &where;
        return made;
    }
};

// Threads that spin until stopped, taking the cores from everyone else.
class busy_loops {
public:
    explicit busy_loops(int count) {
        for (int i = 0; i < count; ++i)
            threads_.emplace_back([this] {
                std::uint64_t spins = 0;
                while (!stop_.load(std::memory_order_relaxed)) ++spins;
                sink_.fetch_add(spins, std::memory_order_relaxed);
            });
    }
    busy_loops(const busy_loops&) = delete;
    busy_loops& operator=(const busy_loops&) = delete;
    ~busy_loops() {
        stop_.store(true);
        for (auto& thread : threads_) thread.join();
    }

private:
    std::atomic<bool> stop_{false};
    std::atomic<std::uint64_t> sink_{0};
    std::vector<std::thread> threads_;
};

// What one caller thread did, per unit.
struct tally {
    std::vector<long> acknowledged;  // increments whose call returned
    std::vector<long> cast;          // increments cast
    long calls = 0;
    long timeouts = 0;
    long failures = 0;
    long out_of_order = 0;           // a call returned a value not above this caller's last one
    std::chrono::steady_clock::duration slowest{};
    explicit tally(std::size_t units) : acknowledged(units), cast(units) {}
};

using counter_unit = keepsake::unit<counter>;

// How long a stress call may wait: far past the slowest seen (under a
// second, TSan and two busy loops on two cores), so only a lost wakeup
// times out, not a machine that stalls the runtime threads for seconds.
constexpr auto stress_call_timeout = 20s;

// One caller: random calls (most), casts, reads and crashing casts, until
// `stop`.
void hammer(std::vector<counter_unit>& units, unsigned seed, const std::atomic<bool>& stop, tally& out) {
    std::mt19937 random(seed);
    std::vector<long> last(units.size(), 0);
    while (!stop.load(std::memory_order_relaxed)) {
        const std::size_t which = random() % units.size();
        counter_unit& unit = units[which];
        const unsigned dice = random() % 100;
        const auto began = std::chrono::steady_clock::now();
        try {
            if (dice < 80) {
                const long now = unit.call_for([](counter& state) { return ++state.value; }, stress_call_timeout);
                ++out.acknowledged[which];
                if (now <= last[which]) ++out.out_of_order;
                last[which] = now;
            } else if (dice < 95) {
                unit.cast([](counter& state) { ++state.value; });
                ++out.cast[which];
            } else if (dice < 99) {
                last[which] = std::max(
                    last[which], unit.call_for([](const counter& state) { return state.value; }, stress_call_timeout));
            } else {
                unit.cast([](counter&) { throw std::runtime_error("cross-thread crash"); });
            }
            ++out.calls;
        } catch (const keepsake::error& failure) {
            ++(failure.code() == errc::timeout ? out.timeouts : out.failures);
        }
        out.slowest = std::max(out.slowest, std::chrono::steady_clock::now() - began);
    }
}

keepsake::unit_spec<counter> counter_spec(const std::string& name) {
    keepsake::unit_spec<counter> spec;
    spec.name = name;
    spec.intensity = {1u << 20, 10s};  // the crashing casts must never make it give up
    return spec;
}

// The stress run: `callers` threads into `count` units on a two-thread
// runtime beside `busy` spinning threads for `seconds`. Checks every answer
// and, after the runtime is gone, every unit's committed state.
void stress(bool share_work, int seconds, int callers = 4, int busy = 2, std::size_t count = 8) {
    shm_dir dir;
    keepsake::segment seg("xthread", dir.options());
    std::vector<long> expected(count, 0);
    std::vector<tally> tallies(static_cast<std::size_t>(callers), tally(count));
    {
        keepsake::runtime rt(test_runtime::options(seg, 2, share_work));
        std::vector<counter_unit> units;
        for (std::size_t i = 0; i < count; ++i)  // spread over both runtime threads in turn
            units.push_back(keepsake::start_unit(rt, counter_spec("unit" + std::to_string(i))));
        std::atomic<bool> stop{false};
        {
            busy_loops spinning(busy);
            std::vector<std::thread> threads;
            for (int i = 0; i < callers; ++i)
                threads.emplace_back([&, i] { hammer(units, 1234u + static_cast<unsigned>(i), stop, tallies[i]); });
            std::this_thread::sleep_for(std::chrono::seconds(seconds));
            stop.store(true);
            for (auto& thread : threads) thread.join();
        }
        long calls = 0;
        auto slowest = std::chrono::steady_clock::duration::zero();
        for (const tally& each : tallies) {
            CHECK(each.timeouts == 0);
            CHECK(each.failures == 0);
            CHECK(each.out_of_order == 0);
            calls += each.calls;
            slowest = std::max(slowest, each.slowest);
            for (std::size_t u = 0; u < count; ++u) expected[u] += each.acknowledged[u] + each.cast[u];
        }
        // The casts went in before this read, from threads now joined.
        for (std::size_t u = 0; u < count; ++u) CHECK(units[u].call([](const counter& state) { return state.value; }) == expected[u]);
        WARN(calls << " calls and casts in " << seconds << " s; the slowest took "
                   << std::chrono::duration_cast<std::chrono::milliseconds>(slowest).count() << " ms");
        CHECK(calls > 0);
        // No call ends later than its timeout: none timed out, and none
        // came back after it, beyond scheduling slack (TSan, 2 busy loops
        // on 2 cores) that is far below a second timeout's worth.
        CHECK(slowest < 2 * stress_call_timeout);
    }  // the runtime stops every unit; its keeper lets go of the key
    for (std::size_t u = 0; u < count; ++u) {
        keepsake::keeper<counter> kept(seg, "unit" + std::to_string(u));
        const auto restored = kept.restore();
        REQUIRE(restored);
        CHECK(restored->value.value == expected[u]);
    }
}

} // namespace

TEST_CASE("4 caller threads, 2 runtime threads, 2 busy loops: every call answered, no commit lost",
          "[xthread][stress]") {
    stress(false, test_support::env_count("KEEPSAKE_STRESS_SECONDS", 30));
}

TEST_CASE("the same with the runtime's threads sharing work, for a third of the time", "[xthread][stress]") {
    if (!fibers_may_move_threads) {
        WARN("skipped under ThreadSanitizer, which cannot follow fibers between threads");
        return;
    }
    stress(true, std::max(1, test_support::env_count("KEEPSAKE_STRESS_SECONDS", 30) / 3));
}

TEST_CASE("units call units on the other runtime thread, and timeouts race the answers", "[xthread]") {
    test_runtime harness("relay", 2);
    auto& rt = harness.rt;
    // Started in turn on thread 0, 1, 0, 1: each relay calls the counter on
    // the other thread from its worker fiber.
    auto left = keepsake::start_unit(rt, counter_spec("left"));
    auto right = keepsake::start_unit(rt, counter_spec("right"));
    auto relay_to_right = keepsake::start_unit(rt, counter_spec("to-right"));
    auto relay_to_left = keepsake::start_unit(rt, counter_spec("to-left"));
    auto via = [](counter_unit& relay, counter_unit& target) {
        return relay.call([&target](counter& hops) {
            ++hops.value;
            return target.call([](counter& state) { return ++state.value; });
        });
    };
    constexpr int rounds = 2000;
    std::thread first([&] {
        for (int i = 0; i < rounds; ++i) via(relay_to_right, right);
    });
    std::thread second([&] {
        for (int i = 0; i < rounds; ++i) via(relay_to_left, left);
    });
    first.join();
    second.join();
    CHECK(right.call([](const counter& state) { return state.value; }) == rounds);
    CHECK(left.call([](const counter& state) { return state.value; }) == rounds);

    SECTION("a fiber's call times out while the other thread is blocked, and the late answer is dropped") {
        int timed_out = 0;
        for (int i = 0; i < 20; ++i) {
            right.cast([](counter&) { std::this_thread::sleep_for(2ms); });  // blocks right's thread
            timed_out += relay_to_right.call([&right, i](counter&) {
                try {
                    right.call_for([](counter& state) { return ++state.value; }, std::chrono::microseconds(100 * (i % 3)));
                    return 0;
                } catch (const keepsake::error& failure) {
                    return failure.code() == errc::timeout ? 1 : 100;
                }
            });
        }
        CHECK(timed_out >= 1);
        CHECK(timed_out <= 20);
        // Every increment that timed out may still have been served late: the
        // counter is consistent with the answers either way.
        const long now = right.call([](const counter& state) { return state.value; });
        CHECK(now >= rounds + 20 - timed_out);
        CHECK(now <= rounds + 20);
    }
}

TEST_CASE("producers on four threads fill a blocked unit's mailbox: its ring grows, nothing is lost or reordered",
          "[xthread]") {
    test_runtime harness("burst", 1);
    auto& rt = harness.rt;
    struct sequence_check {
        long count = 0;
        long last[4] = {-1, -1, -1, -1};
        long out_of_order = 0;
    };
    keepsake::unit_spec<sequence_check> spec;
    spec.name = "burst";
    auto unit = keepsake::start_unit(rt, spec);
    unit.cast([](sequence_check&) { std::this_thread::sleep_for(50ms); });  // the casts below pile up
    constexpr long per_thread = 10000;
    std::vector<std::thread> producers;
    for (int producer = 0; producer < 4; ++producer)
        producers.emplace_back([&unit, producer] {
            for (long i = 0; i < per_thread; ++i)
                unit.cast([producer, i](sequence_check& state) {
                    ++state.count;
                    if (i != state.last[producer] + 1) ++state.out_of_order;
                    state.last[producer] = i;
                });
        });
    for (auto& each : producers) each.join();
    // Behind 40 000 casts, each committed: seconds under TSan on a loaded machine.
    const auto seen = unit.call_for([](const sequence_check& state) { return state; }, 120s);
    CHECK(seen.count == 4 * per_thread);
    CHECK(seen.out_of_order == 0);
}

TEST_CASE("a hundred fibers wait on one unit's answers at once, and their reply cells are reused after", "[xthread]") {
    test_runtime harness("crowd", 0);
    auto& rt = harness.rt;
    auto spec = counter_spec("crowd");
    spec.direct_calls = false;  // every call queues and waits in a reply cell
    auto unit = keepsake::start_unit(rt, spec);
    constexpr int fibers = 100, calls = 20;
    int done = 0;
    long sum = 0;
    for (int round = 0; round < 2; ++round) {  // the second round reuses the cells
        for (int f = 0; f < fibers; ++f)
            rt.spawn([&] {
                for (int i = 0; i < calls; ++i) sum += unit.call([](counter& state) { return ++state.value; }) > 0;
                ++done;
            });
        while (done < fibers * (round + 1)) rt.run_for(10ms);
    }
    CHECK(sum == 2L * fibers * calls);
    CHECK(unit.call([](const counter& state) { return state.value; }) == 2L * fibers * calls);
}

}  // namespace xthread_tests
