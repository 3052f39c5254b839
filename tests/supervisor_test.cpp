// Supervisors (shared/design/supervision.md is the contract): flag and spec
// checks, start and stop order, restart types, strategies, the exact
// restart-intensity rule, escalation in nested trees, auto_shutdown,
// management calls, state kept across supervisor restarts, shutdown
// timeouts, and runtime::wait. The runtime is pumped by the test thread on
// a manual clock, so restart intensity is exact and nothing sleeps (except
// in the wait tests, where roots end while the test thread waits).
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "support.hpp"

namespace supervisor_tests {  // a unity build's sources keep their names apart (tests/CMakeLists.txt)

using namespace std::chrono_literals;
using keepsake::child_state;
using keepsake::errc;
using keepsake::event_kind;
using keepsake::exit_kind;
using keepsake::restart_type;
using keepsake::strategy;
using test_support::shm_dir;
using names = std::vector<std::string>;

namespace {

struct count {
    long value = 0;
};

using unit_t = keepsake::unit<count>;
using spec_t = keepsake::unit_spec<count>;

// An event, copied out of the callback.
struct seen {
    event_kind kind;
    std::string supervisor;
    std::string child;
    std::uint64_t instance;
    exit_kind reason_kind;
    std::string reason;
    keepsake::duration at;
};

class recorder {
public:
    explicit recorder(keepsake::runtime& rt) : rt_(rt) {
        id_ = rt_.events().subscribe([this](const keepsake::event& e) {
            all.push_back(seen{e.kind, std::string(e.supervisor), std::string(e.child), e.instance, e.reason_kind,
                               std::string(e.reason), e.at});
            if (also) also(all.back());
        });
    }
    ~recorder() { rt_.events().unsubscribe(id_); }
    recorder(const recorder&) = delete;
    recorder& operator=(const recorder&) = delete;

    // The children `by` published `kind` for, in order.
    names children(event_kind kind, const std::string& by) const {
        names out;
        for (const seen& e : all)
            if (e.kind == kind && e.supervisor == by) out.push_back(e.child);
        return out;
    }
    // "kind child" for every event of `by` among `kinds`, in order.
    names trace(const std::string& by, std::vector<event_kind> kinds) const {
        names out;
        for (const seen& e : all)
            if (e.supervisor == by && std::find(kinds.begin(), kinds.end(), e.kind) != kinds.end())
                out.push_back(std::string(keepsake::to_string(e.kind)) + " " + e.child);
        return out;
    }
    std::size_t count(event_kind kind, const std::string& by, const std::string& child) const {
        return static_cast<std::size_t>(std::count_if(all.begin(), all.end(), [&](const seen& e) {
            return e.kind == kind && e.supervisor == by && e.child == child;
        }));
    }
    const seen* last(event_kind kind, const std::string& by, const std::string& child) const {
        for (auto e = all.rbegin(); e != all.rend(); ++e)
            if (e->kind == kind && e->supervisor == by && e->child == child) return &*e;
        return nullptr;
    }
    void clear() { all.clear(); }

    std::vector<seen> all;
    std::function<void(const seen&)> also;

private:
    keepsake::runtime& rt_;
    std::uint64_t id_ = 0;
};

// A private segment, a manual clock (or the real one), a pumped runtime and
// its events.
struct world {
    explicit world(bool manual = true)
        : clock(std::make_shared<keepsake::manual_clock>()),
          rt(keepsake::runtime_options{0, manual ? std::shared_ptr<keepsake::clock>(clock) : nullptr, 128 * 1024, &seg}) {}

    shm_dir dir;
    keepsake::segment seg{"supervision", dir.options()};
    std::shared_ptr<keepsake::manual_clock> clock;
    keepsake::runtime rt;
    recorder events{rt};

    // Lets the fibers handle what was posted (exits, restarts), however long
    // a loaded machine takes: until none is ready (not a fixed budget).
    void settle() { keepsake::testing::run_until_idle(rt); }

