// The unit registry (issue 12): unit types by name, the persisted registry,
// resume after SIGKILL and after a reboot, key lifecycles, poison-state
// protection (crash threshold, fatal signals, circuit breaker), info.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <cereal/types/string.hpp>

#include <keepsake/keepsake.hpp>
#include <keepsake/stores/sqlite_store.hpp>

#include "support.hpp"

namespace registry_tests {  // a unity build's sources keep their names apart (tests/CMakeLists.txt)

using namespace std::chrono_literals;
using keepsake::errc;
using keepsake::event_kind;
using keepsake::unit_status;
using test_support::shm_dir;

namespace {

struct tally {
    std::uint64_t value = 0;
};
struct gauge {
    std::uint64_t value = 0;
    std::uint32_t reads = 0;
};
struct label {
    std::uint64_t value = 0;
    std::string text;
    template <class Archive>
    void serialize(Archive& archive) {
        archive(value, text);
    }
};

// A message every test type answers: add one, return the new value.
struct bump {};
// A message that makes the worker throw.
struct explode {};

template <class State>
struct counter_handler {
    std::uint64_t operator()(State& state, const bump&) const { return ++state.value; }
    std::uint64_t operator()(State& state, const explode&) const {
        (void)state;
        throw std::runtime_error("exploded on purpose");
    }
};

template <class State>
keepsake::unit_spec<State, counter_handler<State>> counter_spec(const std::string& key) {
    keepsake::unit_spec<State, counter_handler<State>> spec;
    spec.name = key;
    spec.call_timeout = 20s;
    return spec;
}

void register_test_types(keepsake::unit_type_options options = {}) {
    keepsake::register_unit_type("tally", [](const std::string& key) { return counter_spec<tally>(key); }, options);
    keepsake::register_unit_type("gauge", [](const std::string& key) { return counter_spec<gauge>(key); }, options);
    keepsake::register_unit_type("label", [](const std::string& key) { return counter_spec<label>(key); }, options);
}

const char* const type_names[] = {"tally", "gauge", "label"};

std::string key_of(int index) { return "u" + std::to_string(index); }
const char* type_of(int index) { return type_names[index % 3]; }

// Calls bump on a unit of any of the three types.
std::uint64_t bump_unit(keepsake::runtime& rt, int index) {
    const std::string key = key_of(index);
    switch (index % 3) {
    case 0: return keepsake::whereis<tally, counter_handler<tally>>(rt, key).value().call(bump{});
    case 1: return keepsake::whereis<gauge, counter_handler<gauge>>(rt, key).value().call(bump{});
    default: return keepsake::whereis<label, counter_handler<label>>(rt, key).value().call(bump{});
    }
}

keepsake::supervisor_spec players(const std::string& name = "players") {
    keepsake::supervisor_spec spec;
    spec.name = name;
    spec.flags.dynamic = true;
    spec.flags.intensity = {1000000, std::chrono::seconds(1)};
    return spec;
}

// What a forked run and its parent share: per unit, 0 stopped, 1 running,
// 2 starting, 3 stopping; its last acknowledged value; and what the run
// found at its start.
constexpr int kill_units = 1000;
struct shared_book {
    std::atomic<int> ready{0};
    std::atomic<int> errors{0};
    std::atomic<int> resumed{0};
    char first_error[256]{};
    std::atomic<int> state[kill_units];
    std::atomic<std::uint64_t> acked[kill_units];
};

void note_error(shared_book& book, const std::string& what) {
    if (book.errors.fetch_add(1) == 0) std::snprintf(book.first_error, sizeof(book.first_error), "%s", what.c_str());
}

// One run of the program the kill test kills: resume, check what came back,
// then start, call and terminate units at random until killed.
[[noreturn]] void run_players(const shm_dir& dir, shared_book& book, unsigned seed) {
    keepsake::set_crash_reports(false);
    register_test_types({keepsake::crash_threshold::off(), {}, 0});
    keepsake::segment seg("players", dir.options(64u << 20, 4096));
    keepsake::runtime rt(keepsake::runtime_options{1, nullptr, 64 * 1024, &seg});
    std::atomic<int> resumed{0};
    rt.events().subscribe([&](const keepsake::event& e) {
        if (e.kind == event_kind::resumed) resumed.store(static_cast<int>(e.instance));
    });
    auto sup = keepsake::start_supervisor(rt, players());
    // Every unit that was running (1) is back, and only those that were
    // running or in flight (2, 3); each with its last acknowledged value or
    // the one a call committed without being acknowledged.
    std::set<std::string> children;
    for (const auto& child : sup.which_children()) children.insert(child.id);
    // The registry agrees: every resumed unit's record says running, and no
    // record says running for a unit that was not resumed.
    for (const auto& unit : keepsake::list_units(seg)) {
        const bool back = children.count(unit.key) != 0;
        if (back != (unit.status == unit_status::running))
            note_error(book, unit.key + ": resumed " + (back ? "yes" : "no") + " but its record says " +
                                 keepsake::to_string(unit.status));
    }
    for (int index = 0; index < kill_units; ++index) {
        const int was = book.state[index].load();
        const bool back = children.count(key_of(index)) != 0;
        if (was == 1 && !back) note_error(book, "running unit not resumed: " + key_of(index));
        if (was == 0 && back) note_error(book, "stopped unit resumed: " + key_of(index));
        if (back) {
            book.state[index].store(1);
            const std::uint64_t value = bump_unit(rt, index);
            const std::uint64_t acked = book.acked[index].load();
            if (value != acked + 1 && value != acked + 2)
                note_error(book, key_of(index) + " came back at " + std::to_string(value - 1) + ", acknowledged " +
                                     std::to_string(acked));
            book.acked[index].store(value);
        } else {
            book.state[index].store(0);
        }
    }
    book.resumed.store(resumed.load());
    book.ready.store(1);
    std::mt19937 rng(seed);
    for (;;) {
        const int index = static_cast<int>(rng() % kill_units);
        const int action = static_cast<int>(rng() % 10);
        if (book.state[index].load() == 0) {
            book.state[index].store(2);
            sup.start_child(type_of(index), key_of(index));
            book.state[index].store(1);
        } else if (action == 0) {
            book.state[index].store(3);
            sup.terminate_child(key_of(index));
            book.state[index].store(0);
        } else {
            book.acked[index].store(bump_unit(rt, index));
        }
    }
}

} // namespace

TEST_CASE("registry: a dynamic supervisor's 1000 units of three types come back after each SIGKILL, each once, "
          "with its last commit",
          "[registry][crash]") {
    const int kills = test_support::env_count("KEEPSAKE_REGISTRY_KILLS", 200);
    shm_dir dir;
    auto* book = test_support::shared_anonymous<shared_book>();
    std::mt19937 rng(20261126);
    std::uint64_t resumed_total = 0;
    for (int round = 0; round < kills; ++round) {
        book->ready.store(0);
        const unsigned seed = static_cast<unsigned>(rng());
        const pid_t child = test_support::fork_child([&] { run_players(dir, *book, seed); });
        // Half the kills land after the resume was checked, half at any
        // instant from the start (during the resume too).
        if (round % 2 == 0) {
            REQUIRE(test_support::wait_ready(book->ready, child, std::chrono::seconds(60)));
            std::this_thread::sleep_for(std::chrono::microseconds(rng() % 30000));
        } else {
            std::this_thread::sleep_for(std::chrono::microseconds(rng() % 150000));
        }
        test_support::kill_and_reap(child);
        INFO("round " << round << ": " << book->first_error);
        REQUIRE(book->errors.load() == 0);
        resumed_total += static_cast<std::uint64_t>(book->resumed.exchange(0));
    }
    // A last run checks the last kill's survivors.
    book->ready.store(0);
    const pid_t last = test_support::fork_child([&] { run_players(dir, *book, 1); });
    REQUIRE(test_support::wait_ready(book->ready, last, std::chrono::seconds(60)));
    test_support::kill_and_reap(last);
    INFO(book->first_error);
    REQUIRE(book->errors.load() == 0);
    CHECK(resumed_total > static_cast<std::uint64_t>(kills) * 100);  // the runs really resumed units
    test_support::release_shared(book);
}

TEST_CASE("registry: temporary children started and ended 100 000 times leave the directory as they found it",
          "[registry]") {
    const int rounds = test_support::env_count("KEEPSAKE_CHURN_ROUNDS", 100000);
    shm_dir dir;
    keepsake::segment seg("churn", dir.options(4u << 20, 16));
    keepsake::runtime rt(keepsake::runtime_options{0, nullptr, 64 * 1024, &seg});
    auto sup = keepsake::start_supervisor(rt, players("runs"));
    const auto before = seg.entries().size();
    const auto free_before = seg.free_bytes();
    for (int round = 0; round < rounds; ++round) {
        auto spec = counter_spec<tally>("run-" + std::to_string(round));
        spec.restart = keepsake::restart_type::temporary;
        auto run = sup.start_child(spec);
        REQUIRE(run.call(bump{}) == 1);
        if (round % 2 == 0) {
            sup.terminate_child(spec.name);  // ended on request
        } else {
            run.cast([](tally&, keepsake::unit_context<tally>& context) { context.stop_self(); });
            while (sup.count_children().specs != 0) rt.poll();  // ended by itself
        }
    }
    CHECK(seg.entries().size() == before);
    CHECK(seg.free_bytes() == free_before);
    CHECK(sup.count_children().specs == 0);
}

TEST_CASE("registry: info and list say type, parent, status, starts and crash history", "[registry]") {
    register_test_types({keepsake::crash_threshold::off(), {}, 0});
    keepsake::set_crash_reports(false);
    shm_dir dir;
    keepsake::segment seg("info", dir.options());
    {
        keepsake::runtime rt(keepsake::runtime_options{1, nullptr, 64 * 1024, &seg});
        auto sup = keepsake::start_supervisor(rt, players());
        sup.start_child("tally", "t1");
        sup.start_child("gauge", "g1");
        auto t1 = keepsake::whereis<tally, counter_handler<tally>>(rt, "t1").value();
        REQUIRE(t1.call(bump{}) == 1);
        REQUIRE_THROWS_AS(t1.call(explode{}), keepsake::worker_crashed);
        REQUIRE(t1.call(bump{}) == 2);
        sup.terminate_child("g1");

        const auto info = keepsake::info(seg, "t1").value();
        CHECK(info.type == "tally");
        CHECK(info.parent == "players");
        CHECK(info.dynamic);
        CHECK(info.status == unit_status::running);
        CHECK(info.running);
        CHECK(info.starts == 2);  // the first start and the restart after the crash
        CHECK(info.crashes == 1);
        CHECK(info.generation == 2);
        CHECK(info.commit_ns != 0);
        REQUIRE(info.history.size() == 1);
        CHECK(info.history[0].kind == keepsake::crash_kind::exception);
        CHECK(info.history[0].reason == "exploded on purpose");
        CHECK(info.history[0].generation == 1);
        CHECK(info.history[0].wall_ns != 0);

        const auto g1 = keepsake::info(seg, "g1").value();
        CHECK(g1.status == unit_status::stopped_graceful);
        CHECK(!g1.running);
        const auto listed = keepsake::list_units(seg);
        REQUIRE(listed.size() == 2);
        CHECK(listed[0].key == "t1");
        CHECK(listed[1].key == "g1");
        CHECK(!keepsake::info(seg, "nobody"));
    }
}

TEST_CASE("registry: a unit past its crash threshold is permanently crashed, the rest runs, and clearing it lets "
          "it start again",
          "[registry]") {
    keepsake::set_crash_reports(false);
    shm_dir dir;
    keepsake::segment seg("poison", dir.options());
    keepsake::runtime rt(keepsake::runtime_options{1, nullptr, 64 * 1024, &seg});
    std::atomic<int> poisoned_events{0};
    rt.events().subscribe([&](const keepsake::event& e) {
        if (e.kind == event_kind::permanently_crashed && e.child == "bad") poisoned_events.fetch_add(1);
    });
    keepsake::supervisor_spec tree;
    tree.name = "tree";
    auto bad = counter_spec<tally>("bad");
    bad.threshold = keepsake::crash_threshold{3, std::chrono::hours(1), false};
    tree.children.push_back(keepsake::child(bad));
    tree.children.push_back(keepsake::child(counter_spec<tally>("good")));
    tree.flags.intensity = {100, std::chrono::seconds(1)};
    auto sup = keepsake::start_supervisor(rt, tree);
    auto unit = keepsake::whereis<tally, counter_handler<tally>>(rt, "bad").value();
    REQUIRE_THROWS_AS(unit.call(explode{}), keepsake::worker_crashed);
    REQUIRE_THROWS_AS(unit.call(explode{}), keepsake::worker_crashed);
    const auto third = test_support::error_from([&] { unit.call(explode{}); });
    CHECK(third.code() == errc::worker_crashed);
    CHECK(std::string(third.what()).find("last crash") != std::string::npos);
    // Its supervisor tried to restart it; the registry declined.
    test_support::wait_until([&] { return keepsake::info(seg, "bad")->status == unit_status::permanently_crashed; });
    CHECK(keepsake::info(seg, "bad")->status == unit_status::permanently_crashed);
    CHECK(keepsake::info(seg, "bad")->history.size() == 3);
    test_support::wait_until([&] { return sup.which_children().back().state != keepsake::child_state::running; });
    const auto children = sup.which_children();  // newest first
    CHECK(children[0].id == "good");
    CHECK(children[0].state == keepsake::child_state::running);
    CHECK(children[1].id == "bad");
    CHECK(children[1].state == keepsake::child_state::not_running);
    CHECK(poisoned_events.load() >= 1);
    CHECK(keepsake::whereis<tally, counter_handler<tally>>(rt, "good").value().call(bump{}) == 1);
    // Not started again automatically, not even when asked to restart.
    sup.restart_child("bad");
    CHECK(sup.which_children()[1].state == keepsake::child_state::not_running);

    CHECK(keepsake::clear_crashed(seg, "bad"));
    CHECK(!keepsake::clear_crashed(seg, "bad"));  // once
    CHECK(keepsake::info(seg, "bad")->history.empty());
    sup.restart_child("bad");
    CHECK(sup.which_children()[1].state == keepsake::child_state::running);
    CHECK(keepsake::whereis<tally, counter_handler<tally>>(rt, "bad").value().call(bump{}) == 1);
}

namespace {

// A program whose unit "poison" kills the whole process (SIGABRT) when it
// serves a message while its state says so; "fine" is a healthy unit.
struct poison_state {
    std::uint64_t value = 0;
    bool poisoned = false;
};
struct poison_handler {
    std::uint64_t operator()(poison_state& state, const bump&) const {
        if (state.poisoned) std::abort();
        return ++state.value;
    }
    void operator()(poison_state& state, const explode&) const { state.poisoned = true; }
};

// `in_init`: the poisoned state aborts in the init hook, at every start,
// rather than at its next message.
void register_poison_types(bool in_init) {
    keepsake::register_unit_type("poison", [in_init](const std::string& key) {
        keepsake::unit_spec<poison_state, poison_handler> spec;
        spec.name = key;
        spec.call_timeout = std::chrono::seconds(20);  // a timeout would abort the run: not what is counted
        if (in_init)
            spec.init = [](poison_state& state, const keepsake::start_info&) {
                if (state.poisoned) std::abort();
            };
        return spec;
    });
}

// One run: resume, report who came back, then call both units once.
void run_poisoned(const shm_dir& dir, bool poison_it, bool in_init, std::atomic<int>* started_poison) {
    ::signal(SIGABRT, SIG_DFL);  // not Catch's handler: its report of the abort is not a failure here
    keepsake::set_crash_reports(false);
    register_poison_types(in_init);
    keepsake::segment seg("poisoned", dir.options());
    keepsake::runtime rt(keepsake::runtime_options{1, nullptr, 64 * 1024, &seg});
    auto sup = keepsake::start_supervisor(rt, players());
    if (sup.count_children().specs == 0) {
        sup.start_child("poison", "p");
        sup.start_child("poison", "fine");
    }
    auto fine = keepsake::whereis<poison_state, poison_handler>(rt, "fine");
    if (!fine) std::_Exit(20);
    fine->call(bump{});
    auto p = keepsake::whereis<poison_state, poison_handler>(rt, "p");
    started_poison->store(p ? 1 : 0);
    if (p && poison_it) p->call(explode{});
    if (p) p->call(bump{});  // aborts the process while the state is poisoned
}

} // namespace

TEST_CASE("registry: a poison state that kills the process is blamed on its unit and stops after the threshold, "
          "and the others keep running",
          "[registry][crash]") {
    const bool in_init = GENERATE(false, true);  // the poison aborts at a message, or in the init hook
    INFO((in_init ? "in the init hook" : "at a message"));
    shm_dir dir;
    auto* started = test_support::shared_anonymous<std::atomic<int>>();
    int aborted = 0;
    for (int run = 0; run < 8; ++run) {
        const pid_t child = test_support::fork_child([&] { run_poisoned(dir, run == 0, in_init, started); });
        int status = 0;
        REQUIRE(::waitpid(child, &status, 0) == child);
        if (WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT) {
            ++aborted;
        } else {
            INFO("run " << run << " status " << status);
            REQUIRE(WIFEXITED(status));
            REQUIRE(WEXITSTATUS(status) == 0);
            REQUIRE(started->load() == 0);  // "p" was not started: the run went on without it
        }
    }
    // The first run poisoned and aborted; four more aborted (five crashes in
    // the hour, DurableServer's default threshold); the rest ran without it.
    CHECK(aborted == 5);
    keepsake::segment seg("poisoned", dir.options());
    const auto info = keepsake::info(seg, "p").value();
    CHECK(info.status == unit_status::permanently_crashed);
    REQUIRE(info.history.size() == 5);
    CHECK(info.history.back().kind == keepsake::crash_kind::process_crashed);
    CHECK(info.history.back().reason.find("SIGABRT") != std::string::npos);
    // "fine" died with the process each time: not its crash (no history),
    // the segment's death, noted once a death.
    const auto fine = keepsake::info(seg, "fine").value();
    CHECK(fine.status == unit_status::running);
    CHECK(fine.history.empty());
    CHECK(fine.crashes == 0);
    CHECK(keepsake::process_deaths(seg).size() == 5);
    test_support::release_shared(started);
}

TEST_CASE("registry: a kill from outside is noted once as the segment's process death, and is a crash of each "
          "unit only with count_process_kills",
          "[registry][crash]") {
    const bool counted = GENERATE(false, true);
    INFO((counted ? "count_process_kills" : "kills not counted"));
    keepsake::set_crash_reports(false);
    shm_dir dir;
    constexpr int killed_runs = 4;
    auto* ready = test_support::shared_anonymous<std::atomic<int>>();
    std::vector<long> dead_pids;
    // Each run resumes "k" (or starts it the first time), calls it, says it
    // is ready and waits to be SIGKILLed; the last one closes cleanly.
    for (int run = 0; run <= killed_runs; ++run) {
        ready->store(0);
        const pid_t child = test_support::fork_child([&] {
            keepsake::crash_threshold threshold{3, std::chrono::hours(1), counted};
            register_test_types({threshold, {}, 0});
            keepsake::segment seg("kills", dir.options());
            keepsake::runtime rt(keepsake::runtime_options{1, nullptr, 64 * 1024, &seg});
            auto sup = keepsake::start_supervisor(rt, players());
            if (run == 0) sup.start_child("tally", "k");
            if (auto k = keepsake::whereis<tally, counter_handler<tally>>(rt, "k")) k->call(bump{});
            ready->store(1);
            if (run == killed_runs) std::_Exit(0);
            ::pause();
            std::_Exit(0);
        });
        REQUIRE(test_support::wait_ready(*ready, child));
        if (run < killed_runs) {
            test_support::kill_and_reap(child);
            dead_pids.push_back(static_cast<long>(child));
        } else {
            int status = 0;
            REQUIRE(::waitpid(child, &status, 0) == child);
            REQUIRE(WIFEXITED(status));
        }
    }
    keepsake::segment seg("kills", dir.options());
    // Each killed run that cut a unit short, found by the next run that
    // started one: once, whether counted or not. Counted, the last killed
    // run ran no unit ("k" was permanently crashed at its start).
    if (counted) dead_pids.pop_back();
    const auto deaths = keepsake::process_deaths(seg);
    REQUIRE(deaths.size() == dead_pids.size());
    for (std::size_t index = 0; index < deaths.size(); ++index) {
        CHECK(deaths[index].pid == dead_pids[index]);
        CHECK(deaths[index].found_ns != 0);
        if (index > 0) CHECK(deaths[index].found_ns >= deaths[index - 1].found_ns);
    }
    const auto k = keepsake::info(seg, "k").value();
    if (!counted) {
        CHECK(k.status == unit_status::running);
        CHECK(k.history.empty());
        CHECK(k.crashes == 0);
        CHECK(k.starts == killed_runs + 1);
    } else {
        // Three kills within the hour: permanently crashed, at the start of
        // the fourth run after the first (not started by it nor the last).
        CHECK(k.status == unit_status::permanently_crashed);
        REQUIRE(k.history.size() == 3);
        for (const auto& crash : k.history) CHECK(crash.kind == keepsake::crash_kind::process_killed);
        CHECK(k.crashes == 3);
        CHECK(k.starts == 3);
    }
    test_support::release_shared(ready);
}

TEST_CASE("registry: a segment with no room for its death log still resumes its units", "[registry][crash]") {
    keepsake::set_crash_reports(false);
    shm_dir dir;
    keepsake::segment_options options = dir.options();
    options.max_size = options.size;  // it cannot grow
    auto* ready = test_support::shared_anonymous<std::atomic<int>>();
    auto* filled = test_support::shared_anonymous<std::atomic<int>>();
    // Run 0 starts "k" and is SIGKILLed; run 1 fills the segment with other
    // keys before its supervisor resumes "k", then closes cleanly.
    for (int run = 0; run < 2; ++run) {
        ready->store(0);
        const pid_t child = test_support::fork_child([&] {
            register_test_types();
            keepsake::segment seg("full", options);
            if (run == 1) {
                try {
                    for (int index = 0;; ++index) keepsake::keeper<tally> filler(seg, "fill" + std::to_string(index));
                } catch (const keepsake::error& failure) {
                    if (failure.code() != errc::out_of_space) std::_Exit(30);
                    filled->store(1);
                }
            }
            keepsake::runtime rt(keepsake::runtime_options{1, nullptr, 64 * 1024, &seg});
            auto sup = keepsake::start_supervisor(rt, players());
            if (run == 0) sup.start_child("tally", "k");
            auto k = keepsake::whereis<tally, counter_handler<tally>>(rt, "k");
            if (!k) std::_Exit(21);
            k->call(bump{});
            ready->store(1);
            if (run == 1) std::_Exit(0);
            ::pause();
            std::_Exit(0);
        });
        REQUIRE(test_support::wait_ready(*ready, child));
        if (run == 0) {
            test_support::kill_and_reap(child);
        } else {
            int status = 0;
            REQUIRE(::waitpid(child, &status, 0) == child);
            REQUIRE(WIFEXITED(status));
            REQUIRE(WEXITSTATUS(status) == 0);
        }
    }
    CHECK(filled->load() == 1);
    keepsake::segment seg("full", options);
    const auto k = keepsake::info(seg, "k").value();
    CHECK(k.status == unit_status::running);
    CHECK(k.starts == 2);  // resumed though the death could not be noted
    CHECK(keepsake::process_deaths(seg).empty());
    test_support::release_shared(ready);
    test_support::release_shared(filled);
}

TEST_CASE("registry: key lifecycles (keep, remove on normal exit, remove), terminate_and_delete and terminate_all",
          "[registry]") {
    keepsake::set_crash_reports(false);
    shm_dir dir;
    test_support::temp_dir disk;
    keepsake::segment seg("lifecycle", dir.options());
    keepsake::sqlite_store store(disk.path() + "/store.db");
    keepsake::exporter out(seg, store);
    keepsake::runtime rt(keepsake::runtime_options{1, nullptr, 64 * 1024, &seg});
    auto sup = keepsake::start_supervisor(rt, players());
    auto has_keys = [&](const std::string& key) {
        return keepsake::info(seg, key).has_value() || seg.shared_impl()->entry_view_of(key).has_value();
    };
    auto start = [&](const std::string& key, keepsake::restart_type restart, keepsake::key_lifecycle lifecycle) {
        auto spec = counter_spec<tally>(key);
        spec.restart = restart;
        spec.lifecycle = lifecycle;
        spec.intensity = {0, std::chrono::seconds(1)};  // a crash ends the instance (no restart in place)
        auto unit = sup.start_child(spec);
        unit.call(bump{});
        return unit;
    };
    start("kept", keepsake::restart_type::temporary, keepsake::key_lifecycle::keep);
    start("gone", keepsake::restart_type::temporary, keepsake::key_lifecycle::automatic);
    auto crashing = start("crashes", keepsake::restart_type::temporary, keepsake::key_lifecycle::automatic);
    auto removed = start("removed", keepsake::restart_type::temporary, keepsake::key_lifecycle::remove);
    start("deleted", keepsake::restart_type::permanent, keepsake::key_lifecycle::keep);
    REQUIRE(out.flush());
    REQUIRE(store.get("deleted").has_value());

    sup.terminate_child("kept");
    CHECK(keepsake::info(seg, "kept")->status == unit_status::stopped_graceful);
    CHECK(has_keys("kept"));
    sup.terminate_child("gone");  // temporary: remove on normal exit
    CHECK(!has_keys("gone"));
    REQUIRE_THROWS(crashing.call(explode{}));  // a temporary child is not restarted: kept for inspection
    test_support::wait_until([&] { return keepsake::info(seg, "crashes")->status == unit_status::crashed; });
    CHECK(keepsake::info(seg, "crashes")->status == unit_status::crashed);
    REQUIRE_THROWS(removed.call(explode{}));  // remove: however it ends
    test_support::wait_until([&] { return !has_keys("removed"); });
    CHECK(!has_keys("removed"));

    sup.terminate_and_delete("deleted");
    CHECK(!has_keys("deleted"));
    CHECK(!store.get("deleted").has_value());  // through the exporter
    CHECK(!store.get("ks:u/deleted").has_value());

    start("a", keepsake::restart_type::permanent, keepsake::key_lifecycle::keep);
    start("b", keepsake::restart_type::permanent, keepsake::key_lifecycle::keep);
    sup.terminate_all(true);
    CHECK(sup.count_children().specs == 0);
    CHECK(!has_keys("a"));
    CHECK(!has_keys("b"));
}

TEST_CASE("registry: a type's circuit breaker refuses new starts after M crashes, with an error and an event",
          "[registry]") {
    keepsake::set_crash_reports(false);
    keepsake::unit_type_options options;
    options.threshold = keepsake::crash_threshold::off();
    options.breaker = keepsake::circuit_breaker{3, std::chrono::minutes(1), std::chrono::minutes(10)};
    register_test_types({keepsake::crash_threshold::off(), {}, 0});  // "tally": another type, not refused
    keepsake::register_unit_type("fragile", [](const std::string& key) { return counter_spec<tally>(key); }, options);
    shm_dir dir;
    keepsake::segment seg("breaker", dir.options());
    keepsake::runtime rt(keepsake::runtime_options{1, nullptr, 64 * 1024, &seg});
    std::atomic<int> opened{0};
    rt.events().subscribe([&](const keepsake::event& e) {
        if (e.kind == event_kind::circuit_open && e.child == "fragile") opened.fetch_add(1);
    });
    auto sup = keepsake::start_supervisor(rt, players());
    sup.start_child("fragile", "f1");
    auto f1 = keepsake::whereis<tally, counter_handler<tally>>(rt, "f1").value();
    for (int crash = 0; crash < 3; ++crash) REQUIRE_THROWS(f1.call(explode{}));
    CHECK(opened.load() == 1);
    const auto refused = test_support::error_from([&] { sup.start_child("fragile", "f2"); });
    CHECK(refused.code() == errc::start_failed);
    CHECK(std::string(refused.what()).find("circuit breaker") != std::string::npos);
    CHECK(f1.call(bump{}) == 1);  // the units already running go on
    sup.start_child("tally", "other-type");  // other types are not refused
}

TEST_CASE("registry: on_resume may skip, remove or adapt a child, and unknown types are refused with an event",
          "[registry]") {
    keepsake::set_crash_reports(false);
    register_test_types({keepsake::crash_threshold::off(), {}, 0});
    shm_dir dir;
    {
        keepsake::segment seg("hook", dir.options());
        keepsake::runtime rt(keepsake::runtime_options{1, nullptr, 64 * 1024, &seg});
        auto sup = keepsake::start_supervisor(rt, players());
        for (const char* key : {"keep", "skip", "remove", "adapt"}) sup.start_child("tally", key);
        keepsake::register_unit_type("short-lived", [](const std::string& key) { return counter_spec<tally>(key); });
        sup.start_child("short-lived", "orphan");
        rt.shutdown();
    }
    keepsake::segment seg("hook", dir.options());
    keepsake::runtime rt(keepsake::runtime_options{1, nullptr, 64 * 1024, &seg});
    std::vector<std::string> refused;
    std::mutex refused_mutex;
    rt.events().subscribe([&](const keepsake::event& e) {
        std::lock_guard<std::mutex> lock(refused_mutex);
        if (e.kind == event_kind::resume_refused) refused.push_back(std::string(e.child));
    });
    // The type of "orphan" is not registered in this run.
    CHECK(keepsake::unregister_unit_type("short-lived"));
    auto spec = players();
    bool adapted = false;
    spec.on_resume = [&](keepsake::resume_candidate& candidate) {
        if (candidate.key == "skip") return keepsake::resume_action::skip;
        if (candidate.key == "remove") return keepsake::resume_action::remove;
        if (candidate.key == "adapt") {
            auto changed = counter_spec<tally>("adapt");
            changed.init = [&adapted](tally&, const keepsake::start_info&) { adapted = true; };
            candidate.spec = keepsake::child(changed);
        }
        return keepsake::resume_action::resume;
    };
    auto sup = keepsake::start_supervisor(rt, spec);
    std::set<std::string> ids;
    for (const auto& child : sup.which_children()) ids.insert(child.id);
    CHECK(ids.count("keep") == 1);
    CHECK(ids.count("adapt") == 1);
    CHECK(ids.count("orphan") == 0);
    CHECK(std::count(refused.begin(), refused.end(), "orphan") == 1);
    CHECK(keepsake::info(seg, "orphan")->status == unit_status::running);  // kept for a run that knows its type
    CHECK(ids.count("skip") == 0);
    CHECK(ids.count("remove") == 0);
    CHECK(adapted);
    CHECK(keepsake::info(seg, "skip")->status == unit_status::stopped_graceful);
    CHECK(!keepsake::info(seg, "remove"));
}

TEST_CASE("registry: after a reboot a dynamic supervisor resumes its children from the store, with their state",
          "[registry]") {
    keepsake::set_crash_reports(false);
    shm_dir dir;
    test_support::temp_dir disk;
    keepsake::sqlite_store store(disk.path() + "/store.db");
    keepsake::register_unit_type("durable", [&store](const std::string& key) {
        auto spec = counter_spec<tally>(key);
        spec.recover_from = &store;
        spec.threshold = keepsake::crash_threshold::off();
        return spec;
    });
    {
        keepsake::segment seg("reboot", dir.options());
        keepsake::exporter out(seg, store);
        keepsake::runtime rt(keepsake::runtime_options{1, nullptr, 64 * 1024, &seg});
        auto sup = keepsake::start_supervisor(rt, players());
        for (int index = 0; index < 5; ++index) {
            sup.start_child("durable", key_of(index));
            for (int times = 0; times <= index; ++times)
                keepsake::whereis<tally, counter_handler<tally>>(rt, key_of(index)).value().call(bump{});
        }
        REQUIRE(out.flush());
    }
    REQUIRE(keepsake::segment::remove("reboot", dir.path()));  // the reboot: shared memory is gone
    keepsake::segment seg("reboot", dir.options());
    keepsake::runtime rt(keepsake::runtime_options{1, nullptr, 64 * 1024, &seg});
    auto spec = players();
    spec.resume_from = &store;
    auto sup = keepsake::start_supervisor(rt, spec);
    REQUIRE(sup.count_children().active == 5);
    for (int index = 0; index < 5; ++index)
        CHECK(keepsake::whereis<tally, counter_handler<tally>>(rt, key_of(index)).value().call(bump{}) ==
              static_cast<std::uint64_t>(index + 2));
    // The order is the original one.
    const auto children = sup.which_children();  // newest first
    CHECK(children.back().id == key_of(0));
    CHECK(children.front().id == key_of(4));
}

namespace {

// A unit whose handler throws while its state is 3: a state that crashes
// the worker each time it is restored.
struct steps_handler {
    std::uint64_t operator()(tally& state, const bump&) const {
        if (state.value == 3) throw std::runtime_error("3 is poison");
        return ++state.value;
    }
};

// A runtime and the reasons of its rolled_back events, for the ladder's tests.
struct ladder_world {
    shm_dir dir;
    keepsake::segment seg{"ladder", dir.options()};
    keepsake::runtime rt{keepsake::runtime_options{1, nullptr, 64 * 1024, &seg}};
    std::vector<std::string> steps;
    std::mutex steps_mutex;

