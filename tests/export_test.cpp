// The exporter and recovery: coalescing, flush and stop, retries with zero
// loss through a fault-injecting store, a full disk, a reboot, SIGKILL
// during export, damaged and too-new records, terminate-and-delete.
#include <catch2/catch.hpp>

#include <condition_variable>
#include <fstream>
#include <mutex>
#include <new>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <keepsake/keepsake.hpp>
#include <keepsake/stores/faulty_store.hpp>
#include <keepsake/stores/file_store.hpp>
#include <keepsake/stores/memory_store.hpp>
#include <keepsake/stores/sqlite_store.hpp>
#include <spdlog/sinks/sink.h>

#include "support.hpp"

namespace export_tests {  // a unity build's sources keep their names apart (tests/CMakeLists.txt)

using keepsake::errc;
using keepsake::exporter;
using keepsake::keeper;
using keepsake::recovery_source;
using keepsake::segment;
using test_support::blob;
using test_support::error_from;
using test_support::shm_dir;
using test_support::temp_dir;
using namespace std::chrono_literals;

namespace {

using state64 = blob<64>;

state64 state_at(std::uint64_t generation) {
    state64 value{};
    state64::make(value, generation);
    return value;
}

// The blob a store record holds; its own words say whether it is whole.
template <std::size_t N>
blob<N> blob_of(const keepsake::record& r) {
    keepsake::stored_record view;
    view.codec = static_cast<keepsake::codec_kind>(r.codec);
    view.data = r.bytes.data();
    view.size = r.bytes.size();
    return keepsake::decode_as<blob<N>>(view);
}

// Commits the blob of its own generation, so store contents can be checked.
template <std::size_t N>
std::uint64_t commit_next(keeper<blob<N>>& k) {
    blob<N> value{};
    blob<N>::make(value, k.generation() + 1);
    return k.commit(value);
}

// Events seen on the exporter's thread, for the test's thread to read.
struct event_log {
    std::mutex mutex;
    std::vector<keepsake::export_event> events;

    std::function<void(const keepsake::export_event&)> sink() {
        return [this](const keepsake::export_event& event) {
            std::lock_guard<std::mutex> lock(mutex);
            events.push_back(event);
        };
    }
    std::size_t count(keepsake::export_event_kind kind) {
        std::lock_guard<std::mutex> lock(mutex);
        return static_cast<std::size_t>(
            std::count_if(events.begin(), events.end(), [&](const auto& e) { return e.kind == kind; }));
    }
    std::vector<keepsake::export_event> of(keepsake::export_event_kind kind) {
        std::lock_guard<std::mutex> lock(mutex);
        std::vector<keepsake::export_event> found;
        for (const auto& e : events)
            if (e.kind == kind) found.push_back(e);
        return found;
    }
};

// A memory store whose put_batch blocks, once entered, until release().
class gated_store : public keepsake::memory_store {
public:
    std::vector<std::size_t> put_batch(const std::vector<keepsake::record>& records) override {
        {
            std::unique_lock<std::mutex> lock(mutex_);
            ++entered_;
            changed_.notify_all();
            changed_.wait(lock, [&] { return open_; });
        }
        auto skipped = memory_store::put_batch(records);
        std::lock_guard<std::mutex> lock(mutex_);
        ++returned_;
        return skipped;
    }
    void wait_until_entered() {
        std::unique_lock<std::mutex> lock(mutex_);
        changed_.wait(lock, [&] { return entered_ > 0; });
    }
    void release() {
        std::lock_guard<std::mutex> lock(mutex_);
        open_ = true;
        changed_.notify_all();
    }
    int returned() {
        std::lock_guard<std::mutex> lock(mutex_);
        return returned_;
    }

private:
    std::mutex mutex_;
    std::condition_variable changed_;
    bool open_ = false;
    int entered_ = 0;
    int returned_ = 0;
};

// Events seen on a bus (from the exporter's thread too), copied.
struct seen_event {
    keepsake::event_kind kind;
    std::string supervisor, child, reason;
    std::uint64_t instance;
    keepsake::duration at, took;
};

struct bus_log {
    keepsake::event_bus bus;
    std::mutex mutex;
    std::vector<seen_event> seen;

    bus_log() {
        bus.subscribe([this](const keepsake::event& what) {
            std::lock_guard<std::mutex> lock(mutex);
            seen.push_back(seen_event{what.kind, std::string(what.supervisor), std::string(what.child),
                                      std::string(what.reason), what.instance, what.at, what.took});
        });
    }
    std::vector<seen_event> of(keepsake::event_kind kind) {
        std::lock_guard<std::mutex> lock(mutex);
        std::vector<seen_event> found;
        for (const auto& e : seen)
            if (e.kind == kind) found.push_back(e);
        return found;
    }
};

keepsake::duration steady_now() { return keepsake::steady_clock().now(); }

// A storage telemetry event (no runtime: stamped with the steady clock).
void check_storage_event(const seen_event& e, const char* supervisor, const std::string& child,
                         const std::string& reason, keepsake::duration since) {
    CHECK(e.supervisor == supervisor);
    CHECK(e.child == child);
    CHECK(e.reason == reason);
    CHECK(e.took > keepsake::duration::zero());
    CHECK(e.at >= since);
    CHECK(e.at <= steady_now());
}

// An spdlog sink that keeps each line's level and text, unformatted.
class captured_lines : public spdlog::sinks::sink {
public:
    void log(const spdlog::details::log_msg& msg) override {
        std::lock_guard<std::mutex> lock(mutex_);
        lines.emplace_back(msg.level, std::string(msg.payload.data(), msg.payload.size()));
    }
    void flush() override {}
    void set_pattern(const std::string&) override {}
    void set_formatter(std::unique_ptr<spdlog::formatter>) override {}