    // The running unit of that name, else the handle taken when it last
    // started: whereis finds only units that accept calls, and tests look at
    // stopped ones too.
    unit_t unit(const std::string& name) {
        if (auto found = keepsake::whereis<count>(rt, name)) return *found;
        const auto kept = started_units.find(name);
        REQUIRE(kept != started_units.end());
        return kept->second;
    }
    std::map<std::string, unit_t> started_units;
    std::uint64_t keep_started = rt.events().subscribe([this](const keepsake::event& e) {
        if (e.kind != event_kind::started) return;
        try {
            if (auto found = keepsake::whereis<count>(rt, std::string(e.child))) started_units[std::string(e.child)] = *found;
        } catch (const keepsake::error&) {
            // a supervisor's name
        }
    });
    keepsake::supervisor sup(const std::string& name) {
        auto found = keepsake::whereis_supervisor(rt, name);
        REQUIRE(found);
        return *found;
    }
};

// A message-driven unit that gives up at its first crash, so its
// supervisor sees every crash.
spec_t worker(const std::string& name, restart_type restart = restart_type::permanent) {
    spec_t spec;
    spec.name = name;
    spec.intensity = {0, 1s};
    spec.restart = restart;
    return spec;
}

// What a loop worker is told to do at its next wake-up (the clock moving).
struct switches {
    bool leave = false;  // return (a normal exit), once
    bool crash = false;  // throw, once
};

spec_t looper(const std::string& name, restart_type restart = restart_type::permanent,
              std::shared_ptr<switches> told = std::make_shared<switches>()) {
    spec_t spec = worker(name, restart);
    spec.loop = [told](keepsake::unit_context<count>& ctx) {
        while (!ctx.stop_requested()) {
            if (told->leave) {
                told->leave = false;
                return;
            }
            if (told->crash) {
                told->crash = false;
                throw std::runtime_error("loop boom");
            }
            ctx.sleep_for(1ms);
        }
    };
    return spec;
}

// Wakes sleeping loop workers and lets the tree react.
void nudge(world& w) {
    w.clock->advance(1ms);
    w.settle();
}

keepsake::supervisor_spec tree(const std::string& name, strategy how, std::vector<keepsake::child_spec> children,
                               keepsake::restart_intensity limits = {3, 5s}) {
    keepsake::supervisor_spec spec;
    spec.name = name;
    spec.flags.strategy = how;
    spec.flags.intensity = limits;
    spec.children = std::move(children);
    return spec;
}

void crash(unit_t u) {
    REQUIRE_THROWS_AS(u.call([](count&) -> int { throw std::runtime_error("boom"); }), keepsake::worker_crashed);
}

long read(unit_t u) {
    return u.call([](const count& s) { return s.value; });
}

template <class F>
std::optional<errc> code_of(F&& f) {
    try {
        f();
    } catch (const keepsake::error& e) {
        return e.code();
    }
    return std::nullopt;
}

names ids(keepsake::supervisor& s) {
    names out;
    for (const auto& c : s.which_children()) out.push_back(c.id);
    return out;
}

std::optional<keepsake::child_info> info(keepsake::supervisor& s, const std::string& id) {
    for (const auto& c : s.which_children())
        if (c.id == id) return c;
    return std::nullopt;
}

std::uint64_t instance(keepsake::supervisor& s, const std::string& id) {
    auto found = info(s, id);
    REQUIRE(found);
    return found->instance;
}

child_state state(keepsake::supervisor& s, const std::string& id) {
    auto found = info(s, id);
    REQUIRE(found);
    return found->state;
}

} // namespace

// --- flags and specs ---------------------------------------------------------

TEST_CASE("supervisor: defaults are the contract's", "[supervisor]") {
    keepsake::supervisor_flags flags;
    CHECK(flags.strategy == strategy::one_for_one);
    CHECK(flags.intensity.max_restarts == 3);
    CHECK(flags.intensity.period == 5s);
    CHECK(flags.auto_shutdown == keepsake::auto_shutdown::never);
    spec_t unit_spec;
    unit_spec.name = "u";
    CHECK(unit_spec.intensity.max_restarts == 1000);
    CHECK(unit_spec.intensity.period == 10s);
    const auto worker_child = keepsake::child(unit_spec);
    CHECK(worker_child.restart == restart_type::permanent);
    CHECK(worker_child.kind == keepsake::child_kind::worker);
    CHECK(worker_child.shutdown.how == keepsake::shutdown_spec::mode::timeout);
    CHECK(worker_child.shutdown.limit == 5s);
    const auto supervisor_child = keepsake::child(tree("s", strategy::one_for_one, {}));
    CHECK(supervisor_child.kind == keepsake::child_kind::supervisor);
    CHECK(supervisor_child.shutdown.how == keepsake::shutdown_spec::mode::infinity);
}

TEST_CASE("supervisor: invalid flags and specs are rejected at construction", "[supervisor]") {
    world w;
    auto rejected = [&](keepsake::supervisor_spec spec) {
        return code_of([&] { keepsake::start_supervisor(w.rt, std::move(spec)); }) == errc::invalid_argument;
    };
    auto significant = [](spec_t spec) {
        spec.significant = true;
        return spec;
    };

    SECTION("significant and permanent") {
        auto spec = tree("root", strategy::one_for_one, {keepsake::child(significant(worker("a")))});
        spec.flags.auto_shutdown = keepsake::auto_shutdown::any_significant;
        CHECK(rejected(spec));
    }
    SECTION("a significant permanent child supervisor") {
        auto inner = tree("inner", strategy::one_for_one, {});
        inner.significant = true;
        auto spec = tree("root", strategy::one_for_one, {keepsake::child(inner)});
        spec.flags.auto_shutdown = keepsake::auto_shutdown::any_significant;
        CHECK(rejected(spec));
    }
    SECTION("significant while auto_shutdown is never") {
        CHECK(rejected(tree("root", strategy::one_for_one,
                            {keepsake::child(significant(worker("a", restart_type::transient)))})));
    }
    SECTION("duplicate ids") {
        CHECK(rejected(tree("root", strategy::one_for_one,
                            {keepsake::child(worker("a")), keepsake::child(worker("b")), keepsake::child(worker("a"))})));
    }
    SECTION("a dynamic supervisor with static children") {
        auto spec = tree("root", strategy::one_for_one, {keepsake::child(worker("a"))});
        spec.flags.dynamic = true;
        CHECK(rejected(spec));
    }
    SECTION("a dynamic supervisor that is not one_for_one") {
        auto spec = tree("root", strategy::one_for_all, {});
        spec.flags.dynamic = true;
        CHECK(rejected(spec));
    }
    SECTION("max_children without dynamic") {
        auto spec = tree("root", strategy::one_for_one, {keepsake::child(worker("a"))});
        spec.flags.max_children = 2;
        CHECK(rejected(spec));
    }
    SECTION("period zero or negative") {
        CHECK(rejected(tree("root", strategy::one_for_one, {keepsake::child(worker("a"))}, {3, 0s})));
        CHECK(rejected(tree("root", strategy::one_for_one, {keepsake::child(worker("a"))}, {3, -1s})));
    }
    SECTION("a negative shutdown timeout, of a worker, a child supervisor or the supervisor itself") {
        auto negative = worker("a");
        negative.shutdown = keepsake::shutdown_spec::after(-1s);
        CHECK(rejected(tree("root", strategy::one_for_one, {keepsake::child(negative)})));
        auto inner = tree("inner", strategy::one_for_one, {});
        inner.shutdown = keepsake::shutdown_spec::after(-1ms);
        CHECK(rejected(tree("root", strategy::one_for_one, {keepsake::child(inner)})));
        auto itself = tree("root", strategy::one_for_one, {});
        itself.shutdown = keepsake::shutdown_spec::after(-1s);
        CHECK(rejected(itself));
        auto message = [&] {
            try {
                keepsake::start_supervisor(w.rt, tree("root", strategy::one_for_one, {keepsake::child(negative)}));
            } catch (const keepsake::error& e) {
                return std::string(e.what());
            }
            return std::string();
        }();
        CHECK_THAT(message, Catch::Matchers::Contains("'a'") && Catch::Matchers::Contains("negative"));
    }
    SECTION("a child spec without a maker") {
        keepsake::child_spec bare;
        bare.id = "bare";
        CHECK(rejected(tree("root", strategy::one_for_one, {bare})));
    }
    // Nothing started, nothing registered: the name is free again.
    CHECK(w.events.all.empty());
    CHECK_FALSE(keepsake::whereis_supervisor(w.rt, "root"));

    // The control: the same shapes made valid are accepted.
    auto zero_timeout = worker("c");
    zero_timeout.shutdown = keepsake::shutdown_spec::after(0s);
    auto good = tree("root", strategy::one_for_one,
                     {keepsake::child(significant(worker("a", restart_type::transient))), keepsake::child(worker("b")),
                      keepsake::child(zero_timeout)},
                     {0, 1ms});
    good.flags.auto_shutdown = keepsake::auto_shutdown::any_significant;
    auto s = keepsake::start_supervisor(w.rt, good);
    CHECK(s.is_running());
    // start_child checks the spec too.
    CHECK(code_of([&] { s.start_child(significant(worker("d"))); }) == errc::invalid_argument);
    auto negative = worker("d");
    negative.shutdown = keepsake::shutdown_spec::after(-5ms);
    CHECK(code_of([&] { s.start_child(negative); }) == errc::invalid_argument);
    CHECK_FALSE(info(s, "d"));
}

// --- start and stop ------------------------------------------------------------

TEST_CASE("supervisor: static children start in list order, and start returns when all run", "[supervisor]") {
    world w;
    auto s = keepsake::start_supervisor(
        w.rt, tree("root", strategy::one_for_one,
                   {keepsake::child(worker("a")), keepsake::child(worker("b")), keepsake::child(worker("c"))}));
    CHECK(w.events.children(event_kind::started, "root") == names{"a", "b", "c"});
    for (const char* name : {"a", "b", "c"}) CHECK(w.unit(name).state() == child_state::running);
    CHECK(s.is_running());
    CHECK(ids(s) == names{"c", "b", "a"});
}

TEST_CASE("supervisor: a child failing to start stops the earlier ones newest first and names itself",
          "[supervisor]") {
    world w;
    auto failing = worker("c");
    failing.init = [](count&, const keepsake::start_info&) { throw std::runtime_error("no disk today"); };
    auto spec = tree("root", strategy::one_for_one,
                     {keepsake::child(worker("a")), keepsake::child(worker("b")), keepsake::child(failing),
                      keepsake::child(worker("d"))});
    try {
        keepsake::start_supervisor(w.rt, spec);
        FAIL("start_supervisor should have failed");
    } catch (const keepsake::error& e) {
        CHECK(e.code() == errc::start_failed);
        CHECK_THAT(e.what(), Catch::Matchers::Contains("'c'") && Catch::Matchers::Contains("no disk today"));
    }
    CHECK(w.events.trace("root", {event_kind::started, event_kind::start_failed, event_kind::stopped}) ==
          names{"started a", "started b", "start_failed c", "stopped b", "stopped a"});
    CHECK_FALSE(keepsake::whereis_supervisor(w.rt, "root"));

    // Nothing is left holding the names or the keepers: the same tree,
    // fixed, starts.
    w.settle();
    w.events.clear();
    spec.children[2] = keepsake::child(worker("c"));
    auto s = keepsake::start_supervisor(w.rt, spec);
    CHECK(w.events.children(event_kind::started, "root") == names{"a", "b", "c", "d"});
}

TEST_CASE("supervisor: stop stops children newest first, each to completion before the next", "[supervisor]") {
    world w;
    auto inner = tree("inner", strategy::one_for_one, {keepsake::child(worker("x")), keepsake::child(looper("y"))});
    auto s = keepsake::start_supervisor(
        w.rt, tree("root", strategy::one_for_one,
                   {keepsake::child(worker("a")), keepsake::child(inner), keepsake::child(looper("b"))}));
    names log;
    w.events.also = [&](const seen& e) {
        if (e.kind == event_kind::stopped) log.push_back(e.supervisor + " stopped " + e.child);
    };
    for (const char* name : {"a", "x", "y", "b"}) {
        std::string id = name;
        w.unit(id).on_terminate([&log, id](const keepsake::exit_reason& why, const count&) {
            log.push_back(id + " ended " + keepsake::to_string(why.kind));
        });
    }
    keepsake::stop_supervisor(w.rt, s);
    CHECK(log == names{"b ended shutdown", "root stopped b", "y ended shutdown", "inner stopped y",
                       "x ended shutdown", "inner stopped x", "inner stopped inner", "root stopped inner",
                       "a ended shutdown", "root stopped a", "root stopped root"});
    CHECK_FALSE(s.is_running());
    for (const char* name : {"a", "x", "y", "b"}) {
        CHECK(w.unit(name).state() == child_state::not_running);
        CHECK(code_of([&] { read(w.unit(name)); }) == errc::not_running);
    }
}

TEST_CASE("supervisor: no restart happens while the supervisor is stopping", "[supervisor]") {
    world w;
    auto told_a = std::make_shared<switches>();
    auto b = worker("b");
    auto clock = w.clock;
    // b, stopped first, makes a crash on its own while the supervisor waits
    // for b, then ends.
    b.loop = [told_a, clock](keepsake::unit_context<count>& ctx) {
        while (!ctx.stop_requested()) ctx.sleep_for(1ms);
        told_a->crash = true;
        clock->advance(1ms);
        for (int i = 0; i < 50; ++i) ctx.yield();
    };
    auto s = keepsake::start_supervisor(
        w.rt, tree("root", strategy::one_for_one, {keepsake::child(looper("a", restart_type::permanent, told_a)),
                                                   keepsake::child(b)}));
    keepsake::stop_supervisor(w.rt, s);
    w.settle();
    REQUIRE(w.events.count(event_kind::exited, "a", "a") == 1);  // a did crash by itself
    CHECK(w.events.count(event_kind::started, "root", "a") == 1);
    CHECK(w.events.count(event_kind::restarted, "root", "a") == 0);
    CHECK_FALSE(s.is_running());
    CHECK(w.unit("a").state() == child_state::not_running);
}

// --- restart types -------------------------------------------------------------

TEST_CASE("supervisor: restart types", "[supervisor]") {
    world w;
    auto told = std::make_shared<switches>();

    SECTION("permanent: restarted after a normal exit") {
        auto s = keepsake::start_supervisor(w.rt, tree("root", strategy::one_for_one,
                                                       {keepsake::child(looper("p", restart_type::permanent, told))}));
        told->leave = true;
        nudge(w);
        const seen* exit = w.events.last(event_kind::exited, "root", "p");
        REQUIRE(exit);
        CHECK(exit->reason_kind == exit_kind::normal);
        CHECK(w.events.count(event_kind::restarted, "root", "p") == 1);
        CHECK(instance(s, "p") == 2);
        CHECK(state(s, "p") == child_state::running);
    }
    SECTION("permanent: restarted after a crash") {
        auto s = keepsake::start_supervisor(w.rt, tree("root", strategy::one_for_one, {keepsake::child(worker("p"))}));
        crash(w.unit("p"));
        w.settle();
        const seen* exit = w.events.last(event_kind::exited, "root", "p");
        REQUIRE(exit);
        CHECK(exit->reason_kind == exit_kind::crashed);
        CHECK_THAT(exit->reason, Catch::Matchers::Contains("boom"));
        CHECK(exit->instance == 1);
        const seen* again = w.events.last(event_kind::restarted, "root", "p");
        REQUIRE(again);
        CHECK(again->instance == 2);
        CHECK(state(s, "p") == child_state::running);
        CHECK(read(w.unit("p")) == 0);
    }
    SECTION("transient: restarted after a crash") {
        auto s = keepsake::start_supervisor(
            w.rt, tree("root", strategy::one_for_one, {keepsake::child(looper("t", restart_type::transient, told))}));
        told->crash = true;
        nudge(w);
        // A slow machine (TSan) may take longer than one settle to restart it.
        for (int i = 0; i < 500 && w.events.count(event_kind::restarted, "root", "t") == 0; ++i) w.settle();
        CHECK(w.events.count(event_kind::restarted, "root", "t") == 1);
        CHECK(instance(s, "t") == 2);
        CHECK(state(s, "t") == child_state::running);
    }
    SECTION("transient: not restarted after a normal exit, spec kept, restart_child starts it") {
        auto s = keepsake::start_supervisor(
            w.rt, tree("root", strategy::one_for_one, {keepsake::child(looper("t", restart_type::transient, told))}));
        told->leave = true;
        nudge(w);
        CHECK(w.events.count(event_kind::exited, "root", "t") == 1);
        CHECK(w.events.count(event_kind::restarted, "root", "t") == 0);
        CHECK(state(s, "t") == child_state::not_running);
        CHECK(instance(s, "t") == 1);
        CHECK(code_of([&] { read(w.unit("t")); }) == errc::not_running);
        s.restart_child("t");
        CHECK(state(s, "t") == child_state::running);
        CHECK(instance(s, "t") == 2);
        CHECK(s.stats().restarts == 0);  // a manual restart
    }
    SECTION("temporary: never restarted, its spec dropped") {
        auto s = keepsake::start_supervisor(
            w.rt, tree("root", strategy::one_for_one,
                       {keepsake::child(worker("keep")), keepsake::child(worker("tmp", restart_type::temporary)),
                        keepsake::child(looper("tmp2", restart_type::temporary, told))}));
        crash(w.unit("tmp"));
        told->leave = true;
        nudge(w);
        CHECK(w.events.count(event_kind::exited, "root", "tmp") == 1);
        CHECK(w.events.count(event_kind::exited, "root", "tmp2") == 1);
        CHECK(w.events.count(event_kind::restarted, "root", "tmp") == 0);
        CHECK(w.events.count(event_kind::restarted, "root", "tmp2") == 0);
        CHECK(ids(s) == names{"keep"});
        CHECK(s.count_children().specs == 1);
        CHECK(code_of([&] { s.restart_child("tmp"); }) == errc::not_found);
    }
}

// --- strategies ----------------------------------------------------------------

TEST_CASE("supervisor: one_for_one restarts only the exited child, in its place", "[supervisor]") {
    world w;
    auto s = keepsake::start_supervisor(
        w.rt, tree("root", strategy::one_for_one,
                   {keepsake::child(worker("a")), keepsake::child(worker("b")), keepsake::child(worker("c"))}));
    w.events.clear();
    crash(w.unit("b"));
    w.settle();
    CHECK(instance(s, "a") == 1);
    CHECK(instance(s, "b") == 2);
    CHECK(instance(s, "c") == 1);
    CHECK(w.events.children(event_kind::stopped, "root").empty());
    CHECK(ids(s) == names{"c", "b", "a"});  // b keeps its place
    s.start_child(worker("d"));              // start_child appends
    CHECK(ids(s) == names{"d", "c", "b", "a"});
}

TEST_CASE("supervisor: one_for_all stops the others newest first, then starts all in order", "[supervisor]") {
    world w;
    auto s = keepsake::start_supervisor(
        w.rt, tree("root", strategy::one_for_all,
                   {keepsake::child(worker("a")), keepsake::child(worker("b")), keepsake::child(worker("c")),
                    keepsake::child(worker("t", restart_type::temporary))}));
    w.events.clear();
    crash(w.unit("b"));
    w.settle();
    CHECK(w.events.trace("root", {event_kind::exited, event_kind::stopped, event_kind::restarted}) ==
          names{"exited b", "stopped t", "stopped c", "stopped a", "restarted a", "restarted b", "restarted c"});
    CHECK(ids(s) == names{"c", "b", "a"});  // the temporary one is dropped
    for (const char* name : {"a", "b", "c"}) {
        CHECK(instance(s, name) == 2);
        CHECK(state(s, name) == child_state::running);
    }
    CHECK(s.stats().restarts == 1);
}

TEST_CASE("supervisor: rest_for_one restarts the exited child and those after it", "[supervisor]") {
    world w;
    auto s = keepsake::start_supervisor(
        w.rt, tree("root", strategy::rest_for_one,
                   {keepsake::child(worker("a")), keepsake::child(worker("b")), keepsake::child(worker("c"))}));
    s.start_child(worker("d"));  // appended: after c in the start order
    w.events.clear();
    crash(w.unit("b"));
    w.settle();
    CHECK(w.events.trace("root", {event_kind::exited, event_kind::stopped, event_kind::restarted}) ==
          names{"exited b", "stopped d", "stopped c", "restarted b", "restarted c", "restarted d"});
    CHECK(instance(s, "a") == 1);
    for (const char* name : {"b", "c", "d"}) CHECK(instance(s, name) == 2);
    CHECK(ids(s) == names{"d", "c", "b", "a"});

    // The last child: only itself.
    w.events.clear();
    crash(w.unit("d"));
    w.settle();
    CHECK(w.events.trace("root", {event_kind::stopped, event_kind::restarted}) == names{"restarted d"});
}

// --- restart intensity -----------------------------------------------------------

TEST_CASE("supervisor: restart intensity, the exact rule", "[supervisor]") {
    world w;
    auto s = keepsake::start_supervisor(
        w.rt, tree("root", strategy::one_for_one,
                   {keepsake::child(worker("a")), keepsake::child(worker("b")), keepsake::child(worker("c")),
                    keepsake::child(worker("d"))},
                   {3, 5s}));
    auto a = w.unit("a");
    auto crash_at = [&](keepsake::duration t) {
        w.clock->advance(t - w.clock->now());
        crash(a);
        w.settle();
    };
    crash_at(0s);
    crash_at(1s);
    crash_at(2s);
    CHECK(w.events.count(event_kind::restarted, "root", "a") == 3);
    CHECK(s.is_running());
    CHECK(s.stats().restarts == 3);

    auto gives_up = [&] {
        CHECK(w.events.count(event_kind::restarted, "root", "a") == 3);
        CHECK(w.events.count(event_kind::gave_up, "root", "a") == 1);
        CHECK_FALSE(s.is_running());
        CHECK(s.state() == child_state::not_running);
        // The rest stopped newest first, after the give-up.
        CHECK(w.events.trace("root", {event_kind::gave_up, event_kind::stopped}) ==
              names{"gave_up a", "stopped d", "stopped c", "stopped b", "stopped root"});
    };
    SECTION("the fourth crash inside the period gives up") {
        crash_at(3s);
        gives_up();
    }
    SECTION("an entry exactly one period old still counts") {
        crash_at(5s);
        gives_up();
    }
    SECTION("an entry older than the period is dropped") {
        crash_at(5s + 1ms);
        CHECK(w.events.count(event_kind::restarted, "root", "a") == 4);
        CHECK(w.events.count(event_kind::gave_up, "root", "a") == 0);
        CHECK(s.is_running());
        // Only the entry at 0 went: 1, 2 and 5.001 fill the log.
        crash_at(5s + 1ms);
        CHECK(w.events.count(event_kind::gave_up, "root", "a") == 1);
        CHECK_FALSE(s.is_running());
    }
}

TEST_CASE("supervisor: restart intensity, a sliding window", "[supervisor]") {
    world w;
    auto s = keepsake::start_supervisor(w.rt,
                                        tree("root", strategy::one_for_one, {keepsake::child(worker("a"))}, {3, 5s}));
    // Crashes 2 s apart: never more than three within 5 s.
    for (int i = 0; i < 10; ++i) {
        crash(w.unit("a"));
        w.settle();
        w.clock->advance(2s);
    }
    CHECK(s.is_running());
    CHECK(s.stats().restarts == 10);
    CHECK(w.events.count(event_kind::gave_up, "root", "a") == 0);
}

TEST_CASE("supervisor: with max_restarts 0 the first crash gives up", "[supervisor]") {
    world w;
    auto s = keepsake::start_supervisor(
        w.rt, tree("root", strategy::one_for_one, {keepsake::child(worker("a")), keepsake::child(worker("b"))}, {0, 5s}));
    crash(w.unit("a"));
    w.settle();
    CHECK(w.events.count(event_kind::restarted, "root", "a") == 0);
    CHECK(w.events.count(event_kind::gave_up, "root", "a") == 1);
    CHECK_FALSE(s.is_running());
    CHECK(w.unit("b").state() == child_state::not_running);
}

TEST_CASE("supervisor: a group restart counts once", "[supervisor]") {
    world w;
    const strategy how = GENERATE(strategy::one_for_all, strategy::rest_for_one);
    auto s = keepsake::start_supervisor(
        w.rt, tree("root", how,
                   {keepsake::child(worker("a")), keepsake::child(worker("b")), keepsake::child(worker("c"))},
                   {2, 5s}));
    crash(w.unit("a"));  // restarts a, b, c: one restart
    w.settle();
    w.clock->advance(1s);
    crash(w.unit("a"));
    w.settle();
    CHECK(s.is_running());
    CHECK(s.stats().restarts == 2);
    CHECK(instance(s, "c") == 3);
    w.clock->advance(1s);
    crash(w.unit("a"));
    w.settle();
    CHECK_FALSE(s.is_running());
    CHECK(w.events.count(event_kind::gave_up, "root", "a") == 1);
}

TEST_CASE("supervisor: manual start, restart and terminate never count", "[supervisor]") {
    world w;
    auto s = keepsake::start_supervisor(
        w.rt, tree("root", strategy::one_for_one, {keepsake::child(worker("a")), keepsake::child(worker("b"))}, {1, 5s}));
    for (int i = 0; i < 5; ++i) {
        s.terminate_child("a");
        s.restart_child("a");
        s.terminate_child("b");
        s.restart_child("b");
        s.start_child(worker("c"));
        s.terminate_child("c");
        s.delete_child("c");
    }
    w.settle();
    CHECK(s.stats().restarts == 0);
    CHECK(w.events.count(event_kind::restarted, "root", "a") == 0);  // terminate is not an exit to restart
    crash(w.unit("a"));
    w.settle();
    CHECK(s.is_running());
    CHECK(s.stats().restarts == 1);
    crash(w.unit("a"));
    w.settle();
    CHECK_FALSE(s.is_running());
}

TEST_CASE("supervisor: a failed start during a restart counts and is retried", "[supervisor]") {
    world w;
    auto failures = std::make_shared<int>(0);
    auto a = worker("a");
    a.init = [failures](count&, const keepsake::start_info&) {
        if (*failures > 0) {
            --*failures;
            throw std::runtime_error("init failed");
        }
    };
    auto s = keepsake::start_supervisor(
        w.rt, tree("root", strategy::one_for_one, {keepsake::child(a), keepsake::child(worker("b"))}, {3, 5s}));

    SECTION("a start that fails once") {
        *failures = 1;
        crash(w.unit("a"));
        // The failed start is handled before this call; the retry is queued
        // behind it: a is listed as restarting.
        CHECK(state(s, "a") == child_state::restarting);
        w.settle();
        CHECK(w.events.count(event_kind::start_failed, "root", "a") == 1);
        CHECK(w.events.count(event_kind::restarted, "root", "a") == 1);
        CHECK(s.stats().restarts == 2);
        CHECK(s.is_running());
        CHECK(state(s, "a") == child_state::running);
        CHECK(read(w.unit("a")) == 0);
    }
    SECTION("a start that always fails uses up the budget, then gives up") {
        *failures = 1000;
        crash(w.unit("a"));
        w.settle();
        CHECK(w.events.count(event_kind::start_failed, "root", "a") == 3);
        CHECK(w.events.count(event_kind::restarted, "root", "a") == 0);
        CHECK(w.events.count(event_kind::gave_up, "root", "a") == 1);
        CHECK(s.stats().restarts == 3);
        CHECK_FALSE(s.is_running());
        CHECK(w.events.children(event_kind::stopped, "root") == names{"b", "root"});
    }
}

// --- escalation --------------------------------------------------------------------

TEST_CASE("supervisor: a child supervisor that gives up escalates to its parent", "[supervisor]") {
    world w;
    auto mid = tree("mid", strategy::one_for_one, {keepsake::child(worker("a")), keepsake::child(worker("b"))}, {1, 5s});

    SECTION("permanent: restarted with its static children and a fresh restart log, counted by the parent") {
        auto s = keepsake::start_supervisor(
            w.rt, tree("root", strategy::one_for_one, {keepsake::child(mid), keepsake::child(worker("c"))}, {3, 5s}));
        auto inner = w.sup("mid");
        inner.start_child(worker("extra"));
        crash(w.unit("a"));  // mid restarts a
        w.settle();
        CHECK(inner.stats().restarts == 1);
        w.events.clear();
        crash(w.unit("a"));  // mid gives up
        w.settle();
        CHECK(w.events.trace("mid", {event_kind::gave_up, event_kind::stopped}) ==
              names{"gave_up a", "stopped extra", "stopped b", "stopped mid"});
        const seen* exit = w.events.last(event_kind::exited, "root", "mid");
        REQUIRE(exit);
        CHECK(exit->reason_kind == exit_kind::shutdown);
        CHECK(w.events.count(event_kind::restarted, "root", "mid") == 1);
        CHECK(s.stats().restarts == 1);
        CHECK(s.is_running());
        CHECK(instance(s, "mid") == 2);
        CHECK(instance(s, "c") == 1);
        CHECK(inner.is_running());
        CHECK(ids(inner) == names{"b", "a"});  // static children only
        CHECK(w.events.children(event_kind::started, "mid") == names{"a", "b"});
        // A fresh log: one more crash is restarted, not a give-up.
        crash(w.unit("a"));
        w.settle();
        CHECK(inner.is_running());
        CHECK(instance(s, "mid") == 2);
        CHECK(state(inner, "a") == child_state::running);
    }
    SECTION("the parent's budget: a parent with max_restarts 0 gives up in turn") {
        auto s = keepsake::start_supervisor(
            w.rt, tree("root", strategy::one_for_one, {keepsake::child(mid), keepsake::child(worker("c"))}, {0, 5s}));
        crash(w.unit("a"));
        w.settle();
        crash(w.unit("a"));
        w.settle();
        CHECK(w.events.count(event_kind::gave_up, "mid", "a") == 1);
        CHECK(w.events.count(event_kind::gave_up, "root", "mid") == 1);
        CHECK_FALSE(s.is_running());
        CHECK(w.unit("c").state() == child_state::not_running);
    }
    SECTION("transient: not restarted (giving up is a shutdown)") {
        mid.restart = restart_type::transient;
        auto s = keepsake::start_supervisor(
            w.rt, tree("root", strategy::one_for_one, {keepsake::child(mid), keepsake::child(worker("c"))}, {3, 5s}));
        crash(w.unit("a"));
        w.settle();
        crash(w.unit("a"));
        w.settle();
        CHECK(w.events.count(event_kind::gave_up, "mid", "a") == 1);
        CHECK(w.events.count(event_kind::exited, "root", "mid") == 1);
        CHECK(w.events.count(event_kind::restarted, "root", "mid") == 0);
        CHECK(s.stats().restarts == 0);
        CHECK(s.is_running());
        CHECK(state(s, "mid") == child_state::not_running);
        CHECK(state(s, "c") == child_state::running);
        CHECK(code_of([&] { read(w.unit("b")); }) == errc::not_running);
    }
}

TEST_CASE("supervisor: a restarted supervisor frees the names of the children it dropped, even while handles live",
          "[supervisor]") {
    world w;
    auto mid = tree("mid", strategy::one_for_one, {keepsake::child(worker("a"))}, {0, 5s});
    auto s = keepsake::start_supervisor(w.rt, tree("root", strategy::one_for_one, {keepsake::child(mid)}));
    auto inner = w.sup("mid");
    auto old_x = inner.start_child(worker("x"));
    auto sub = tree("sub", strategy::one_for_one, {keepsake::child(worker("y"))});
    inner.start_child(keepsake::child(sub));
    auto old_sub = w.sup("sub");
    auto old_y = w.unit("y");
    old_x.cast([](count& st) { st.value = 42; });
    CHECK(read(old_x) == 42);
    crash(w.unit("a"));  // mid gives up; root restarts it with "a" only
    w.settle();
    REQUIRE(w.events.count(event_kind::restarted, "root", "mid") == 1);
    CHECK(ids(inner) == names{"a"});
    CHECK(old_x.state() == child_state::not_running);
    CHECK(code_of([&] { read(old_x); }) == errc::not_running);
    CHECK_FALSE(keepsake::whereis<count>(w.rt, "x"));

    // The handles do not hold the names (nor x's keeper): they start again.
    auto new_x = inner.start_child(worker("x"));
    CHECK(read(new_x) == 42);  // the state was committed in the segment
    inner.start_child(keepsake::child(sub));
    CHECK(w.sup("sub").shared_core() != old_sub.shared_core());
    CHECK(w.unit("y").shared_core() != old_y.shared_core());
    CHECK(code_of([&] { read(old_x); }) == errc::not_running);
}

TEST_CASE("supervisor: a name held by a child that is not running is already_present, never already_started",
          "[supervisor]") {
    world w;
    auto told = std::make_shared<switches>();
    auto a = keepsake::start_supervisor(
        w.rt, tree("a", strategy::one_for_one,
                   {keepsake::child(looper("t", restart_type::transient, told)), keepsake::child(worker("r"))}));
    auto b = keepsake::start_supervisor(w.rt, tree("b", strategy::one_for_one, {}));
    auto refusal = [&](const std::string& id) {
        try {
            b.start_child(worker(id));
        } catch (const keepsake::error& e) {
            return std::make_pair(e.code(), std::string(e.what()));
        }
        return std::make_pair(errc::invalid_argument, std::string("no error"));
    };
    const auto running = refusal("r");
    CHECK(running.first == errc::already_started);
    CHECK_THAT(running.second, Catch::Matchers::Contains("already running"));

    told->leave = true;  // t ends normally: kept by a, not running
    nudge(w);
    REQUIRE(state(a, "t") == child_state::not_running);
    const auto kept = refusal("t");
    CHECK(kept.first == errc::already_present);
    CHECK_THAT(kept.second, Catch::Matchers::Contains("not running"));
    CHECK_THAT(kept.second, !Catch::Matchers::Contains("started") && !Catch::Matchers::Contains("already running"));
    a.delete_child("t");
    b.start_child(worker("t"));  // free once its spec is deleted
    CHECK(state(b, "t") == child_state::running);
}

// --- ignore and exit(shutdown) ---------------------------------------------------------

namespace {

// A worker whose init declines while *declines is true: OTP's `ignore`.
spec_t declining(const std::string& name, restart_type restart, std::shared_ptr<bool> declines) {
    spec_t spec = worker(name, restart);
    spec.init = [declines](count&, const keepsake::start_info&) {
        if (*declines) throw keepsake::ignore_start("not needed today");
    };
    return spec;
}

} // namespace

TEST_CASE("supervisor: an init may decline to start (ignore): kept not running, or dropped if temporary",
          "[supervisor]") {
    world w;
    auto declines = std::make_shared<bool>(true);
    auto s = keepsake::start_supervisor(
        w.rt, tree("root", strategy::one_for_one,
                   {keepsake::child(worker("first")), keepsake::child(declining("p", restart_type::permanent, declines)),
                    keepsake::child(declining("t", restart_type::transient, declines)),
                    keepsake::child(declining("tmp", restart_type::temporary, declines)),
                    keepsake::child(worker("last"))}));
    CHECK(s.is_running());
    CHECK(w.events.children(event_kind::started, "root") == names{"first", "last"});
    CHECK(ids(s) == names{"last", "t", "p", "first"});  // the temporary one is dropped
    CHECK(state(s, "p") == child_state::not_running);
    CHECK(state(s, "t") == child_state::not_running);
    CHECK(s.count_children().active == 2);
    CHECK_FALSE(keepsake::whereis<count>(w.rt, "p"));
    CHECK_FALSE(keepsake::whereis<count>(w.rt, "tmp"));

    // start_child: kept (not running) for a permanent child, dropped for a
    // temporary one, whose handle is then empty.
    auto later = s.start_child(declining("later", restart_type::permanent, declines));
    REQUIRE(later);
    CHECK(later.state() == child_state::not_running);
    CHECK(code_of([&] { read(later); }) == errc::not_running);
    CHECK_FALSE(s.start_child(declining("gone", restart_type::temporary, declines)));
    CHECK_FALSE(info(s, "gone"));

    // restart_child starts it once its init agrees.
    CHECK(code_of([&] { s.restart_child("p"); }) == std::nullopt);  // declined again, no error
    CHECK(state(s, "p") == child_state::not_running);
    *declines = false;
    s.restart_child("p");
    CHECK(state(s, "p") == child_state::running);
    CHECK(read(w.unit("p")) == 0);
    CHECK(s.stats().restarts == 0);

    SECTION("a dynamic supervisor does not add a child that declines") {
        auto spec = tree("dyn", strategy::one_for_one, {});
        spec.flags.dynamic = true;
        auto dyn = keepsake::start_supervisor(w.rt, spec);
        *declines = true;
        CHECK_FALSE(dyn.start_child(declining("d", restart_type::permanent, declines)));
        CHECK(dyn.which_children().empty());
    }
    SECTION("an automatic restart that declines leaves the child not running, without a give-up") {
        *declines = true;
        crash(w.unit("p"));
        w.settle();
        CHECK(w.events.count(event_kind::exited, "root", "p") == 1);
        CHECK(w.events.count(event_kind::restarted, "root", "p") == 0);
        CHECK(state(s, "p") == child_state::not_running);
        CHECK(s.is_running());
    }
    SECTION("a unit's own restart after a crash that declines ends it as a normal exit") {
        auto inner = worker("inner", restart_type::transient);
        inner.intensity = {5, 5s};
        inner.init = [](count&, const keepsake::start_info& started) {
            if (started.restarts != 0) throw keepsake::ignore_start("once is enough");
        };
        s.start_child(inner);
        crash(w.unit("inner"));
        w.settle();
        const seen* exit = w.events.last(event_kind::exited, "root", "inner");
        REQUIRE(exit);
        CHECK(exit->reason_kind == exit_kind::normal);
        CHECK(exit->reason == "once is enough");
        CHECK(state(s, "inner") == child_state::not_running);  // transient: not restarted
    }
}

TEST_CASE("supervisor: start_unit with an init that declines gives a unit that is not running", "[supervisor]") {
    world w;
    auto declines = std::make_shared<bool>(true);
    auto u = keepsake::start_unit(w.rt, declining("alone", restart_type::permanent, declines));
    REQUIRE(u);
    CHECK(u.state() == child_state::not_running);
    CHECK_FALSE(keepsake::whereis<count>(w.rt, "alone"));
    CHECK(w.events.all.empty());  // not started, so no event
}

TEST_CASE("supervisor: a worker ends itself with reason shutdown (stop_self): a transient one stays down",
          "[supervisor]") {
    world w;
    auto quitting = [](const std::string& name, restart_type restart) {
        auto spec = worker(name, restart);
        spec.intensity = {5, 5s};
        return spec;
    };
    auto loop_quits = std::make_shared<bool>(false);
    auto loop = quitting("loop", restart_type::transient);
    loop.loop = [loop_quits](keepsake::unit_context<count>& ctx) {
        while (!ctx.stop_requested()) {
            if (*loop_quits) ctx.stop_self();
            ctx.sleep_for(1ms);
        }
    };
    auto s = keepsake::start_supervisor(
        w.rt, tree("root", strategy::one_for_one,
                   {keepsake::child(quitting("t", restart_type::transient)),
                    keepsake::child(quitting("p", restart_type::permanent)), keepsake::child(loop)}));
    auto last_words = [](count& st, keepsake::unit_context<count>& ctx) {
        st.value = 9;
        ctx.stop_self();
        return st.value;  // answered, and committed, before the worker ends
    };
    for (const char* id : {"t", "p"}) {
        INFO(id);
        auto u = w.unit(id);
        CHECK(u.call(last_words) == 9);
        w.settle();
        const seen* exit = w.events.last(event_kind::exited, "root", id);
        REQUIRE(exit);
        CHECK(exit->reason_kind == exit_kind::shutdown);
        CHECK(w.events.count(event_kind::gave_up, id, id) == 0);
    }
    CHECK(state(s, "t") == child_state::not_running);
    CHECK(w.events.count(event_kind::restarted, "root", "t") == 0);
    CHECK(state(s, "p") == child_state::running);  // permanent: restarted, from the commit
    CHECK(w.events.count(event_kind::restarted, "root", "p") == 1);
    CHECK(read(w.unit("p")) == 9);
    CHECK(s.stats().restarts == 1);

    *loop_quits = true;
    nudge(w);
    const seen* exit = w.events.last(event_kind::exited, "root", "loop");
    REQUIRE(exit);
    CHECK(exit->reason_kind == exit_kind::shutdown);
    CHECK(state(s, "loop") == child_state::not_running);
}

// --- auto_shutdown -------------------------------------------------------------------

TEST_CASE("supervisor: auto_shutdown", "[supervisor]") {
    world w;
    auto one = std::make_shared<switches>();
    auto two = std::make_shared<switches>();
    auto significant = [](spec_t spec) {
        spec.significant = true;
        return spec;
    };
    auto make = [&](keepsake::auto_shutdown rule, strategy how = strategy::one_for_one) {
        auto spec = tree("root", how,
                         {keepsake::child(worker("other")),
                          keepsake::child(significant(looper("s1", restart_type::transient, one))),
                          keepsake::child(significant(looper("s2", restart_type::transient, two)))});
        spec.flags.auto_shutdown = rule;
        return keepsake::start_supervisor(w.rt, spec);
    };

    SECTION("any_significant: one significant child exiting normally stops the supervisor") {
        auto s = make(keepsake::auto_shutdown::any_significant);
        one->leave = true;
        nudge(w);
        CHECK_FALSE(s.is_running());
        CHECK(w.events.children(event_kind::stopped, "root") == names{"s2", "other", "root"});
        CHECK(w.events.count(event_kind::restarted, "root", "s1") == 0);
    }
    SECTION("any_significant: a temporary significant child ending any way stops it") {
        auto spec = tree("root", strategy::one_for_one,
                         {keepsake::child(worker("other")), keepsake::child(significant(worker("tmp", restart_type::temporary)))});
        spec.flags.auto_shutdown = keepsake::auto_shutdown::any_significant;
        auto s = keepsake::start_supervisor(w.rt, spec);
        crash(w.unit("tmp"));
        w.settle();
        CHECK_FALSE(s.is_running());
    }
    SECTION("a significant child that crashes is restarted, no shutdown") {
        auto s = make(keepsake::auto_shutdown::any_significant);
        one->crash = true;
        nudge(w);
        CHECK(s.is_running());
        CHECK(w.events.count(event_kind::restarted, "root", "s1") == 1);
    }
    SECTION("all_significant: only when the last significant child ended") {
        auto s = make(keepsake::auto_shutdown::all_significant);
        one->leave = true;
        nudge(w);
        CHECK(s.is_running());
        CHECK(state(s, "s1") == child_state::not_running);
        CHECK(state(s, "other") == child_state::running);
        two->leave = true;
        nudge(w);
        CHECK_FALSE(s.is_running());
        CHECK(w.events.children(event_kind::stopped, "root") == names{"other", "root"});
    }
    SECTION("terminate_child of significant children never triggers it") {
        const auto rule = GENERATE(keepsake::auto_shutdown::any_significant, keepsake::auto_shutdown::all_significant);
        auto s = make(rule);
        s.terminate_child("s1");
        s.terminate_child("s2");
        w.settle();
        CHECK(s.is_running());
        CHECK(state(s, "other") == child_state::running);
    }
    SECTION("siblings stopped by a group restart never trigger it") {
        auto s = make(keepsake::auto_shutdown::any_significant, strategy::one_for_all);
        crash(w.unit("other"));
        w.settle();
        CHECK(s.is_running());
        CHECK(instance(s, "s1") == 2);
        CHECK(instance(s, "s2") == 2);
    }
}

// --- management calls ------------------------------------------------------------------

TEST_CASE("supervisor: management calls and their errors", "[supervisor]") {
    world w;
    auto s = keepsake::start_supervisor(
        w.rt, tree("root", strategy::one_for_one, {keepsake::child(worker("a")), keepsake::child(worker("b"))}));

    CHECK(code_of([&] { s.start_child(worker("a")); }) == errc::already_started);
    s.terminate_child("a");
    CHECK(state(s, "a") == child_state::not_running);
    CHECK(w.unit("a").state() == child_state::not_running);
    s.terminate_child("a");  // idempotent
    w.settle();
    CHECK(state(s, "a") == child_state::not_running);  // kept, not restarted
    CHECK(code_of([&] { s.start_child(worker("a")); }) == errc::already_present);
    CHECK(code_of([&] { s.restart_child("b"); }) == errc::child_running);
    CHECK(code_of([&] { s.restart_child("nobody"); }) == errc::not_found);
    CHECK(code_of([&] { s.terminate_child("nobody"); }) == errc::not_found);
    CHECK(code_of([&] { s.delete_child("nobody"); }) == errc::not_found);
    CHECK(code_of([&] { s.delete_child("b"); }) == errc::child_running);
    s.restart_child("a");
    CHECK(state(s, "a") == child_state::running);
    CHECK(instance(s, "a") == 2);

    auto c = s.start_child(worker("c"));
    REQUIRE(c);
    c.cast([](count& st) { ++st.value; });
    CHECK(read(c) == 1);
    s.start_child(keepsake::child(tree("sub", strategy::one_for_one, {keepsake::child(worker("x"))})));
    s.start_child(worker("tmp", restart_type::temporary));
    s.terminate_child("b");
    const auto listed = s.which_children();
    REQUIRE(listed.size() == 5);
    CHECK(ids(s) == names{"tmp", "sub", "c", "b", "a"});
    CHECK(listed[0].state == child_state::running);
    CHECK(listed[1].kind == keepsake::child_kind::supervisor);
    CHECK(listed[2].kind == keepsake::child_kind::worker);
    CHECK(listed[3].state == child_state::not_running);
    CHECK(listed[4].state == child_state::running);

    auto counts = s.count_children();
    CHECK(counts.specs == 5);
    CHECK(counts.active == 4);
    CHECK(counts.workers == 4);
    CHECK(counts.supervisors == 1);

    s.terminate_child("tmp");  // a temporary child's spec goes
    CHECK_FALSE(info(s, "tmp"));
    s.delete_child("b");
    CHECK_FALSE(info(s, "b"));
    CHECK(code_of([&] { s.restart_child("b"); }) == errc::not_found);
    s.start_child(worker("b"));  // the id is free again
    CHECK(ids(s) == names{"b", "sub", "c", "a"});
    CHECK(s.stats().restarts == 0);
}

TEST_CASE("supervisor: a dynamic supervisor adds children up to max_children", "[supervisor]") {
    world w;
    auto spec = tree("dyn", strategy::one_for_one, {});
    spec.flags.dynamic = true;
    spec.flags.max_children = 2;
    auto s = keepsake::start_supervisor(w.rt, spec);
    CHECK(s.which_children().empty());
    s.start_child(worker("x"));
    s.start_child(worker("y"));
    CHECK(code_of([&] { s.start_child(worker("z")); }) == errc::limit_reached);
    CHECK(ids(s) == names{"y", "x"});
    crash(w.unit("x"));  // one_for_one
    w.settle();
    CHECK(instance(s, "x") == 2);
    CHECK(instance(s, "y") == 1);
    CHECK(s.count_children().specs == 2);
}

// --- state keeping ---------------------------------------------------------------------

TEST_CASE("supervisor: committed state survives group restarts and a restart of the tree above", "[supervisor]") {
    world w;
    auto mid = tree("mid", strategy::one_for_all, {keepsake::child(worker("a")), keepsake::child(worker("b"))}, {1, 5s});
    auto s = keepsake::start_supervisor(w.rt, tree("root", strategy::one_for_one, {keepsake::child(mid)}));
    auto a = w.unit("a");
    for (int i = 0; i < 3; ++i) a.cast([](count& st) { ++st.value; });
    CHECK(read(a) == 3);
    // A change inside the call that crashed is lost.
    REQUIRE_THROWS_AS(a.call([](count& st) -> int {
        st.value += 100;
        throw std::runtime_error("boom");
    }),
                      keepsake::worker_crashed);
    w.settle();
    CHECK(w.events.count(event_kind::restarted, "mid", "a") == 1);  // that crash was a group restart
    CHECK(w.sup("mid").stats().restarts == 1);
    CHECK(a.stats().instance == 2);
    CHECK(read(a) == 3);

    a.cast([](count& st) { ++st.value; });
    CHECK(read(a) == 4);
    crash(w.unit("b"));  // mid gives up; root restarts it
    w.settle();
    CHECK(w.events.count(event_kind::restarted, "root", "mid") == 1);
    CHECK(a.stats().instance == 3);
    CHECK(read(a) == 4);
    CHECK(s.is_running());
}

TEST_CASE("supervisor: the keeper outlives terminate/restart and delete/start of its child", "[supervisor]") {
    world w;
    auto s = keepsake::start_supervisor(w.rt, tree("root", strategy::one_for_one, {keepsake::child(worker("a"))}));
    // (No handle is kept across delete_child: a live handle keeps the old
    // unit, its name and its keeper, and the id could not be started again.)
    w.unit("a").cast([](count& st) { st.value = 7; });
    CHECK(read(w.unit("a")) == 7);
    s.terminate_child("a");
    s.restart_child("a");
    CHECK(read(w.unit("a")) == 7);
    s.terminate_child("a");
    s.delete_child("a");
    w.settle();
    // Deleting the child spec is not deleting the state: only the key's
    // removal from the segment is.
    CHECK(read(s.start_child(worker("a"))) == 7);
    s.terminate_child("a");
    s.delete_child("a");
    w.settle();
    CHECK(w.seg.remove_key("a"));
    CHECK(read(s.start_child(worker("a"))) == 0);
}

TEST_CASE("supervisor: after its supervisor gave up, a unit fails calls at once", "[supervisor]") {
    world w;
    auto a = worker("a");
    auto b = worker("b");
    a.call_timeout = b.call_timeout = 3s;
    auto s = keepsake::start_supervisor(
        w.rt, tree("root", strategy::one_for_one, {keepsake::child(a), keepsake::child(b)}, {0, 5s}));
    crash(w.unit("a"));
    w.settle();
    REQUIRE_FALSE(s.is_running());
    for (const char* name : {"a", "b"}) {
        INFO(name);
        auto u = w.unit(name);
        CHECK(u.state() == child_state::not_running);
        const auto started = std::chrono::steady_clock::now();
        CHECK(code_of([&] { read(u); }) == errc::not_running);
        CHECK(std::chrono::steady_clock::now() - started < 1s);
        CHECK(code_of([&] { u.cast([](count& st) { ++st.value; }); }) == errc::not_running);
    }
    CHECK(code_of([&] { s.which_children(); }) == errc::not_running);
}

// --- shutdown --------------------------------------------------------------------------

namespace {

// A loop worker that never looks at stop requests, only suspends.
spec_t stubborn(const std::string& name, keepsake::shutdown_spec how) {
    spec_t spec = worker(name);
    spec.shutdown = how;
    spec.loop = [](keepsake::unit_context<count>& ctx) {
        for (;;) ctx.yield();
    };
    return spec;
}

struct ending {
    std::optional<exit_kind> kind;
    keepsake::duration at{};
};

void watch(world& w, const std::string& name, ending& into) {
    auto clock = w.clock;
    w.unit(name).on_terminate([&into, clock](const keepsake::exit_reason& why, const count&) {
        into.kind = why.kind;
        into.at = clock->now();
    });
}

} // namespace

TEST_CASE("supervisor: a child that ignores the stop request is forced after its shutdown timeout",
          "[supervisor]") {
    world w;
    auto s = keepsake::start_supervisor(
        w.rt, tree("root", strategy::one_for_one,
                   {keepsake::child(looper("polite")),
                    keepsake::child(stubborn("stubborn", keepsake::shutdown_spec::after(5s)))}));
    ending polite, forced;
    watch(w, "polite", polite);
    watch(w, "stubborn", forced);
    // The stop blocks this thread: a fiber moves the clock meanwhile.
    bool done = false;
    w.rt.spawn([&] {
        while (!done) {
            w.clock->advance(100ms);
            boost::this_fiber::yield();
        }
    });
    const auto began = w.clock->now();
    keepsake::stop_supervisor(w.rt, s);
    done = true;
    w.settle();
    REQUIRE(forced.kind);
    CHECK(*forced.kind == exit_kind::killed);
    CHECK(forced.at - began >= 5s);
    CHECK(forced.at - began < 6s);
    REQUIRE(polite.kind);
    CHECK(*polite.kind == exit_kind::shutdown);
    CHECK(w.events.children(event_kind::stopped, "root") == names{"stubborn", "polite", "root"});
}

TEST_CASE("supervisor: brutal_kill stops a child at once", "[supervisor]") {
    world w;
    auto s = keepsake::start_supervisor(
        w.rt, tree("root", strategy::one_for_one,
                   {keepsake::child(stubborn("stubborn", keepsake::shutdown_spec::brutal_kill()))}));
    ending forced;
    watch(w, "stubborn", forced);
    // Moves the clock only if the stop still waits after many turns.
    bool done = false;
    bool needed_time = false;
    w.rt.spawn([&] {
        for (int i = 0; i < 20000 && !done; ++i) boost::this_fiber::yield();
        while (!done) {
            needed_time = true;
            w.clock->advance(1s);
            boost::this_fiber::yield();
        }
    });
    keepsake::stop_supervisor(w.rt, s);
    done = true;
    w.settle();
    CHECK_FALSE(needed_time);
    REQUIRE(forced.kind);
    CHECK(*forced.kind == exit_kind::killed);
    CHECK(forced.at == keepsake::duration::zero());
}

TEST_CASE("supervisor: shutdown timeout on the real clock", "[supervisor]") {
    world w(false);
    auto s = keepsake::start_supervisor(
        w.rt, tree("root", strategy::one_for_one,
                   {keepsake::child(stubborn("stubborn", keepsake::shutdown_spec::after(50ms)))}));
    std::optional<exit_kind> kind;
    w.unit("stubborn").on_terminate([&](const keepsake::exit_reason& why, const count&) { kind = why.kind; });
    const auto began = std::chrono::steady_clock::now();
    keepsake::stop_supervisor(w.rt, s);
    const auto took = std::chrono::steady_clock::now() - began;
    REQUIRE(kind);
    CHECK(*kind == exit_kind::killed);
    CHECK(took >= 50ms);
    CHECK(took < 3s);
}

// --- runtime::wait: how a program's supervision ended ---------------------

namespace {

// A loop unit that crashes on its own after a short real-time sleep.
spec_t crasher(const std::string& name) {
    spec_t spec = worker(name);
    spec.loop = [](keepsake::unit_context<count>& ctx) {
        ctx.sleep_for(2ms);
        throw std::runtime_error("crasher boom");
    };
    return spec;
}

// A runtime on a thread of its own and the real clock: the test thread
// waits while the fibers run.
struct threaded_world {
    shm_dir dir;
    keepsake::segment seg{"waiting", dir.options()};
    keepsake::runtime rt{keepsake::runtime_options{1, nullptr, 128 * 1024, &seg}};
};

} // namespace

TEST_CASE("runtime::wait: a root supervisor that gives up ends the wait as crashed, with its message", "[wait]") {
    threaded_world w;
    auto s = keepsake::start_supervisor(
        w.rt, tree("root", strategy::one_for_one, {keepsake::child(crasher("a")), keepsake::child(worker("b"))},
                   {2, 60s}));
    const keepsake::exit_reason ended = w.rt.wait();
    CHECK(ended.kind == exit_kind::crashed);
    CHECK(ended.what.find("supervisor 'root' gave up") != std::string::npos);
    CHECK(keepsake::exit_code(ended) == 1);
    CHECK_FALSE(s.is_running());
    // The handle says the same, and so does a second wait.
    CHECK(s.wait().kind == exit_kind::crashed);
    CHECK(s.wait().what == ended.what);
    CHECK(w.rt.wait().what == ended.what);
}

TEST_CASE("runtime::wait: roots stopped from another thread end the wait normally", "[wait]") {
    threaded_world w;
    auto s = keepsake::start_supervisor(w.rt, tree("root", strategy::one_for_one, {keepsake::child(worker("a"))}));
    auto u = keepsake::start_unit(w.rt, worker("alone"));
    std::thread stopper([&] {
        std::this_thread::sleep_for(20ms);
        keepsake::stop_unit(w.rt, u);
        keepsake::stop_supervisor(w.rt, s);
    });
    const keepsake::exit_reason ended = w.rt.wait();
    stopper.join();
    CHECK(ended.is_normal());
    CHECK(keepsake::exit_code(ended) == 0);
    CHECK(s.wait().kind == exit_kind::shutdown);
    CHECK(u.wait().kind == exit_kind::shutdown);
}

TEST_CASE("runtime::wait: the first root to end abnormally is the answer, even after others stop", "[wait]") {
    threaded_world w;
    auto s = keepsake::start_supervisor(w.rt, tree("root", strategy::one_for_one, {keepsake::child(worker("a"))}));
    auto u = keepsake::start_unit(w.rt, crasher("alone"));  // gives up at its first crash
    const keepsake::exit_reason alone = u.wait();
    CHECK(alone.kind == exit_kind::crashed);
    CHECK(s.is_running());
    keepsake::stop_supervisor(w.rt, s);
    const keepsake::exit_reason ended = w.rt.wait();
    CHECK(ended.kind == exit_kind::crashed);
    CHECK(ended.what == alone.what);
}

TEST_CASE("runtime::wait: at once without roots, and a runtime's shutdown counts as normal", "[wait]") {
    threaded_world w;
    CHECK(w.rt.wait().kind == exit_kind::normal);
    auto s = keepsake::start_supervisor(w.rt, tree("root", strategy::one_for_one, {keepsake::child(worker("a"))}));
    w.rt.shutdown();
    CHECK(w.rt.wait().is_normal());
    CHECK(s.wait().kind == exit_kind::shutdown);
}

TEST_CASE("runtime::wait: a pumped runtime runs its fibers while it waits", "[wait]") {
    world w(false);  // the real clock: the crasher's sleep ends by itself
    auto s = keepsake::start_supervisor(w.rt, tree("root", strategy::one_for_one, {keepsake::child(crasher("a"))},
                                                   {1, 60s}));
    const keepsake::exit_reason ended = w.rt.wait();
    CHECK(ended.kind == exit_kind::crashed);
    CHECK(w.events.count(event_kind::restarted, "root", "a") == 1);
    CHECK(w.events.count(event_kind::gave_up, "root", "a") == 1);
    CHECK(s.wait().what == ended.what);
}

TEST_CASE("runtime::wait: refused where it could never end", "[wait]") {
    SECTION("a pumped runtime, from another thread than its pumping one") {
        world w;
        std::optional<errc> refused;
        std::thread other([&] { refused = code_of([&] { w.rt.wait(); }); });
        other.join();
        CHECK(refused == errc::invalid_argument);
    }
    SECTION("a threaded runtime, from one of its own fibers") {
        threaded_world w;
        std::atomic<int> refused{0};
        std::atomic<bool> done{false};
        w.rt.spawn([&] {
            if (code_of([&] { w.rt.wait(); }) == errc::invalid_argument) refused = 1;
            done = true;
        });
        while (!done) std::this_thread::sleep_for(1ms);
        CHECK(refused == 1);
    }
    SECTION("a child supervisor's handle") {
        world w;
        auto top = keepsake::start_supervisor(
            w.rt, tree("top", strategy::one_for_one,
                       {keepsake::child(tree("inner", strategy::one_for_one, {keepsake::child(worker("a"))}))}));
        auto inner = w.sup("inner");
        CHECK(code_of([&] { inner.wait(); }) == errc::invalid_argument);
    }
}

}  // namespace supervisor_tests