    ladder_world() {
        keepsake::set_crash_reports(false);
        rt.events().subscribe([this](const keepsake::event& e) {
            std::lock_guard<std::mutex> lock(steps_mutex);
            if (e.kind == event_kind::rolled_back) steps.push_back(std::string(e.reason));
        });
    }
    std::vector<std::string> seen() {
        std::lock_guard<std::mutex> lock(steps_mutex);
        return steps;
    }
};

} // namespace

TEST_CASE("registry: the rollback ladder starts a unit that keeps crashing from older generations, then from the "
          "initial state, and keeps the skipped one",
          "[registry]") {
    ladder_world world;
    auto& seg = world.seg;
    keepsake::unit_spec<tally, steps_handler> spec;
    spec.name = "u";
    spec.keeper.slots = 3;  // two older generations to fall back on
    spec.rollback_after = 2;
    spec.threshold = keepsake::crash_threshold::off();
    auto unit = keepsake::start_unit(world.rt, spec);
    CHECK(unit.call(bump{}) == 1);  // generation 1: value 1
    CHECK(unit.call(bump{}) == 2);  // generation 2: value 2
    CHECK(unit.call(bump{}) == 3);  // generation 3: value 3, the poison
    // A crash after messages is not one at start: it does not count.
    REQUIRE_THROWS_AS(unit.call(bump{}), keepsake::worker_crashed);
    // Two crashes at start from generation 3: the ladder's first step, generation 2.
    REQUIRE_THROWS_AS(unit.call(bump{}), keepsake::worker_crashed);
    REQUIRE_THROWS_AS(unit.call(bump{}), keepsake::worker_crashed);
    // From value 2 the unit answers again (and commits 3 again: the bug is still there).
    CHECK(unit.call(bump{}) == 3);
    const auto steps = world.seen();
    REQUIRE(steps.size() == 1);
    CHECK(steps[0].find("started from generation 2") != std::string::npos);
    CHECK(keepsake::info(seg, "u")->rolled_back_from == 3);
    // The skipped generation is kept, whole, for inspection.
    auto kept = seg.shared_impl()->entry_view_of("ks:s/u");
    REQUIRE(kept.has_value());
    const auto kept_slot = keepsake::detail::read_slot_header(kept->area, 0);
    CHECK(kept_slot.generation == 3);
    CHECK(keepsake::detail::slot_is_valid(kept->area, kept_slot));
    tally skipped{};
    std::memcpy(&skipped, kept->area.data(0), sizeof(skipped));
    CHECK(skipped.value == 3);
}

TEST_CASE("registry: the rollback ladder ends at the initial state when every older generation crashes too",
          "[registry]") {
    ladder_world world;
    keepsake::unit_spec<tally, steps_handler> spec;
    spec.name = "u";
    spec.rollback_after = 1;  // two slots: generation 2, then 1, then the initial state
    spec.threshold = keepsake::crash_threshold::off();
    spec.initial.value = 10;
    auto unit = keepsake::start_unit(world.rt, spec);
    unit.call([](tally& state) { state.value = 3; });  // generation 1: the poison
    unit.call([](tally& state) { state.value = 3; });  // generation 2: the poison again
    REQUIRE_THROWS_AS(unit.call(bump{}), keepsake::worker_crashed);  // not at start: not counted
    REQUIRE_THROWS_AS(unit.call(bump{}), keepsake::worker_crashed);  // step 1: generation 1, poisoned too
    REQUIRE_THROWS_AS(unit.call(bump{}), keepsake::worker_crashed);  // step 2: no older slot: the initial state
    CHECK(unit.call(bump{}) == 11);
    const auto steps = world.seen();
    REQUIRE(steps.size() == 2);
    CHECK(steps[0].find("started from generation 1") != std::string::npos);
    CHECK(steps[1].find("started from the initial state") != std::string::npos);
}

}  // namespace registry_tests
