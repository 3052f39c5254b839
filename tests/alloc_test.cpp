// No heap allocation per commit, call, cast or restart once warmed up, for a
// trivially copyable state. This binary replaces the global operator new
// (counting_new.cpp) to count every allocation made on the test's thread (a
// pumped runtime runs the workers on that thread too).
#include <catch2/catch.hpp>

#include <exception>

#include <keepsake/keepsake.hpp>

#include "counting_new.hpp"
#include "support.hpp"

namespace alloc_tests {  // a unity build's sources keep their names apart (tests/CMakeLists.txt)

namespace {

struct pose {  // trivially copyable: stored as raw bytes
    long tick = 0;
    double joints[6] = {};
};

// A crash whose own throw allocates nothing (a std::runtime_error would
// allocate its message: that would be the test's allocation, not ours).
struct fault : std::exception {
    const char* what() const noexcept override { return "fault"; }
};

// Allocations made by `work` run `times` times.
template <class Work>
std::size_t allocations_in(int times, Work&& work) {
    const std::size_t before = test_support::heap::allocations();
    for (int i = 0; i < times; ++i) work(i);
    return test_support::heap::allocations() - before;
}

struct pumped_unit {
    std::shared_ptr<keepsake::manual_clock> clock = std::make_shared<keepsake::manual_clock>();  // before rt
    test_support::shm_dir dir;
    keepsake::segment seg;
    keepsake::runtime rt;
    keepsake::unit<pose> unit;

    explicit pumped_unit(bool direct_calls)
        : seg("alloc", dir.options()), rt([this] {
              keepsake::runtime_options options;
              options.threads = 0;
              options.default_segment = &seg;
              options.time = clock;
              return options;
          }()) {
        keepsake::unit_spec<pose> spec;
        spec.name = "arm";
        spec.direct_calls = direct_calls;
        spec.intensity = {10, std::chrono::seconds(1)};
        unit = keepsake::start_unit(rt, spec);
    }
};

constexpr int warm_up = 2000;
constexpr int measured = 10000;

} // namespace

TEST_CASE("a keeper commit allocates nothing", "[alloc]") {
    test_support::shm_dir dir;
    keepsake::segment seg("alloc-keeper", dir.options());
    keepsake::keeper<pose> kept(seg, "pose");
    pose state;
    auto commit = [&](int i) {
        state.tick = i;
        kept.commit(state);
    };
    allocations_in(warm_up, commit);
    CHECK(allocations_in(measured, commit) == 0);
}

TEST_CASE("a call allocates nothing, direct or queued", "[alloc]") {
    const bool direct = GENERATE(true, false);
    pumped_unit harness(direct);
    auto call = [&](int i) {
        harness.unit.call([i](pose& state) {
            state.tick = i;
            return state.tick;
        });
    };
    allocations_in(warm_up, call);
    CHECK(allocations_in(measured, call) == 0);
    CHECK(harness.unit.stats().commits >= warm_up + measured);
}

TEST_CASE("casts, queued and served, allocate nothing", "[alloc]") {
    pumped_unit harness(true);
    auto cast = [&](int i) {
        harness.unit.cast([](pose& state) { ++state.tick; });
        if (i % 256 == 255) harness.rt.run_for(std::chrono::milliseconds(100));
    };
    allocations_in(warm_up, cast);
    harness.rt.run_for(std::chrono::milliseconds(100));
    CHECK(allocations_in(measured, cast) == 0);
    harness.rt.run_for(std::chrono::milliseconds(100));
    CHECK(harness.unit.call([](const pose& state) { return state.tick; }) == warm_up + measured);
}

TEST_CASE("a try_call allocates nothing, answered or crashed, direct or queued", "[alloc]") {
    const bool direct = GENERATE(true, false);
    pumped_unit harness(direct);
    harness.unit.call([](pose& state) { state.tick = 7; });
    int wrong = 0;
    auto answered_then_crashed = [&](int) {
        const auto answered = harness.unit.try_call([](const pose& state) { return state.tick; });
        if (!answered.ok() || answered.value() != 7) ++wrong;
        // The crash's only exception is the handler's (fault allocates
        // nothing); the caller's call_result takes the reason, "fault".
        const auto crashed = harness.unit.try_call([](pose& state) -> long {
            state.tick = -1;  // never committed
            throw fault();
        });
        if (!crashed.crashed() || !crashed.restarted() || crashed.reason() != "fault") ++wrong;
        harness.clock->advance(std::chrono::milliseconds(200));  // within the intensity
    };
    allocations_in(warm_up / 10, answered_then_crashed);
    CHECK(allocations_in(measured / 10, answered_then_crashed) == 0);
    CHECK(wrong == 0);
    CHECK(harness.unit.stats().restarts == (warm_up + measured) / 10);
}

namespace {

std::int64_t every_call_a_new_second() noexcept {
    static std::int64_t second = 0;
    return ++second;
}

} // namespace

TEST_CASE("a worker crash and restart allocate nothing, with crash reports printed, left out or off", "[alloc]") {
    const int reports = GENERATE(0, 1, 2);  // printed (each in a second of its own), left out, off
    std::size_t printed = 0;
    keepsake::crash_report_options options;
    options.enabled = reports != 2;
    options.lines_per_second = reports == 0 ? 10 : 0;
    options.sink = [&printed](std::string_view) { ++printed; };
    keepsake::set_crash_reports(std::move(options));
    if (reports == 0) keepsake::detail::crash_reports().set_time_source(&every_call_a_new_second);
    pumped_unit harness(true);
    harness.unit.call([](pose& state) { state.tick = 7; });
    auto crash_and_read = [&](int) {
        harness.unit.cast([](pose& state) {
            state.tick = -1;  // never committed
            throw fault();
        });
        harness.rt.run_for(std::chrono::milliseconds(100));
        // Restarts spread out in time: the unit's restart log (which grows
        // to its busiest window, at most `intensity` entries) stays small.
        harness.clock->advance(std::chrono::milliseconds(200));
    };
    allocations_in(warm_up / 10, crash_and_read);
    CHECK(allocations_in(measured / 10, crash_and_read) == 0);
    CHECK(harness.unit.stats().restarts == (warm_up + measured) / 10);
    CHECK(harness.unit.call([](const pose& state) { return state.tick; }) == 7);
    CHECK((printed >= (warm_up + measured) / 10) == (reports == 0));
    keepsake::detail::crash_reports().set_time_source(nullptr);
    keepsake::set_crash_reports(keepsake::crash_report_options{});
}

}  // namespace alloc_tests
