// What a user meets around the library: errors that say what to do (the
// messages of issue 15), and the runtime's counters in Prometheus' text
// format, parsed as a Prometheus server would.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <keepsake/keepsake.hpp>
#include <keepsake/metrics.hpp>
#include <keepsake/stores/memory_store.hpp>

#include "support.hpp"

namespace ecosystem_tests {  // a unity build's sources keep their names apart (tests/CMakeLists.txt)

using namespace std::chrono_literals;
using keepsake::errc;
using test_support::error_from;
using test_support::shm_dir;

namespace {

struct tally {
    long count = 0;
};

struct add {
    long amount;
};
struct total {};
struct tally_handler {
    long operator()(tally& state, const add& message) const { return state.count += message.amount; }
    long operator()(const tally& state, const total&) const { return state.count; }
};

struct pumped_runtime {
    shm_dir dir;
    std::shared_ptr<keepsake::manual_clock> clock = std::make_shared<keepsake::manual_clock>();
    keepsake::segment seg;
    keepsake::runtime rt;
    explicit pumped_runtime(const std::string& name)
        : seg(name, dir.options()), rt([this] {
              keepsake::runtime_options options;
              options.threads = 0;
              options.time = clock;
              options.default_segment = &seg;
              return options;
          }()) {}
};

keepsake::unit_spec<tally> tally_spec(const std::string& name, std::uint32_t max_restarts, bool direct_calls) {
    keepsake::unit_spec<tally> spec;
    spec.name = name;
    spec.intensity = {max_restarts, 10s};
    spec.direct_calls = direct_calls;
    return spec;
}

bool says(const std::exception& failure, const std::string& text) {
    return std::string(failure.what()).find(text) != std::string::npos;
}

// --- a parser of Prometheus' text exposition format (0.0.4) ----------------

struct exposition {
    std::map<std::string, std::string> types;    // family -> counter, gauge, ...
    std::map<std::string, double> samples;       // name{label="value",...} (labels sorted) -> value
};

bool is_name(const std::string& name, bool metric) {
    if (name.empty()) return false;
    for (std::size_t i = 0; i < name.size(); ++i) {
        const unsigned char c = static_cast<unsigned char>(name[i]);
        const bool ok = std::isalpha(c) || c == '_' || (metric && c == ':') || (i > 0 && std::isdigit(c));
        if (!ok) return false;
    }
    return true;
}

double parse_value(const std::string& text) {
    if (text == "+Inf") return HUGE_VAL;
    if (text == "-Inf") return -HUGE_VAL;
    if (text == "NaN") return std::nan("");
    char* end = nullptr;
    const double value = std::strtod(text.c_str(), &end);
    if (text.empty() || *end != '\0') throw std::runtime_error("not a sample value: '" + text + "'");
    return value;
}

// Throws std::runtime_error, naming the line, for anything a Prometheus
// server would reject: bad names, unescaped labels, samples before their
// TYPE, a family split in two, a sample given twice.
exposition parse_prometheus(const std::string& text) {
    exposition parsed;
    std::set<std::string> finished;  // families whose samples are over
    std::string current;
    std::size_t at = 0;
    int line_number = 0;
    while (at < text.size()) {
        const std::size_t end = text.find('\n', at);
        if (end == std::string::npos) throw std::runtime_error("the last line has no newline");
        const std::string line = text.substr(at, end - at);
        at = end + 1;
        ++line_number;
        auto bad = [&](const std::string& why) {
            return std::runtime_error("line " + std::to_string(line_number) + " '" + line + "': " + why);
        };
        if (line.empty()) continue;
        if (line[0] == '#') {
            std::istringstream words(line.substr(1));
            std::string keyword, family, rest;
            words >> keyword >> family;
            std::getline(words, rest);
            if (keyword != "HELP" && keyword != "TYPE") continue;  // a comment
            if (!is_name(family, true)) throw bad("bad family name");
            if (keyword == "TYPE") {
                const std::string type = rest.substr(rest.find_first_not_of(' '));
                if (type != "counter" && type != "gauge" && type != "untyped" && type != "histogram" &&
                    type != "summary")
                    throw bad("unknown type");
                if (parsed.types.count(family)) throw bad("a second TYPE for the family");
                parsed.types[family] = type;
                if (!current.empty()) finished.insert(current);
                current = family;
            }
            continue;
        }
        std::size_t cursor = 0;
        while (cursor < line.size() && line[cursor] != '{' && line[cursor] != ' ') ++cursor;
        const std::string name = line.substr(0, cursor);
        if (!is_name(name, true)) throw bad("bad metric name");
        std::vector<std::pair<std::string, std::string>> labels;
        if (cursor < line.size() && line[cursor] == '{') {
            ++cursor;
            while (cursor < line.size() && line[cursor] != '}') {
                const std::size_t equals = line.find('=', cursor);
                if (equals == std::string::npos) throw bad("a label without '='");
                const std::string label = line.substr(cursor, equals - cursor);
                if (!is_name(label, false)) throw bad("bad label name '" + label + "'");
                cursor = equals + 1;
                if (cursor >= line.size() || line[cursor] != '"') throw bad("a label value without quotes");
                ++cursor;
                std::string value;
                for (;; ++cursor) {
                    if (cursor >= line.size()) throw bad("an unterminated label value");
                    const char c = line[cursor];
                    if (c == '"') break;
                    if (c != '\\') {
                        value += c;
                        continue;
                    }
                    if (++cursor >= line.size()) throw bad("a dangling escape");
                    const char escaped = line[cursor];
                    if (escaped == 'n') value += '\n';
                    else if (escaped == '\\' || escaped == '"') value += escaped;
                    else throw bad("an unknown escape");
                }
                ++cursor;
                labels.emplace_back(label, value);
                if (cursor < line.size() && line[cursor] == ',') ++cursor;
            }
            if (cursor >= line.size()) throw bad("labels without '}'");
            ++cursor;
        }
        if (cursor >= line.size() || line[cursor] != ' ') throw bad("no value");
        const std::string rest = line.substr(cursor + 1);
        const double value = parse_value(rest.substr(0, rest.find(' ')));
        if (current.empty() || (name != current && name.rfind(current + "_", 0) != 0)) throw bad("a sample before its TYPE");
        if (finished.count(current)) throw bad("a family split in two");
        std::sort(labels.begin(), labels.end());
        std::string key = name + "{";
        for (std::size_t i = 0; i < labels.size(); ++i)
            key += (i ? "," : "") + labels[i].first + "=\"" + labels[i].second + "\"";
        key += "}";
        if (!parsed.samples.emplace(key, value).second) throw bad("the same sample twice");
    }
    return parsed;
}

double sample(const exposition& parsed, const std::string& key) {
    const auto found = parsed.samples.find(key);
    if (found == parsed.samples.end()) throw std::runtime_error("no sample " + key);
    return found->second;
}

} // namespace

TEST_CASE("the caller of the crash that makes a unit give up is told so, not that it restarts", "[errors][unit]") {
    const bool direct = GENERATE(true, false);  // served in a lent turn, or on the worker
    pumped_runtime harness("give-up");
    auto unit = keepsake::start_unit(harness.rt, tally_spec("fragile", 1, direct));
    const keepsake::error first = error_from([&] { unit.call([](tally&) -> long { throw std::runtime_error("one"); }); });
    CHECK(first.code() == errc::worker_crashed);
    CHECK(says(first, "the unit restarts from its last commit"));
    const keepsake::error last = error_from([&] { unit.call([](tally&) -> long { throw std::runtime_error("two"); }); });
    CHECK(last.code() == errc::worker_crashed);
    CHECK(says(last, "crashed while serving this call: two"));
    CHECK(says(last, "this was its last crash: the unit gave up"));
    CHECK_FALSE(says(last, "restarts from its last commit"));
    harness.rt.poll();
    CHECK(unit.stats().crashes == 2);
    CHECK(unit.stats().restarts == 1);

    // A unit of start_unit that gave up stays stopped: the error says how
    // to start it again, for it and for a supervisor's child.
    const keepsake::error stopped = error_from([&] { unit.call([](tally& t) { return t.count; }); });
    CHECK(stopped.code() == errc::not_running);
    CHECK(says(stopped, "'fragile' is not running"));
    CHECK(says(stopped, "start_unit"));
    CHECK(says(stopped, "supervisor::restart_child"));
}

TEST_CASE("run_for says what is wrong: a runtime with threads, or a call from another thread", "[errors][runtime]") {
    shm_dir dir;
    keepsake::segment seg("run-for", dir.options());
    {
        keepsake::runtime threaded({1, nullptr, 128 * 1024, &seg});
        const keepsake::error failure = error_from([&] { threaded.run_for(1ms); });
        CHECK(failure.code() == errc::invalid_argument);
        CHECK(says(failure, "runs its fibers on threads of its own, so there is nothing to pump"));
    }
    keepsake::runtime_options options;
    options.threads = 0;
    options.default_segment = &seg;
    keepsake::runtime pumped(options);
    keepsake::error failure(errc::not_found, "none");
    std::thread([&] { failure = error_from([&] { pumped.run_for(1ms); }); }).join();
    CHECK(failure.code() == errc::invalid_argument);
    CHECK(says(failure, "was called on another thread than the one that made this runtime"));
    CHECK_FALSE(says(failure, "runs its fibers on threads of its own"));
    CHECK(pumped.run_for(1ms) >= 1);  // on its own thread, it pumps
}

TEST_CASE("a type mismatch names both fingerprints in hex, as keepsake-inspect shows them", "[errors][keeper]") {
    shm_dir dir;
    keepsake::segment seg("mismatch", dir.options());
    {
        keepsake::keeper<long> wide(seg, "k");
        wide.commit(7);
    }
    const keepsake::error failure = error_from([&] { keepsake::keeper<int> narrow(seg, "k"); });
    CHECK(failure.code() == errc::type_mismatch);
    CHECK(says(failure, "fingerprint " + keepsake::detail::hex64(keepsake::type_fingerprint<long>())));
    CHECK(says(failure, "expects " + keepsake::detail::hex64(keepsake::type_fingerprint<int>())));
    CHECK(keepsake::detail::hex64(0xabcULL) == "0x0000000000000abc");
}

TEST_CASE("the runtime's counters render in Prometheus' text format, and parse", "[metrics]") {
    pumped_runtime harness("metrics");
    keepsake::unit_spec<tally, tally_handler> alice;
    alice.name = "alice";
    keepsake::supervisor_spec tree;
    tree.name = "accounts";
    tree.children.push_back(keepsake::child(alice));
    auto accounts = keepsake::start_supervisor(harness.rt, tree);
    auto unit = *keepsake::whereis<tally, tally_handler>(harness.rt, "alice");
    auto solo = keepsake::start_unit(harness.rt, tally_spec("solo", 0, true));

    for (int i = 0; i < 3; ++i) unit.cast(add{2});
    CHECK(unit.call(total{}) == 6);
    CHECK_THROWS_AS(unit.call([](tally&) -> long { throw std::runtime_error("bug"); }), keepsake::worker_crashed);
    CHECK_THROWS_AS(solo.call([](tally&) -> long { throw std::runtime_error("fatal"); }), keepsake::worker_crashed);
    harness.rt.poll();
    for (int i = 0; i < 5; ++i) unit.cast(add{1});  // not served until the runtime is pumped

    keepsake::memory_store store;
    keepsake::exporter_options export_options;
    export_options.interval = std::chrono::hours(1);
    keepsake::exporter out(harness.seg, store, export_options);
    const std::string odd_name = "mem \"main\" \\ store";

    const auto before_flush = keepsake::prometheus_text(harness.rt, {{odd_name, &out}});
    const exposition unflushed = parse_prometheus(before_flush);
    CHECK(sample(unflushed, "keepsake_unit_queue_depth{unit=\"alice\"}") == 5);
    const auto label = "{exporter=\"" + odd_name + "\"}";
    if (out.stats().passes == 0) CHECK(std::isinf(sample(unflushed, "keepsake_export_lag_seconds" + label)));

    REQUIRE(out.flush());
    keepsake::testing::run_until_idle(harness.rt);
    const std::string text = keepsake::prometheus_text(harness.rt, {{odd_name, &out}});
    INFO(text);
    const exposition parsed = parse_prometheus(text);

    CHECK(sample(parsed, std::string("keepsake_build_info{version=\"") + KEEPSAKE_VERSION_STRING + "\"}") == 1);
    CHECK(sample(parsed, "keepsake_units{state=\"running\"}") == 1);
    CHECK(sample(parsed, "keepsake_units{state=\"not_running\"}") == 1);  // solo gave up
    CHECK(sample(parsed, "keepsake_units{state=\"restarting\"}") == 0);
    CHECK(sample(parsed, "keepsake_supervisors{state=\"running\"}") == 1);
    CHECK(sample(parsed, "keepsake_unit_crashes_total{unit=\"alice\"}") == 1);
    CHECK(sample(parsed, "keepsake_unit_restarts_total{unit=\"alice\"}") == 1);
    CHECK(sample(parsed, "keepsake_unit_crashes_total{unit=\"solo\"}") == 1);
    CHECK(sample(parsed, "keepsake_unit_restarts_total{unit=\"solo\"}") == 0);
    CHECK(sample(parsed, "keepsake_unit_starts_total{unit=\"alice\"}") == 1);
    const keepsake::unit_stats stats = unit.stats();
    CHECK(stats.commits == 8);  // eight adds; the total read commits nothing, the crash neither
    CHECK(sample(parsed, "keepsake_unit_commits_total{unit=\"alice\"}") == stats.commits);
    CHECK(sample(parsed, "keepsake_unit_messages_total{unit=\"alice\"}") == stats.messages);
    CHECK(sample(parsed, "keepsake_unit_generation{unit=\"alice\"}") == stats.generation);
    CHECK(sample(parsed, "keepsake_unit_queue_depth{unit=\"alice\"}") == 0);
    CHECK(sample(parsed, "keepsake_supervisor_restarts_total{supervisor=\"accounts\"}") == 0);
    // alice's state (solo never committed), and the unit registry's records:
    // both units' records and both crash histories.
    CHECK(sample(parsed, "keepsake_export_records_total" + label) == 5);
    CHECK(sample(parsed, "keepsake_export_store_failures_total" + label) == 0);
    const double lag = sample(parsed, "keepsake_export_lag_seconds" + label);
    CHECK(lag >= 0);
    CHECK(lag < 60);
    CHECK(parsed.types.at("keepsake_unit_crashes_total") == "counter");
    CHECK(parsed.types.at("keepsake_unit_queue_depth") == "gauge");
    for (const auto& [family, type] : parsed.types)
        if (type == "counter") CHECK(family.size() > 6);
    for (const auto& [family, type] : parsed.types)
        if (type == "counter") CHECK(family.compare(family.size() - 6, 6, "_total") == 0);

    // A unit that is gone is no longer reported.
    accounts.terminate_child("alice");
    accounts.delete_child("alice");
    unit = keepsake::unit<tally, tally_handler>();
    const exposition after = parse_prometheus(keepsake::prometheus_text(harness.rt));
    CHECK(after.samples.count("keepsake_unit_commits_total{unit=\"alice\"}") == 0);
    CHECK(after.samples.count("keepsake_unit_commits_total{unit=\"solo\"}") == 1);
    CHECK(sample(after, "keepsake_units{state=\"running\"}") == 0);
    CHECK(after.types.count("keepsake_export_lag_seconds") == 0);  // no exporter given

    // One its supervisor deleted leaves, though a handle keeps it; started
    // again under its name, it is one series (the parser refuses two).
    keepsake::unit_spec<tally, tally_handler> kid;
    kid.name = "kid";
    accounts.start_child(keepsake::child(kid));
    auto kept = *keepsake::whereis<tally, tally_handler>(harness.rt, "kid");
    const std::string kid_series = "keepsake_unit_commits_total{unit=\"kid\"}";
    CHECK(parse_prometheus(keepsake::prometheus_text(harness.rt)).samples.count(kid_series) == 1);
    accounts.terminate_child("kid");
    accounts.delete_child("kid");
    CHECK(parse_prometheus(keepsake::prometheus_text(harness.rt)).samples.count(kid_series) == 0);
    accounts.start_child(keepsake::child(kid));
    CHECK(parse_prometheus(keepsake::prometheus_text(harness.rt)).samples.count(kid_series) == 1);
    CHECK(kept.state() == keepsake::child_state::not_running);

    // Samples come by name, not in the order the units were made.
    auto bob = keepsake::start_unit(harness.rt, tally_spec("bob", 0, true));
    const std::string by_name = keepsake::prometheus_text(harness.rt);
    const auto bob_at = by_name.find("keepsake_unit_commits_total{unit=\"bob\"}");
    const auto solo_at = by_name.find("keepsake_unit_commits_total{unit=\"solo\"}");
    REQUIRE(bob_at != std::string::npos);
    REQUIRE(solo_at != std::string::npos);
    CHECK(bob_at < solo_at);
}

TEST_CASE("the Prometheus parser of these tests rejects what a server would", "[metrics]") {
    CHECK_THROWS(parse_prometheus("x 1\n"));                                        // no TYPE
    CHECK_THROWS(parse_prometheus("# TYPE x gauge\nx{a=\"b} 1\n"));                // unterminated
    CHECK_THROWS(parse_prometheus("# TYPE x gauge\nx{a=\"\\q\"} 1\n"));            // bad escape
    CHECK_THROWS(parse_prometheus("# TYPE x gauge\nx 1\nx 2\n"));                   // twice
    CHECK_THROWS(parse_prometheus("# TYPE x gauge\n# TYPE y gauge\nx 1\n"));        // before its TYPE
    CHECK_THROWS(parse_prometheus("# TYPE 1x gauge\n"));                            // bad name
    CHECK_THROWS(parse_prometheus("# TYPE x gauge\nx one\n"));                      // bad value
    const exposition ok = parse_prometheus("# HELP x h\n# TYPE x gauge\nx{a=\"\\\"q\\\\\\n\"} +Inf\n");
    CHECK(std::isinf(ok.samples.at("x{a=\"\"q\\\n\"}")));
}

}  // namespace ecosystem_tests
