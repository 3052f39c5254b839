// Side tables: committed with their keeper's state in one step; restored as
// of one commit; grown as items are added and as they get larger; SIGKILL
// at random instants never leaves a mix of two commits.
#include <catch2/catch.hpp>

#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>

#include <cstdio>
#include <algorithm>
#include <cstring>
#include <fstream>
#include <atomic>
#include <map>
#include <thread>
#include <random>
#include <string>
#include <vector>

#include <keepsake/stores/file_store.hpp>
#include <keepsake/stores/memory_store.hpp>

#include "support.hpp"

namespace table_tests {  // a unity build's sources keep their names apart (tests/CMakeLists.txt)

using keepsake::errc;
using keepsake::keeper;
using keepsake::segment;
using test_support::shm_dir;

namespace {

struct world {
    std::uint64_t commit = 0;   // which commit of the test wrote it
    std::uint64_t sum = 0;      // of every entity's hp, as committed with it
    std::uint64_t entities = 0; // how many there are
};

struct entity {
    std::uint64_t hp = 0;
    std::uint64_t written = 0;  // the commit that last changed it
    std::string name;           // grows, so the table's items grow
    template <class Archive>
    void serialize(Archive& archive) { archive(hp, written, name); }
};

using entity_table = keepsake::side_table<std::uint64_t, entity>;

std::map<std::uint64_t, entity> contents(const entity_table& table) {
    std::map<std::uint64_t, entity> all;
    table.for_each([&](const std::uint64_t& id, const entity& value) { all[id] = value; });
    return all;
}

} // namespace

TEST_CASE("a side table is committed with its keeper's state and restored with it", "[table]") {
    shm_dir dir;
    {
        segment s("tables", dir.options());
        keeper<world> k(s, "w");
        auto& entities = k.table<std::uint64_t, entity>("entities");
        CHECK(entities.empty());
        entities.put(1, entity{10, 1, "ada"});
        entities.put(2, entity{20, 1, "bob"});
        CHECK(k.commit(world{1, 30, 2}) == 1);
        entities.put(3, entity{30, 2, "cy"});
        entities.erase(1);
        if (entity* bob = entities.find_for_update(2)) bob->hp = 25;
        CHECK(k.commit(world{2, 55, 2}) == 2);
        // Changes after the last commit are not kept.
        entities.put(4, entity{40, 3, "dee"});
        entities.erase(2);
    }
    segment s("tables", dir.options());
    keeper<world> k(s, "w");
    auto& entities = k.table<std::uint64_t, entity>("entities");
    const auto kept = k.restore();
    REQUIRE(kept);
    CHECK(kept->info.generation == 2);
    const auto all = contents(entities);
    REQUIRE(all.size() == 2);
    CHECK(all.at(2).hp == 25);
    CHECK(all.at(3).name == "cy");
    CHECK(entities.find(1) == nullptr);
    CHECK(entities.find(4) == nullptr);
    CHECK(entities.size() == 2);
}

TEST_CASE("a restore undoes the table changes made since the last commit", "[table]") {
    shm_dir dir;
    segment s("revert", dir.options());
    keeper<world> k(s, "w");
    auto& entities = k.table<std::uint64_t, entity>("entities");
    entities.put(1, entity{10, 1, "ada"});
    k.commit(world{1, 10, 1});
    entities.put(2, entity{20, 2, "new"});      // added
    entities.erase(1);                          // erased
    entities.put(1, entity{11, 2, "again"});    // and put back changed
    entities.put(3, entity{30, 2, "gone"});
    entities.erase(3);
    CHECK(entities.size() == 2);
    REQUIRE(k.restore());
    CHECK(entities.size() == 1);
    REQUIRE(entities.find(1) != nullptr);
    CHECK(entities.find(1)->name == "ada");
    CHECK(entities.find(2) == nullptr);
    CHECK(entities.find(3) == nullptr);
    // And the table commits on from there.
    entities.put(5, entity{50, 2, "five"});
    CHECK(k.commit(world{2, 60, 2}) == 2);
    CHECK(k.restore()->info.generation == 2);
    CHECK(entities.size() == 2);
}

TEST_CASE("a table grows in items and in item size, and erased items' records are reused", "[table][grow]") {
    shm_dir dir;
    std::uint64_t capacity = 0;
    {
        segment s("growing", dir.options(4u << 20, 16));
        keeper<world> k(s, "w");
        auto& entities = k.table<std::uint64_t, entity>("entities");
        capacity = entities.item_capacity();
        for (std::uint64_t id = 0; id < 1000; ++id) entities.put(id, entity{id, 1, std::string(id % 300, 'x')});
        k.commit(world{1, 0, 1000});
        CHECK(entities.item_capacity() > capacity);
        for (std::uint64_t id = 0; id < 1000; id += 2) entities.erase(id);
        k.commit(world{2, 0, 500});
        const std::uint64_t free_before = s.free_bytes();
        for (std::uint64_t id = 1000; id < 1500; ++id) entities.put(id, entity{id, 3, "r"});
        k.commit(world{3, 0, 1000});
        CHECK(s.free_bytes() == free_before);  // the erased items' records took them
    }
    segment s("growing", dir.options(4u << 20, 16));
    keeper<world> k(s, "w");
    auto& entities = k.table<std::uint64_t, entity>("entities");
    CHECK(entities.size() == 1000);
    CHECK(entities.find(999)->name == std::string(999 % 300, 'x'));
    CHECK(entities.find(998) == nullptr);
    CHECK(entities.find(1499)->name == "r");
}

TEST_CASE("a table's items of another type are refused, never reinterpreted", "[table]") {
    shm_dir dir;
    segment s("typed", dir.options());
    {
        keeper<world> k(s, "w");
        k.table<std::uint64_t, entity>("entities").put(1, entity{1, 1, "a"});
        k.commit(world{});
    }
    keeper<world> k(s, "w");
    CHECK(test_support::error_from([&] { k.table<std::uint64_t, std::string>("entities"); }).code() ==
          errc::type_mismatch);
    keepsake::keeper_options<world> more_slots;
    more_slots.slots = 3;
    keeper<world> other(s, "x", more_slots);
    CHECK(test_support::error_from([&] { other.table<int, int>("t"); }).code() == errc::invalid_argument);
}

namespace {

struct table_report {
    std::atomic<int> ready{0};
    std::atomic<std::uint64_t> last_committed{0};
};

// Commits forever: each commit changes a few random entities (grows their
// names, erases some, adds new ones) and commits the world with the sum and
// count it computes from the table, so every restored commit can be checked
// whole against its own table.
[[noreturn]] void commit_world_forever(const shm_dir& dir, table_report& report, std::uint64_t seed) {
    segment s("atomic", dir.options(8u << 20, 16));
    keeper<world> k(s, "w");
    auto& entities = k.table<std::uint64_t, entity>("entities");
    const auto kept = k.restore();
    world current = kept ? kept->value : world{};
    std::mt19937_64 rng(seed);
    report.ready.store(1, std::memory_order_release);
    for (;;) {
        const std::uint64_t commit = current.commit + 1;
        for (int change = 0; change < 3; ++change) {
            const std::uint64_t id = rng() % 400;
            if (rng() % 5 == 0) {
                entities.erase(id);
            } else {
                const entity* old = entities.find(id);
                const std::size_t length = old ? (old->name.size() + 7) % 700 : 1;
                entities.put(id, entity{rng() % 1000, commit, std::string(length, static_cast<char>('a' + commit % 26))});
            }
        }
        world next{commit, 0, entities.size()};
        entities.for_each([&](const std::uint64_t&, const entity& value) { next.sum += value.hp; });
        k.commit(next);
        current = next;
        report.last_committed.store(commit, std::memory_order_release);
    }
}

} // namespace

TEST_CASE("SIGKILL at random instants never leaves a table and its state from two commits", "[table][crash]") {
    shm_dir dir;
    auto* report = test_support::shared_anonymous<table_report>();
    const int kills = test_support::env_count("KEEPSAKE_KILLS", 200);
    int checked = 0;
    std::uint64_t last = 0;
    for (int round = 0; round < kills; ++round) {
        report->ready.store(0);
        const pid_t child = test_support::fork_child(
            [&] { commit_world_forever(dir, *report, static_cast<std::uint64_t>(round) * 7919 + 1); });
        REQUIRE(test_support::wait_ready(report->ready, child));
        std::this_thread::sleep_for(std::chrono::microseconds(std::mt19937(round)() % 3000));
        test_support::kill_and_reap(child);
        const std::uint64_t reported = report->last_committed.load(std::memory_order_acquire);

        segment s("atomic", dir.options(8u << 20, 16));
        keeper<world> k(s, "w");
        auto& entities = k.table<std::uint64_t, entity>("entities");
        const auto kept = k.restore();
        if (!kept) {
            REQUIRE(last == 0);
            continue;
        }
        const world& state = kept->value;
        REQUIRE(state.commit >= reported);  // nothing whose commit returned is lost
        REQUIRE(state.commit >= last);
        std::uint64_t sum = 0;
        bool from_later_commit = false;
        entities.for_each([&](const std::uint64_t&, const entity& value) {
            sum += value.hp;
            from_later_commit = from_later_commit || value.written > state.commit;
            for (char c : value.name) from_later_commit = from_later_commit || c != static_cast<char>('a' + value.written % 26);
        });
        // All of one commit: the table adds up to what its state says.
        REQUIRE_FALSE(from_later_commit);
        REQUIRE(entities.size() == state.entities);
        REQUIRE(sum == state.sum);
        last = state.commit;
        ++checked;
    }
    std::printf("tables: %d kills, %d restored and checked, reached commit %llu\n", kills, checked,
                static_cast<unsigned long long>(last));
    CHECK(checked >= kills * 9 / 10);
    test_support::release_shared(report);
}

namespace {

// The three-table kill test: every commit changes the state and each of
// three tables, and every item a commit writes records that commit.
constexpr int ledger_tables = 3;
const char* const ledger_table_names[ledger_tables] = {"units", "items", "quests"};

// What the commit that wrote it left in each table (the child keeps the
// counts as it changes the tables, never by reading them back).
struct ledger {
    std::uint64_t commit = 0;
    std::uint64_t count[ledger_tables] = {};
    std::uint64_t sum[ledger_tables] = {};      // of the items' hp
    std::uint64_t next_id[ledger_tables] = {};  // every id below it was handed out
};

char ledger_letter(std::uint64_t commit, int table) {
    return static_cast<char>('a' + (commit + 7 * static_cast<std::uint64_t>(table)) % 26);
}

struct ledger_keeper {
    keeper<ledger> k;
    entity_table* tables[ledger_tables];
    explicit ledger_keeper(const segment& s) : k(s, "ledger") {
        for (int t = 0; t < ledger_tables; ++t) tables[t] = &k.table<std::uint64_t, entity>(ledger_table_names[t]);
    }
};

// Commits forever. Per commit and per table: maybe erases an item, then
// puts one (a new id, growing the table, or an old one, whose name grows),
// so every table holds an item written by the newest commit.
[[noreturn]] void commit_ledger_forever(const shm_dir& dir, table_report& report, std::uint64_t seed) {
    segment s("ledger", dir.options(1u << 20, 16));
    ledger_keeper held(s);
    const auto kept = held.k.restore();
    ledger current = kept ? kept->value : ledger{};
    std::mt19937_64 rng(seed);
    report.ready.store(1, std::memory_order_release);
    for (;;) {
        ledger next = current;
        next.commit = current.commit + 1;
        for (int t = 0; t < ledger_tables; ++t) {
            entity_table& table = *held.tables[t];
            if (next.next_id[t] != 0 && rng() % 6 == 0) {
                const std::uint64_t id = rng() % next.next_id[t];
                if (const entity* old = table.find(id)) {
                    next.sum[t] -= old->hp;
                    --next.count[t];
                    table.erase(id);
                }
            }
            // Table t takes a new id once in 2 + t commits.
            const bool grow = next.next_id[t] == 0 || rng() % (2 + static_cast<unsigned>(t)) == 0;
            const std::uint64_t id = grow ? next.next_id[t]++ : rng() % next.next_id[t];
            entity changed{rng() % 1000, next.commit, {}};
            if (const entity* old = table.find(id)) {
                next.sum[t] -= old->hp;
                changed.name.assign((old->name.size() + 7) % 300 + 1, ledger_letter(next.commit, t));
            } else {
                ++next.count[t];
                changed.name.assign(1, ledger_letter(next.commit, t));
            }
            next.sum[t] += changed.hp;
            table.put(id, std::move(changed));
        }
        held.k.commit(next);
        current = next;
        report.last_committed.store(next.commit, std::memory_order_release);
    }
}

} // namespace

// One commit publishes the state and every changed table together: after
// each kill the state and all three tables are of one commit, the newest
// whose commit returned or the one under way, never a mix. Every 20 kills
// the segment starts afresh, so the tables keep growing under the kills.
TEST_CASE("SIGKILL at random instants never leaves a state and three growing tables from two commits",
          "[table][crash]") {
    shm_dir dir;
    auto* report = test_support::shared_anonymous<table_report>();
    const int kills = test_support::env_count("KEEPSAKE_KILLS", 200);
    constexpr int fresh_every = 20;
    int checked = 0, under_way = 0, table_moves = 0;
    std::uint64_t last = 0, reached = 0, largest = 0;
    std::map<std::string, std::uint32_t> moves_seen;
    for (int round = 0; round < kills; ++round) {
        if (round % fresh_every == 0) {
            segment::remove("ledger", dir.path());
            report->last_committed.store(0);
            last = 0;
            moves_seen.clear();
        }
        report->ready.store(0);
        const pid_t child = test_support::fork_child(
            [&] { commit_ledger_forever(dir, *report, static_cast<std::uint64_t>(round) * 104729 + 3); });
        REQUIRE(test_support::wait_ready(report->ready, child));
        std::this_thread::sleep_for(std::chrono::microseconds(std::mt19937(round + 1)() % 3000));
        test_support::kill_and_reap(child);
        const std::uint64_t reported = report->last_committed.load(std::memory_order_acquire);

        segment s("ledger", dir.options(1u << 20, 16));
        REQUIRE(s.damaged_entries() == 0);
        ledger_keeper held(s);
        const auto kept = held.k.restore();
        if (!kept) {  // killed before the first commit since the segment was made
            REQUIRE(reported == 0);
            REQUIRE(last == 0);
            continue;
        }
        const ledger& state = kept->value;
        // The newest commit that returned, or the one under way: nothing lost,
        // nothing goes back.
        REQUIRE(state.commit >= reported);
        REQUIRE(state.commit <= reported + 1);
        REQUIRE(state.commit >= last);
        for (int t = 0; t < ledger_tables; ++t) {
            std::uint64_t count = 0, sum = 0, newest = 0;
            bool foreign = false;  // an item the restored commit cannot have left
            held.tables[t]->for_each([&](const std::uint64_t& id, const entity& value) {
                ++count;
                sum += value.hp;
                newest = std::max(newest, value.written);
                foreign = foreign || value.written > state.commit || value.written == 0 || id >= state.next_id[t];
                for (char c : value.name) foreign = foreign || c != ledger_letter(value.written, t);
            });
            INFO("table " << ledger_table_names[t] << " as restored with commit " << state.commit);
            REQUIRE_FALSE(foreign);
            // The restored commit changed this table too: its items are of
            // that commit, not of the one before.
            REQUIRE(newest == state.commit);
            REQUIRE(count == state.count[t]);
            REQUIRE(held.tables[t]->size() == count);
            REQUIRE(sum == state.sum[t]);
            largest = std::max(largest, count);
        }
        for (const keepsake::entry_info& entry : s.entries()) {
            REQUIRE(entry.invalid_slots == 0);
            if (entry.kind != 2) continue;
            std::uint32_t& seen = moves_seen[entry.key];
            REQUIRE(entry.moves >= seen);
            table_moves += static_cast<int>(entry.moves - seen);
            seen = entry.moves;
        }
        under_way += state.commit == reported + 1 ? 1 : 0;
        last = state.commit;
        reached = std::max(reached, last);
        ++checked;
    }
    std::printf("three tables: %d kills, %d restored and checked (%d with the commit under way), %d table moves "
                "(growth), up to %llu items a table, reached commit %llu\n",
                kills, checked, under_way, table_moves, static_cast<unsigned long long>(largest),
                static_cast<unsigned long long>(reached));
    CHECK(checked >= kills * 8 / 10);
    CHECK(table_moves > 0);
    test_support::release_shared(report);
}

namespace {
keepsake::exporter_options on_demand() {
    keepsake::exporter_options options;
    options.interval = std::chrono::hours(1);  // passes only when flushed
    return options;
}
} // namespace

TEST_CASE("side tables travel with their state to the store and back after a reboot", "[table][export]") {
    test_support::temp_dir disk;
    keepsake::file_store store(disk.path());
    {
        shm_dir dir;
        segment s("exported", dir.options());
        keeper<world> k(s, "w");
        auto& entities = k.table<std::uint64_t, entity>("entities");
        auto& names = k.table<std::string, std::string>("names");
        for (std::uint64_t id = 0; id < 50; ++id) entities.put(id, entity{id, 1, std::string(id, 'n')});
        names.put("boss", "ada");
        k.commit(world{1, 1225, 50});
        keepsake::exporter out(s, store, on_demand());
        REQUIRE(out.stop(std::chrono::seconds(5)));
        entities.erase(0);  // committed, never exported: gone with the reboot
        k.commit(world{2, 1225, 49});
    }  // the segment's directory is removed: a reboot
    shm_dir dir;
    segment s("exported", dir.options());
    keeper<world> k(s, "w");
    const auto got = keepsake::recover(k, store, world{});
    CHECK(got.source == keepsake::recovery_source::store);
    CHECK(got.value.commit == 1);
    auto& entities = k.table<std::uint64_t, entity>("entities");
    auto& names = k.table<std::string, std::string>("names");
    CHECK(entities.size() == 50);
    CHECK(entities.find(0) != nullptr);
    CHECK(entities.find(49)->name == std::string(49, 'n'));
    CHECK(*names.find("boss") == "ada");
    // And they commit on, at generations above the store's.
    entities.erase(1);
    CHECK(k.commit(world{3, 1224, 49}) == got.generation + 1);
}

TEST_CASE("recovery from a newer store record replaces tables attached or not, all in one commit", "[table][export]") {
    shm_dir dir;
    keepsake::memory_store store;
    segment s("replaced", dir.options());
    {
        keeper<world> k(s, "w");
        k.table<std::uint64_t, entity>("entities").put(7, entity{7, 1, "kept"});
        k.table<std::uint64_t, entity>("gone").put(1, entity{1, 1, "only in memory"});
        k.commit(world{1, 7, 1});
        keepsake::exporter out(s, store, on_demand());
        REQUIRE(out.flush(std::chrono::seconds(5)));
    }
    {
        keeper<world> k(s, "w");  // a newer commit in memory: the one the store will beat
        k.table<std::uint64_t, entity>("entities").put(8, entity{8, 2, "memory"});
        k.table<std::uint64_t, entity>("later").put(9, entity{9, 2, "after the export"});
        k.commit(world{2, 15, 2});
    }
    // The store moves ahead (another host exported later): its record wins.
    keepsake::record newer = *store.get("w");
    newer.generation = 10;
    store.put_batch({newer});
    keeper<world> k(s, "w");
    auto& attached = k.table<std::uint64_t, entity>("entities");
    CHECK(attached.size() == 2);
    const auto got = keepsake::recover(k, store, world{});
    CHECK(got.source == keepsake::recovery_source::store);
    CHECK(got.generation == 11);
    CHECK(attached.size() == 1);
    CHECK(attached.find(7)->name == "kept");
    CHECK(k.table<std::uint64_t, entity>("gone").size() == 1);  // as exported
    // A table the record holds nothing of (added after its export) is empty.
    CHECK(k.table<std::uint64_t, entity>("later").empty());
    s.close();
}

TEST_CASE("a damaged group record is an error, never a crash or a huge allocation", "[table][export]") {
    keepsake::detail::group_image image;
    image.state_codec = 1;
    image.state.resize(24);
    image.tables.resize(1);
    image.tables[0].name = "t";
    image.tables[0].items.resize(3);
    for (auto& item : image.tables[0].items) {
        item.key_length = 8;
        item.bytes.resize(20);
    }
    std::vector<std::byte> bytes;
    keepsake::detail::encode_group(image, bytes);
    const auto parsed = keepsake::detail::parse_group(bytes.data(), bytes.size(), "test");
    CHECK(parsed.tables.at(0).items.size() == 3);
    for (std::size_t cut = 0; cut < bytes.size(); ++cut)
        CHECK(test_support::error_from([&] { keepsake::detail::parse_group(bytes.data(), cut, "test"); }).code() ==
              errc::record_corrupt);
    // A forged item count: refused before anything is sized for it.
    std::vector<std::byte> forged = bytes;
    const std::size_t count_at = 24 + 24 + 24 + 1;  // header, state, table words, name
    const std::uint64_t huge = std::uint64_t{1} << 40;
    std::memcpy(forged.data() + count_at, &huge, sizeof huge);
    CHECK(test_support::error_from([&] { keepsake::detail::parse_group(forged.data(), forged.size(), "test"); })
              .code() == errc::record_corrupt);
}

TEST_CASE("the exporter copies a state and its tables as of one commit while commits go on", "[table][export]") {
    shm_dir dir;
    keepsake::memory_store store;
    segment s("live", dir.options(8u << 20, 16));
    std::atomic<bool> done{false};
    std::atomic<bool> started{false};
    std::thread committer([&] {
        keeper<world> k(s, "w");
        auto& entities = k.table<std::uint64_t, entity>("entities");
        std::mt19937_64 rng(3);
        for (std::uint64_t commit = 1; !done.load(); ++commit) {
            entities.put(rng() % 300, entity{rng() % 1000, commit, "x"});
            if (rng() % 4 == 0) entities.erase(rng() % 300);
            world next{commit, 0, entities.size()};
            entities.for_each([&](const std::uint64_t&, const entity& value) { next.sum += value.hp; });
            k.commit(next);
            started.store(true);
        }
    });
    while (!started.load()) std::this_thread::yield();
    keepsake::exporter out(s, store, on_demand());
    int checked = 0;
    for (int round = 0; round < 200; ++round) {
        REQUIRE(out.flush(std::chrono::seconds(10)));
        // What the store holds, recovered into a segment of its own.
        shm_dir elsewhere;
        segment fresh("copy", elsewhere.options(8u << 20, 16));
        keeper<world> k(fresh, "w");
        const auto got = keepsake::recover(k, store, world{});
        if (got.source != keepsake::recovery_source::store) continue;
        auto& entities = k.table<std::uint64_t, entity>("entities");
        std::uint64_t sum = 0;
        entities.for_each([&](const std::uint64_t&, const entity& value) { sum += value.hp; });
        REQUIRE(entities.size() == got.value.entities);
        REQUIRE(sum == got.value.sum);
        ++checked;
    }
    done.store(true);
    committer.join();
    CHECK(checked == 200);
}

TEST_CASE("removing a key removes its side tables, and a key made again starts with empty tables", "[table]") {
    shm_dir dir;
    {
        segment s("removed", dir.options());
        {
            keeper<world> k(s, "w");
            k.table<std::uint64_t, entity>("entities").put(1, entity{1, 1, "a"});
            k.table<std::uint64_t, entity>("more").put(2, entity{2, 1, "b"});
            k.commit(world{1, 3, 2});
            CHECK(test_support::error_from([&] { s.remove_key("w"); }).code() == errc::key_in_use);
        }
        CHECK(s.entries().size() == 3);
        CHECK(s.remove_key("w"));
        CHECK(s.entries().empty());
        keeper<world> k(s, "x");
        k.table<std::uint64_t, entity>("t").put(1, entity{1, 1, "a"});
        k.commit(world{1, 1, 1});
    }
    // A crash between the two steps of a removal: the key's entry is free
    // (the first store), its table's is not.
    {
        std::string bytes = test_support::read_file(dir.file("removed"));
        keepsake::detail::segment_header header{};
        std::memcpy(&header, bytes.data(), sizeof(header));
        for (std::uint32_t i = 0; i < header.blocks[0].count; ++i) {
            keepsake::detail::dir_entry entry{};
            const std::size_t at = header.blocks[0].offset + i * sizeof(entry);
            std::memcpy(&entry, &bytes[at], sizeof(entry));
            if (entry.state == keepsake::detail::entry_ready && std::string(entry.key, entry.key_length) == "x")
                std::memset(&bytes[at], 0, sizeof(entry.state));
        }
        std::ofstream(dir.file("removed"), std::ios::binary | std::ios::trunc) << bytes;
    }
    segment s("removed", dir.options());
    CHECK(s.entries().size() == 1);  // the orphan table
    keeper<world> again(s, "x");
    CHECK(again.table<std::uint64_t, entity>("t").empty());
}

}  // namespace table_tests