    std::vector<std::pair<spdlog::level::level_enum, std::string>> lines;

private:
    std::mutex mutex_;
};

keepsake::exporter_options quiet_options(event_log* log = nullptr) {
    keepsake::exporter_options options;
    options.interval = 1h;  // passes only when asked, so counts are exact
    options.retry_min = 1ms;
    options.retry_max = 8ms;
    if (log) options.on_event = log->sink();
    return options;
}

} // namespace

TEST_CASE("exporter copies newest generations, coalesced, durable at flush", "[export]") {
    shm_dir dir;
    segment s("export", dir.options());
    keepsake::memory_store store;
    keeper<state64> a(s, "a"), b(s, "b");
    exporter out(s, store, quiet_options());
    commit_next(a);
    commit_next(b);
    commit_next(b);
    REQUIRE(out.flush(5s));
    CHECK(store.get("a")->generation == 1);
    CHECK(blob_of<64>(*store.get("b")).generation == 2);
    CHECK(store.records_put() == 2);
    for (int i = 0; i < 1000; ++i) commit_next(a);
    REQUIRE(out.flush(5s));
    CHECK(store.records_put() == 3);  // 1000 commits, one write
    CHECK(blob_of<64>(*store.get("a")).generation == 1001);
    CHECK(blob_of<64>(*store.get("a")).consistent());
    REQUIRE(out.flush(5s));
    CHECK(store.records_put() == 3);  // nothing changed, nothing written
    CHECK(out.stats().records == 3);
}

TEST_CASE("exporter copies whole states while a worker commits", "[export]") {
    shm_dir dir;
    segment s("busy", dir.options(4u << 20));
    keepsake::memory_store store;
    keeper<blob<4096>> k(s, "big");
    exporter out(s, store, quiet_options());
    std::atomic<bool> done{false};
    std::atomic<bool> started{false};
    std::thread worker([&] {
        commit_next(k);
        started = true;
        while (!done.load(std::memory_order_relaxed)) commit_next(k);
    });
    while (!started) std::this_thread::yield();
    std::uint64_t last = 0;
    int checked = 0;
    for (int i = 0; i < 200; ++i) {
        REQUIRE(out.flush(5s));
        const auto got = store.get("big");
        REQUIRE(got);
        const auto value = blob_of<4096>(*got);
        REQUIRE(value.consistent());
        REQUIRE(value.generation == got->generation);
        REQUIRE(got->generation >= last);
        last = got->generation;
        ++checked;
    }
    done = true;
    worker.join();
    CHECK(checked == 200);
    CHECK(last > 1);
}

TEST_CASE("store failures are retried with backoff until nothing is lost", "[export]") {
    shm_dir dir;
    segment s("retry", dir.options());
    keepsake::memory_store inner;
    keepsake::faulty_store faulty(inner);
    faulty.fail_every(3);
    faulty.fail_halfway(true);
    event_log log;
    auto options = quiet_options(&log);
    options.batch_size = 4;
    keepsake::event_bus bus;  // as a runtime's events()
    std::mutex bus_mutex;
    std::vector<std::string> bus_seen;
    std::uint64_t batches_seen = 0;
    bus.subscribe([&](const keepsake::event& what) {
        std::lock_guard<std::mutex> lock(bus_mutex);
        if (what.kind == keepsake::event_kind::export_batch) {
            ++batches_seen;
            return;
        }
        bus_seen.push_back(std::string(keepsake::to_string(what.kind)) + " " + std::string(what.supervisor) + " " +
                           std::string(what.reason));
    });
    options.events = &bus;
    exporter out(s, faulty, options);
    std::vector<std::unique_ptr<keeper<state64>>> keepers;
    for (int i = 0; i < 30; ++i) keepers.push_back(std::make_unique<keeper<state64>>(s, "k" + std::to_string(i)));
    for (auto kind : {keepsake::fault_kind::store_error, keepsake::fault_kind::foreign,
                      keepsake::fault_kind::disk_full}) {
        faulty.fail_with(kind);
        for (int round = 0; round < 3; ++round) {
            for (auto& k : keepers) commit_next(*k);
            REQUIRE(out.flush(10s));
            for (auto& k : keepers) REQUIRE(inner.get(k->key())->generation == k->generation());
        }
    }
    CHECK(faulty.failures() >= 5);
    CHECK(log.count(keepsake::export_event_kind::store_failed) == faulty.failures());
    std::lock_guard<std::mutex> lock(log.mutex);
    const auto failed = std::find_if(log.events.begin(), log.events.end(), [](const auto& e) {
        return e.kind == keepsake::export_event_kind::store_failed;
    });
    CHECK(failed->message.find("injected failure") != std::string::npos);
    CHECK(failed->retry_in >= 1ms);
    std::lock_guard<std::mutex> bus_lock(bus_mutex);
    CHECK(bus_seen.size() == faulty.failures());  // every failure also reached the event bus
    CHECK(batches_seen == out.stats().batches);    // and every batch put
    REQUIRE_FALSE(bus_seen.empty());
    CHECK(bus_seen.front().rfind("export_failed exporter ", 0) == 0);
    CHECK(bus_seen.front().find("injected failure") != std::string::npos);
}

TEST_CASE("a stalled store never holds up a commit, and stop reports its timeout", "[export]") {
    shm_dir dir;
    segment s("stall", dir.options());
    gated_store stalled;
    event_log log;
    auto out = std::make_unique<exporter>(s, stalled, quiet_options(&log));
    keeper<state64> k(s, "k");
    commit_next(k);
    CHECK_FALSE(out->flush(50ms));  // the store cannot finish its first call
    stalled.wait_until_entered();   // the exporter's thread is inside put_batch, blocked
    for (int i = 0; i < 2000; ++i) commit_next(k);
    CHECK(k.generation() == 2001);      // every commit completed...
    CHECK(stalled.returned() == 0);     // ...while the store's put was still blocked
    CHECK(stalled.get("k") == std::nullopt);
    stalled.release();
    CHECK_FALSE(out->stop(0ms));  // no time for another pass: generation 2001 stays behind
    CHECK(log.count(keepsake::export_event_kind::timed_out) == 1);
    CHECK(error_from([&] { (void)out->flush(1s); }).code() == errc::not_running);
    std::lock_guard<std::mutex> lock(log.mutex);
    CHECK(log.events.back().records == 1);  // the key left behind
}

TEST_CASE("stop exports everything committed before it returns", "[export]") {
    shm_dir dir;
    temp_dir disk;
    segment s("stop", dir.options());
    keepsake::sqlite_store store(disk.path() + "/s.db");
    auto options = quiet_options();
    options.prefix = "prog/";
    exporter out(s, store, options);
    keeper<state64> a(s, "a"), b(s, "b");
    for (int i = 0; i < 10; ++i) commit_next(a);
    commit_next(b);
    CHECK(out.stop(5s));
    CHECK(store.get("prog/a")->generation == 10);
    CHECK(store.get("prog/b")->generation == 1);
    CHECK(store.list("") == std::vector<std::string>{"prog/a", "prog/b"});
}

TEST_CASE("a reboot: with the segment gone, the state comes from the store", "[export][recovery]") {
    shm_dir dir;
    temp_dir disk;
    keepsake::file_store store(disk.path());
    {
        segment s("reboot", dir.options());
        keeper<state64> k(s, "k");
        CHECK(keepsake::recover(k, store, state_at(0)).source == recovery_source::initial);
        exporter out(s, store, quiet_options());
        for (int i = 0; i < 41; ++i) commit_next(k);
        REQUIRE(out.stop(5s));
    }
    REQUIRE(segment::remove("reboot", dir.path()));  // what a reboot does to /dev/shm
    segment s("reboot", dir.options());
    REQUIRE(s.outcome() == keepsake::open_outcome::created);
    keeper<state64> k(s, "k");
    const auto got = keepsake::recover(k, store, state_at(0));
    CHECK(got.source == recovery_source::store);
    CHECK(got.store_generation == 42);
    CHECK(got.generation == 43);  // one above the store's, so it is exported back
    CHECK(got.value.generation == 42);
    CHECK(got.value.consistent());
    CHECK(k.restore()->info.generation == 43);  // seeded into shared memory
    exporter out(s, store, quiet_options());
    REQUIRE(out.flush(5s));
    CHECK(store.get("k")->generation == 43);
    commit_next(k);  // carries on above the store's generation, so it is exported
    REQUIRE(out.flush(5s));
    CHECK(store.get("k")->generation == 44);
}

TEST_CASE("recovery takes the newest valid of shared memory and store", "[recovery]") {
    shm_dir dir;
    keepsake::memory_store store;
    segment s("newest", dir.options());
    keeper<state64> k(s, "k");
    for (int i = 0; i < 5; ++i) commit_next(k);
    keepsake::record older;
    {
        exporter out(s, store, quiet_options());
        REQUIRE(out.flush(5s));
        older = *store.get("k");
    }
    commit_next(k);  // shared memory is now ahead of the store
    auto got = keepsake::recover(k, store, state_at(0));
    CHECK(got.source == recovery_source::shared_memory);
    CHECK(got.generation == 6);
    CHECK(got.store_generation == 5);
    keepsake::record newer = older;
    newer.generation = 9;  // the store ahead: another host exported later
    store.put_batch({newer});
    got = keepsake::recover(k, store, state_at(0));
    CHECK(got.source == recovery_source::store);
    CHECK(got.value.generation == 5);  // the bytes the record holds
    CHECK(got.generation == 10);
}

TEST_CASE("a damaged store record: a clear error, and the older valid copy is used", "[recovery]") {
    shm_dir dir;
    temp_dir disk;
    segment s("damaged", dir.options());
    keeper<state64> k(s, "k");
    for (int i = 0; i < 3; ++i) commit_next(k);
    const std::string db = disk.path() + "/s.db";
    keepsake::sqlite_store store(db);
    {
        exporter out(s, store, quiet_options());
        REQUIRE(out.flush(5s));
    }
    keepsake::record bad = *store.get("k");
    {
        keepsake::sqlite_store raw(db);  // damage: a row whose checksum cannot hold
        sqlite3* handle = nullptr;
        REQUIRE(sqlite3_open(db.c_str(), &handle) == SQLITE_OK);
        REQUIRE(sqlite3_exec(handle, "UPDATE keepsake_records SET generation = 50", nullptr, nullptr, nullptr) ==
                SQLITE_OK);
        sqlite3_close(handle);
    }
    CHECK(error_from([&] { store.get("k"); }).code() == errc::record_corrupt);
    const auto got = keepsake::recover(k, store, state_at(0));
    CHECK(got.source == recovery_source::shared_memory);
    CHECK(got.generation == 3);
    REQUIRE(got.problems.size() == 1);
    CHECK(got.problems[0].find("checksum") != std::string::npos);
    exporter out(s, store, quiet_options());  // the valid copy takes the damaged one's place
    REQUIRE(out.flush(5s));
    CHECK(store.get("k")->generation == 3);
}

namespace {
// Damages the page holding the records' table (page 2: page 1 is the
// schema, so the store still opens) after folding the WAL into the file.
void damage_records_page(const std::string& db) {
    sqlite3* handle = nullptr;
    REQUIRE(sqlite3_open(db.c_str(), &handle) == SQLITE_OK);
    REQUIRE(sqlite3_exec(handle, "PRAGMA wal_checkpoint(TRUNCATE)", nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(handle);
    std::fstream io(db, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(4096);
    const std::string garbage(4096, '\x5a');
    io.write(garbage.data(), static_cast<std::streamsize>(garbage.size()));
}
} // namespace

TEST_CASE("a store that cannot be read never blocks a restart from shared memory", "[recovery][store]") {
    shm_dir dir;
    temp_dir disk;
    segment s("blocked", dir.options());
    keeper<state64> k(s, "k");
    const std::string db = disk.path() + "/s.db";
    for (int i = 0; i < 3; ++i) commit_next(k);
    {
        keepsake::sqlite_store store(db);
        exporter out(s, store, quiet_options());
        REQUIRE(out.flush(5s));
    }
    commit_next(k);  // generation 4 in shared memory, 3 in the store
    damage_records_page(db);
    keepsake::sqlite_store store(db);  // opens: the schema page is whole
    CHECK(error_from([&] { store.get("k"); }).code() == errc::store_failed);
    SECTION("shared memory holds a state: it is taken, and the store's error is reported") {
        const auto got = keepsake::recover(k, store, state_at(0));
        CHECK(got.source == recovery_source::shared_memory);
        CHECK(got.generation == 4);
        CHECK(got.value.generation == 4);
        CHECK(got.store_unreadable);
        REQUIRE(got.problems.size() == 1);
        CHECK(got.problems[0].find("could not be read") != std::string::npos);
        CHECK(got.problems[0].find(db) != std::string::npos);
    }
    SECTION("with nothing in shared memory, the store's error is what recovery reports") {
        keeper<state64> fresh(s, "never-committed");
        CHECK(error_from([&] { keepsake::recover(fresh, store, state_at(0)); }).code() == errc::store_failed);
    }
}

namespace {
// A store a user wrote (the README invites them): its get() throws what a
// C++ library throws, not a keepsake::error.
class throwing_store : public keepsake::memory_store {
public:
    bool out_of_memory = false;
    std::optional<keepsake::record> get(const std::string&) override {
        if (out_of_memory) throw std::bad_alloc();
        throw std::runtime_error("user store: the disk went away");
    }
};
} // namespace

TEST_CASE("a user's store whose get() throws a std::exception is a store that cannot be read", "[recovery][store]") {
    shm_dir dir;
    segment s("user-store", dir.options());
    throwing_store store;
    keeper<state64> k(s, "k");
    commit_next(k);
    commit_next(k);
    SECTION("std::runtime_error, shared memory holds a state: it is taken, and the store's message is reported") {
        const auto got = keepsake::recover(k, store, state_at(0));
        CHECK(got.source == recovery_source::shared_memory);
        CHECK(got.generation == 2);
        CHECK(got.value.generation == 2);
        CHECK(got.store_unreadable);
        CHECK(got.store_generation == 0);
        REQUIRE(got.problems.size() == 1);
        CHECK(got.problems[0].find("could not be read") != std::string::npos);
        CHECK(got.problems[0].find("user store: the disk went away") != std::string::npos);
    }
    SECTION("std::bad_alloc, shared memory holds a state: the same") {
        store.out_of_memory = true;
        const auto got = keepsake::recover(k, store, state_at(0));
        CHECK(got.source == recovery_source::shared_memory);
        CHECK(got.generation == 2);
        CHECK(got.store_unreadable);
        REQUIRE(got.problems.size() == 1);
        CHECK(got.problems[0].find(std::bad_alloc().what()) != std::string::npos);
    }
    SECTION("with nothing in shared memory, a keepsake::error carries the store's message") {
        keeper<state64> fresh(s, "never-committed");
        const keepsake::error failure = error_from([&] { keepsake::recover(fresh, store, state_at(0)); });
        CHECK(failure.code() == errc::store_failed);
        const std::string message = failure.what();
        CHECK(message.find("user store: the disk went away") != std::string::npos);
        CHECK(message.find("never-committed") != std::string::npos);
        CHECK(message.find("memory store") != std::string::npos);
        CHECK_FALSE(fresh.restore());  // nothing was committed in its place
    }
}

TEST_CASE("a store record at the top of the generation range is damage, never committed above", "[recovery]") {
    shm_dir dir;
    keepsake::memory_store store;
    segment s("top", dir.options());
    int round = 0;
    for (const std::uint64_t generation : {~std::uint64_t{0}, ~std::uint64_t{0} - 1, keepsake::detail::max_generation}) {
        CAPTURE(generation);
        const std::string key = "k" + std::to_string(round++);
        keeper<state64> k(s, key);
        keepsake::record forged;
        forged.key = key;
        forged.generation = generation;
        forged.schema_version = 1;
        forged.codec = static_cast<std::uint32_t>(keepsake::codec_of<state64>());
        forged.fingerprint = keepsake::type_fingerprint<state64>();
        forged.bytes.resize(sizeof(state64));
        store.put_batch({forged});
        const auto got = keepsake::recover(k, store, state_at(7));
        CHECK(got.source == recovery_source::initial);
        CHECK(got.problems.size() == 1);
        CHECK_FALSE(store.get(key));  // the damaged record was removed
        CHECK(k.restore()->info.generation == got.generation);
        CHECK(k.commit(state_at(8)) == got.generation + 1);
        CHECK(k.restore()->info.generation == got.generation + 1);
    }
}

TEST_CASE("a truncated store file with nothing else valid gives the initial state", "[recovery]") {
    shm_dir dir;
    temp_dir disk;
    keepsake::file_store store(disk.path());
    store.put_batch({[] {
        keepsake::record r;
        r.key = "k";
        r.generation = 4;
        return r;
    }()});
    { std::ofstream(store.path_of("k"), std::ios::binary | std::ios::trunc) << "KKEP"; }
    segment s("truncated", dir.options());
    keeper<state64> k(s, "k");
    const auto got = keepsake::recover(k, store, state_at(77));
    CHECK(got.source == recovery_source::initial);
    CHECK(got.value.generation == 77);
    CHECK(got.generation == 1);
    CHECK(got.problems.size() == 1);
}

namespace {

struct old_state {
    std::uint32_t hits;
};
struct new_state {
    std::uint64_t hits;
    std::uint64_t misses;
};

} // namespace

TEST_CASE("versioned records: older ones are upgraded, newer ones refused untouched", "[recovery]") {
    shm_dir dir;
    keepsake::memory_store store;
    {
        segment s("v1", dir.options());
        keeper<old_state> k(s, "k");
        k.commit(old_state{12});
        exporter out(s, store, quiet_options());
        REQUIRE(out.flush(5s));
    }
    segment s("v2", dir.options());
    keepsake::keeper_options<new_state> options;
    options.schema_version = 2;
    options.upgrade = [](const keepsake::stored_record& old) {
        return new_state{keepsake::decode_as<old_state>(old).hits, 0};
    };
    {
        keeper<new_state> k(s, "k", options);
        const auto got = keepsake::recover(k, store, new_state{});
        CHECK(got.source == recovery_source::store);
        CHECK(got.value.hits == 12);
        CHECK(got.generation == 2);  // upgraded: exported back above the old record
    }
    s.remove_key("k");  // without a hook another type is refused, not reinterpreted
    keeper<new_state> plain(s, "k");
    CHECK(error_from([&] { keepsake::recover(plain, store, new_state{}); }).code() == errc::type_mismatch);

    keepsake::record future = *store.get("k");
    future.schema_version = 7;
    future.generation = 2;
    store.put_batch({future});
    const keepsake::error too_new = error_from([&] {
        segment other("v3", dir.options());
        keeper<new_state> k(other, "k", options);
        keepsake::recover(k, store, new_state{});
    });
    CHECK(too_new.code() == errc::version_too_new);
    CHECK(std::string(too_new.what()).find("schema version 7") != std::string::npos);
    const auto kept = store.get("k");
    CHECK(kept->schema_version == 7);
    CHECK(kept->bytes == future.bytes);
}

TEST_CASE("terminate-and-delete removes a key from shared memory and the store", "[export]") {
    shm_dir dir;
    keepsake::memory_store store;
    segment s("forget", dir.options());
    exporter out(s, store, quiet_options());
    {
        keeper<state64> k(s, "gone");
        commit_next(k);
        REQUIRE(out.flush(5s));
        CHECK(error_from([&] { out.forget("gone"); }).code() == errc::key_in_use);
    }
    CHECK(out.forget("gone"));
    CHECK_FALSE(store.get("gone"));
    CHECK(s.entries().empty());
    REQUIRE(out.flush(5s));
    CHECK_FALSE(store.get("gone"));  // no pass brings it back
    CHECK_FALSE(out.forget("gone"));
    keeper<state64> again(s, "gone");
    CHECK(keepsake::recover(again, store, state_at(5)).source == recovery_source::initial);
    CHECK(keepsake::forget(s, store, "other") == false);
}

TEST_CASE("storage telemetry: each export batch and each forget is published with how long it took",
          "[export][events]") {
    shm_dir dir;
    segment s("telemetry", dir.options());
    keepsake::memory_store store;
    bus_log events;
    auto options = quiet_options();
    options.batch_size = 4;
    options.events = &events.bus;
    exporter out(s, store, options);
    std::vector<std::unique_ptr<keeper<state64>>> keepers;
    for (int i = 0; i < 10; ++i) {
        keepers.push_back(std::make_unique<keeper<state64>>(s, "k" + std::to_string(i)));
        commit_next(*keepers.back());
    }
    const keepsake::duration before = steady_now();
    REQUIRE(out.flush(5s));
    const auto batches = events.of(keepsake::event_kind::export_batch);
    REQUIRE(batches.size() == 3);
    CHECK(batches[0].instance == 4);
    CHECK(batches[1].instance == 4);
    CHECK(batches[2].instance == 2);
    for (const auto& batch : batches) check_storage_event(batch, "exporter", store.describe(), "", before);
    REQUIRE(out.flush(5s));
    CHECK(events.of(keepsake::event_kind::export_batch).size() == 3);  // nothing changed, nothing put

    keepers.back().reset();
    CHECK(out.forget("k9"));
    CHECK_FALSE(out.forget("never"));
    CHECK(error_from([&] { out.forget("k0"); }).code() == errc::key_in_use);  // no event: nothing forgotten
    const auto forgotten = events.of(keepsake::event_kind::forgotten);
    REQUIRE(forgotten.size() == 2);
    check_storage_event(forgotten[0], "forget", "k9", "segment, store", before);
    check_storage_event(forgotten[1], "forget", "never", "nowhere", before);
    CHECK(events.of(keepsake::event_kind::export_failed).empty());
}

TEST_CASE("storage telemetry: a batch with records the store refused says how many", "[export][events]") {
    shm_dir dir;
    segment s("skipped", dir.options());
    keepsake::memory_store store;
    keepsake::record ahead;  // the store holds a newer generation of "k": its commit is refused
    ahead.key = "k";
    ahead.generation = 50;
    store.put_batch({ahead});
    bus_log events;
    auto options = quiet_options();
    options.events = &events.bus;
    exporter out(s, store, options);
    keeper<state64> k(s, "k"), other(s, "other");
    commit_next(k);
    commit_next(other);
    CHECK_FALSE(out.flush(5s));
    const auto batches = events.of(keepsake::event_kind::export_batch);
    REQUIRE(batches.size() == 1);
    CHECK(batches[0].instance == 2);
    check_storage_event(batches[0], "exporter", store.describe(), "skipped 1", keepsake::duration::zero());
    CHECK(events.of(keepsake::event_kind::export_failed).size() == 1);  // the refusal itself
}

TEST_CASE("storage telemetry: recover() and forget() given a bus publish what they did", "[recovery][events]") {
    shm_dir dir;
    segment s("told", dir.options());
    keepsake::memory_store store;
    bus_log events;
    const keepsake::duration before = steady_now();
    {
        keeper<state64> k(s, "k");
        const auto fresh = keepsake::recover(k, store, state_at(0), "p/", &events.bus);
        CHECK(fresh.source == recovery_source::initial);
        for (int i = 0; i < 4; ++i) commit_next(k);
        auto options = quiet_options();
        options.prefix = "p/";
        exporter out(s, store, options);
        REQUIRE(out.stop(5s));
    }
    REQUIRE(s.remove_key("k"));  // the store's record is all that is left
    keeper<state64> k(s, "k");
    const auto got = keepsake::recover(k, store, state_at(0), "p/", &events.bus);
    CHECK(got.source == recovery_source::store);
    (void)keepsake::recover(k, store, state_at(0), "p/");  // no bus, no event
    const auto recovered = events.of(keepsake::event_kind::recovered);
    REQUIRE(recovered.size() == 2);
    check_storage_event(recovered[0], "recovery", "k", "initial", before);  // the segment key: no prefix
    CHECK(recovered[0].instance == 1);
    check_storage_event(recovered[1], "recovery", "k", "store", before);
    CHECK(recovered[1].instance == got.generation);
    CHECK_THROWS(keepsake::forget(s, store, "k", "p/", &events.bus));  // a keeper holds it: no event
    CHECK(events.of(keepsake::event_kind::forgotten).empty());
    {
        keeper<state64> gone = std::move(k);
    }
    CHECK(keepsake::forget(s, store, "k", "p/", &events.bus));
    CHECK_FALSE(store.get("p/k"));
    const auto forgotten = events.of(keepsake::event_kind::forgotten);
    REQUIRE(forgotten.size() == 1);
    check_storage_event(forgotten[0], "forget", "k", "segment, store", before);
}

TEST_CASE("log_events logs the storage events with how long they took", "[events]") {
    const auto previous = keepsake::logger();
    auto lines = std::make_shared<captured_lines>();
    auto logger = std::make_shared<spdlog::logger>("telemetry", lines);
    logger->set_level(spdlog::level::debug);
    keepsake::set_logger(logger);
    keepsake::event_bus bus;
    keepsake::log_events(bus);
    using keepsake::event_kind;
    using keepsake::exit_kind;
    bus.publish({event_kind::recovered, "recovery", "k", 43, exit_kind::normal, "store", {}, 1234567ns});
    bus.publish({event_kind::export_batch, "exporter", "memory store", 12, exit_kind::normal, "skipped 1", {}, 340200ns});
    bus.publish({event_kind::export_batch, "exporter", "memory store", 3, exit_kind::normal, "", {}, 800ns});
    bus.publish({event_kind::forgotten, "forget", "k", 0, exit_kind::normal, "segment, store", {}, 2500ms});
    keepsake::set_logger(previous);
    REQUIRE(lines->lines.size() == 4);
    CHECK(lines->lines[0].first == spdlog::level::info);
    CHECK(lines->lines[0].second == "recovery: recovered 'k' from store at generation 43 in 1.235 ms");
    CHECK(lines->lines[1].first == spdlog::level::debug);
    CHECK(lines->lines[1].second == "exporter: export_batch to memory store: 12 record(s) (skipped 1) in 340.2 us");
    CHECK(lines->lines[2].second == "exporter: export_batch to memory store: 3 record(s) in 0.8 us");
    CHECK(lines->lines[3].first == spdlog::level::info);
    CHECK(lines->lines[3].second == "forget: forgotten 'k' (segment, store) in 2.500 s");
}

TEST_CASE("a full disk: the export waits and retries, and loses nothing", "[export][disk]") {
    shm_dir dir;
    temp_dir mount;
    if (std::system(("mount -t tmpfs -o size=64k keepsake-store " + mount.path() + " 2>/dev/null").c_str()) != 0) {
        WARN("cannot mount a small tmpfs here (needs root); the injected disk_full path covers this case");
        return;
    }
    struct unmount {
        std::string at;
        ~unmount() { (void)std::system(("umount " + at).c_str()); }
    } cleanup{mount.path()};
    keepsake::file_store store(mount.path() + "/store");
    segment s("full", dir.options(2u << 20));
    event_log log;
    exporter out(s, store, quiet_options(&log));
    std::vector<std::unique_ptr<keeper<blob<4096>>>> keepers;
    for (int i = 0; i < 24; ++i) {  // 24 x 4 KiB, with .prev copies: more than 64 KiB
        keepers.push_back(std::make_unique<keeper<blob<4096>>>(s, "k" + std::to_string(i)));
        commit_next(*keepers.back());
        commit_next(*keepers.back());
    }
    CHECK_FALSE(out.flush(300ms));
    REQUIRE(log.count(keepsake::export_event_kind::store_failed) > 0);
    {
        std::lock_guard<std::mutex> lock(log.mutex);
        CHECK(log.events.back().message.find("No space left") != std::string::npos);
    }
    REQUIRE(std::system(("mount -o remount,size=2m " + mount.path()).c_str()) == 0);
    REQUIRE(out.flush(10s));
    for (auto& k : keepers) {
        const auto got = store.get(k->key());
        REQUIRE(got->generation == 2);
        REQUIRE(blob_of<4096>(*got).consistent());
    }
}

TEST_CASE("a key re-created below the store's generation is reported, not counted as exported", "[export]") {
    shm_dir dir;
    segment s("recreated", dir.options());
    keepsake::memory_store store;
    event_log log;
    exporter out(s, store, quiet_options(&log));
    {
        keeper<state64> old(s, "k");
        for (int i = 0; i < 10; ++i) commit_next(old);
        REQUIRE(out.flush(5s));
    }
    REQUIRE(s.remove_key("k"));  // not forgotten: the store keeps generation 10
    REQUIRE(store.get("k")->generation == 10);

    SECTION("a lower generation") {
        keeper<state64> k(s, "k");
        commit_next(k);  // generation 1
        CHECK_FALSE(out.flush(5s));
        const auto stale = log.of(keepsake::export_event_kind::stale_generation);
        REQUIRE(stale.size() == 1);
        CHECK(stale[0].key == "k");
        CHECK(stale[0].generation == 1);
        CHECK(stale[0].store_generation == 10);
        CHECK(stale[0].message.find("key 'k'") != std::string::npos);
        CHECK(stale[0].message.find("recover()") != std::string::npos);
        CHECK(stale[0].message.find("exporter::forget()") != std::string::npos);
        CHECK(out.stats().refused == 1);
        CHECK(store.get("k")->generation == 10);
        CHECK_FALSE(out.flush(5s));  // still not exported; reported once per generation
        CHECK(log.count(keepsake::export_event_kind::stale_generation) == 1);

        // What the message says: recover() carries on from the store's state.
        const auto got = keepsake::recover(k, store, state_at(0));
        CHECK(got.source == recovery_source::store);
        CHECK(got.generation == 11);
        REQUIRE(out.flush(5s));
        CHECK(store.get("k")->generation == 11);
        CHECK(blob_of<64>(*store.get("k")).generation == 10);  // the old key's state, carried on
    }
    SECTION("the same generation with another state") {
        keeper<state64> k(s, "k");
        for (std::uint64_t i = 1; i <= 10; ++i) k.commit(state_at(1000 + i));  // generation 10, other bytes
        CHECK_FALSE(out.flush(5s));
        const auto stale = log.of(keepsake::export_event_kind::stale_generation);
        REQUIRE(stale.size() == 1);
        CHECK(stale[0].generation == 10);
        CHECK(stale[0].store_generation == 10);
        CHECK(blob_of<64>(*store.get("k")).generation == 10);  // the old state, untouched
    }
    SECTION("stop does not claim success for it; forget clears it") {
        {
            keeper<state64> k(s, "k");
            commit_next(k);
            CHECK_FALSE(out.flush(5s));
        }
        CHECK(out.forget("k"));
        CHECK(out.flush(5s));
        keeper<state64> k(s, "k");
        commit_next(k);
        CHECK(out.stop(5s));
        CHECK(store.get("k")->generation == 1);
    }
}

TEST_CASE("a damaged store record in a key's way is reported, and the other keys are exported", "[export]") {
    shm_dir dir;
    temp_dir disk;
    const std::string db = disk.path() + "/s.db";
    keepsake::sqlite_store store(db);
    keepsake::record ahead;
    ahead.key = "k";
    ahead.generation = 50;
    store.put_batch({ahead});
    sqlite3* handle = nullptr;
    REQUIRE(sqlite3_open(db.c_str(), &handle) == SQLITE_OK);
    REQUIRE(sqlite3_exec(handle, "UPDATE keepsake_records SET data = x'00'", nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(handle);
    segment s("damagedway", dir.options());
    event_log log;
    exporter out(s, store, quiet_options(&log));
    keeper<state64> k(s, "k"), other(s, "other");
    commit_next(k);
    commit_next(other);
    CHECK_FALSE(out.flush(5s));
    CHECK(store.get("other")->generation == 1);
    const auto stale = log.of(keepsake::export_event_kind::stale_generation);
    REQUIRE(stale.size() == 1);
    CHECK(stale[0].key == "k");
    CHECK(stale[0].message.find("damaged record") != std::string::npos);
    CHECK(log.count(keepsake::export_event_kind::store_failed) == 0);
    // recover() removes the damaged record; the key's state is then exported.
    CHECK(keepsake::recover(k, store, state_at(0)).source == recovery_source::shared_memory);
    commit_next(k);
    CHECK(out.flush(5s));
    CHECK(store.get("k")->generation == 2);
}

TEST_CASE("a retried batch the store already holds counts as exported", "[export]") {
    shm_dir dir;
    segment s("held", dir.options());
    keepsake::memory_store inner;
    keepsake::faulty_store faulty(inner);
    event_log log;
    auto options = quiet_options(&log);
    exporter out(s, faulty, options);
    keeper<state64> a(s, "a"), b(s, "b");
    commit_next(a);
    commit_next(b);
    faulty.fail_every(1);
    faulty.fail_halfway(true);  // the failing put writes one of the two records first
    CHECK_FALSE(out.flush(50ms));
    // The exporter's thread may not have tried yet on a loaded machine.
    test_support::wait_until([&] { return faulty.failures() >= 1; });
    REQUIRE(inner.list("").size() == 1);
    faulty.fail_every(0);
    REQUIRE(out.flush(5s));  // one record written, one found already held
    CHECK(log.count(keepsake::export_event_kind::stale_generation) == 0);
    CHECK(inner.get("a")->generation == 1);
    CHECK(inner.get("b")->generation == 1);
}

TEST_CASE("one record the store rejects does not hold up the others", "[export]") {
    shm_dir dir;
    temp_dir disk;
    segment s("rejected", dir.options());
    keepsake::file_store store(disk.path());
    event_log log;
    auto options = quiet_options(&log);
    options.prefix = "p/";
    exporter out(s, store, options);
    const std::string too_long(80, '/');  // a valid segment key; "p/" + it encodes to 244 bytes of file name
    keeper<state64> first(s, "first"), bad(s, too_long), last(s, "last");
    commit_next(first);
    commit_next(bad);
    commit_next(last);
    commit_next(last);
    CHECK_FALSE(out.flush(5s));  // the store does not hold every key's state
    CHECK(store.get("p/first")->generation == 1);
    CHECK(store.get("p/last")->generation == 2);
    const auto rejected = log.of(keepsake::export_event_kind::record_rejected);
    REQUIRE(rejected.size() == 1);
    CHECK(rejected[0].key == too_long);
    CHECK(rejected[0].message.find("too long") != std::string::npos);
    CHECK(log.count(keepsake::export_event_kind::store_failed) == 0);
    commit_next(first);  // the others go on being exported
    CHECK_FALSE(out.flush(5s));
    CHECK(store.get("p/first")->generation == 2);
    CHECK(log.count(keepsake::export_event_kind::record_rejected) == 1);  // once per generation
}

TEST_CASE("timeouts and intervals at their limits", "[export]") {
    shm_dir dir;
    segment s("limits", dir.options());
    keepsake::memory_store store;
    keeper<state64> k(s, "k");
    commit_next(k);

    SECTION("stop and flush with no time limit") {
        exporter out(s, store, quiet_options());
        CHECK(out.flush(std::chrono::milliseconds::max()));
        commit_next(k);
        CHECK(out.stop(std::chrono::milliseconds::max()));
        CHECK(store.get("k")->generation == 2);
    }
    SECTION("the longest interval: passes only when asked") {
        auto options = quiet_options();
        options.interval = std::chrono::milliseconds::max();
        exporter out(s, store, options);
        for (int i = 0; i < 5; ++i) {
            REQUIRE(out.flush(5s));
            commit_next(k);
        }
        CHECK(out.stats().passes == 5);  // no pass of its own: it waits, never spins
        CHECK(out.stop(5s));
        CHECK(store.get("k")->generation == 6);
    }
    SECTION("an interval under 1 ms is refused") {
        auto options = quiet_options();
        options.interval = 0ms;
        const keepsake::error failure = error_from([&] { exporter out(s, store, options); });
        CHECK(failure.code() == errc::invalid_argument);
        CHECK(std::string(failure.what()).find("interval") != std::string::npos);
    }
}

TEST_CASE("two threads stopping one exporter at once both return", "[export]") {
    shm_dir dir;
    segment s("twostops", dir.options());
    keepsake::memory_store store;
    keeper<state64> k(s, "k");
    for (int round = 0; round < 50; ++round) {
        commit_next(k);
        exporter out(s, store, quiet_options());
        std::atomic<int> waiting{2};
        std::atomic<int> stopped{0};
        std::atomic<int> threw{0};
        auto stop = [&] {
            waiting.fetch_sub(1);
            while (waiting.load() != 0) std::this_thread::yield();
            try {
                if (out.stop(5s)) stopped.fetch_add(1);
            } catch (...) {
                threw.fetch_add(1);
            }
        };
        std::thread one(stop), two(stop);
        one.join();
        two.join();
        REQUIRE(threw == 0);
        REQUIRE(stopped == 2);
        REQUIRE(store.get("k")->generation == k.generation());
    }
}

namespace {

// A store whose describe() throws std::bad_alloc once, when armed: the
// exporter calls it on its own thread while reporting a batch.
class throwing_describe_store : public keepsake::memory_store {
public:
    std::atomic<bool> armed{false};
    std::string describe() const override {
        if (const_cast<std::atomic<bool>&>(armed).exchange(false)) throw std::bad_alloc();
        return "throwing store";
    }
};

} // namespace

TEST_CASE("an exception in the exporter's pass is a failed pass, retried", "[export]") {
    shm_dir dir;
    segment s("throws", dir.options());
    throwing_describe_store store;
    event_log log;
    exporter out(s, store, quiet_options(&log));
    keeper<state64> k(s, "k");
    commit_next(k);
    store.armed = true;
    REQUIRE(out.flush(5s));  // the program goes on; the pass after the failed one completes
    CHECK_FALSE(store.armed);
    const auto failed = log.of(keepsake::export_event_kind::pass_failed);
    REQUIRE(failed.size() == 1);
    CHECK(failed[0].message.find("bad_alloc") != std::string::npos);
    CHECK(failed[0].attempt == 1);
    CHECK(failed[0].retry_in >= 1ms);
    CHECK(out.stats().failures == 1);
    commit_next(k);
    REQUIRE(out.flush(5s));
    CHECK(store.get("k")->generation == 2);
}

namespace {

struct child_progress {
    std::atomic<int> ready{0};
    std::atomic<std::uint64_t> exported{0};  // generation a flush saw durable
};

// A child that commits and exports as fast as it can, until it is killed.
template <class Store>
[[noreturn]] void export_forever(const shm_dir& dir, const std::string& where, child_progress& progress) {
    segment s("killed", dir.options(2u << 20));
    Store store(where);
    keeper<blob<4096>> k(s, "k");
    keepsake::recover(k, store, blob<4096>{});
    auto options = quiet_options();
    options.interval = 1ms;
    exporter out(s, store, options);
    progress.ready.store(1, std::memory_order_release);
    for (;;) {
        for (int i = 0; i < 5; ++i) commit_next(k);
        const std::uint64_t generation = k.generation();
        if (out.flush(10s)) progress.exported.store(generation, std::memory_order_release);
    }
}

// SIGKILLs the exporting child at random instants; after each kill the
// store holds a whole record, never older than one a flush saw durable.
template <class Store>
void kill_exporter_repeatedly(const std::string& where) {
    shm_dir dir;
    auto* progress = test_support::shared_anonymous<child_progress>();
    std::mt19937_64 rng(std::random_device{}());
    std::uint64_t last = 0;
    const int kills = test_support::env_count("KEEPSAKE_KILLS", 200) / 10;
    for (int kill = 0; kill < kills; ++kill) {
        progress->ready.store(0);
        const pid_t child = test_support::fork_child([&] { export_forever<Store>(dir, where, *progress); });
        REQUIRE(test_support::wait_ready(progress->ready, child));
        // The first round waits for one durable export (a slow disk's fsync
        // can outlast every random delay), so the check at the end can hold.
        if (kill == 0)
            REQUIRE(test_support::wait_until([&] { return progress->exported.load(std::memory_order_acquire) != 0; }));
        std::this_thread::sleep_for(std::chrono::microseconds(std::uniform_int_distribution<int>(0, 30000)(rng)));
        test_support::kill_and_reap(child);
        Store store(where);
        const auto got = store.get("k");
        const std::uint64_t durable = progress->exported.load(std::memory_order_acquire);
        if (!got) {
            REQUIRE(durable == 0);
            continue;
        }
        const auto value = blob_of<4096>(*got);
        REQUIRE(value.consistent());
        REQUIRE(got->generation >= std::max(last, durable));
        last = got->generation;
    }
    test_support::release_shared(progress);
    CHECK(last > 0);
}

} // namespace

TEST_CASE("SIGKILL during export leaves a whole old or new record (file store)", "[export][crash]") {
    temp_dir disk;
    kill_exporter_repeatedly<keepsake::file_store>(disk.path());
}

TEST_CASE("SIGKILL during export leaves a whole old or new record (SQLite store)", "[export][crash]") {
    temp_dir disk;
    kill_exporter_repeatedly<keepsake::sqlite_store>(disk.path() + "/s.db");
}

}  // namespace export_tests
