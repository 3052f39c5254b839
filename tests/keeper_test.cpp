// keeper<T>: commit and restore, codecs, type and schema checks, upgrades,
// sizes, and misuse.
#include <catch2/catch.hpp>

#include <fstream>
#include <string>
#include <vector>

#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>

#include "support.hpp"

namespace keeper_tests {  // a unity build's sources keep their names apart (tests/CMakeLists.txt)

using keepsake::errc;
using keepsake::keeper;
using keepsake::segment;
using test_support::shm_dir;

namespace {

struct position {
    double x;
    double y;
    int tick;
};

struct inventory {
    std::string owner;
    std::vector<int> items;
    template <class Archive>
    void serialize(Archive& archive) {
        archive(owner, items);
    }
};

struct inventory_v2 {
    std::string owner;
    std::vector<int> items;
    int gold = 0;
    template <class Archive>
    void serialize(Archive& archive) {
        archive(owner, items, gold);
    }
};

template <class F>
errc code_of(F&& action) {
    try {
        action();
    } catch (const keepsake::error& failure) {
        return failure.code();
    }
    FAIL("expected a keepsake::error");
    return errc::invalid_argument;
}

} // namespace

TEST_CASE("commit returns rising generations and restore gives the newest", "[keeper]") {
    shm_dir dir;
    segment s("basic", dir.options());
    keeper<position> k(s, "pos");
    CHECK_FALSE(k.restore().has_value());
    CHECK(k.generation() == 0);
    CHECK(k.commit({1, 2, 3}) == 1);
    CHECK(k.commit({4, 5, 6}) == 2);
    CHECK(k.commit({7, 8, 9}) == 3);
    auto kept = k.restore();
    REQUIRE(kept);
    CHECK(kept->value.tick == 9);
    CHECK(kept->value.x == 7);
    CHECK(kept->info.generation == 3);
    CHECK(kept->info.skipped_slots == 0);
    CHECK_FALSE(kept->info.upgraded);
}

TEST_CASE("state survives closing and reopening the segment, and generations go on", "[keeper]") {
    shm_dir dir;
    {
        segment s("reopen", dir.options());
        keeper<position> k(s, "pos");
        k.commit({1, 1, 10});
        k.commit({2, 2, 20});
    }
    segment s("reopen", dir.options());
    keeper<position> k(s, "pos");
    CHECK(k.generation() == 2);
    auto kept = k.restore();
    REQUIRE(kept);
    CHECK(kept->value.tick == 20);
    CHECK(k.commit({3, 3, 30}) == 3);
}

TEST_CASE("a non-trivially-copyable state goes through cereal", "[keeper]") {
    shm_dir dir;
    {
        segment s("cereal", dir.options());
        keeper<inventory> k(s, "inv");
        k.commit({"ada", {1, 2, 3}});
        k.commit({"ada", {1, 2, 3, 4}});
    }
    segment s("cereal", dir.options());
    keeper<inventory> k(s, "inv");
    auto kept = k.restore();
    REQUIRE(kept);
    CHECK(kept->value.owner == "ada");
    CHECK(kept->value.items == std::vector<int>{1, 2, 3, 4});
    CHECK(kept->info.generation == 2);
}

TEST_CASE("a state that outgrows its slots moves the key to larger ones, and the space is reused", "[keeper][grow]") {
    shm_dir dir;
    {
    segment s("large", dir.options());
    keeper<inventory> k(s, "inv");
    CHECK(k.slot_capacity() == 64);  // cereal keys start small
    CHECK(k.commit({"small", {1}}) == 1);
    const std::uint64_t free_before = s.free_bytes();
    inventory huge{"big", std::vector<int>(100, 7)};
    CHECK(k.commit(huge) == 2);
    // "big" is 8 + 3 bytes, 100 ints are 8 + 400: 419, with half again as headroom.
    CHECK(k.slot_capacity() >= 419);
    const auto entries = s.entries();
    REQUIRE(entries.size() == 1);
    CHECK(entries[0].moves == 1);
    CHECK(entries[0].generation == 2);
    // The old slots went back to the free space: only the difference is used.
    const std::uint64_t used = free_before - s.free_bytes();
    CHECK(used == 2 * keepsake::detail::slot_stride(k.slot_capacity()) - 2 * keepsake::detail::slot_stride(64));
    CHECK(k.commit({"fits", {2}}) == 3);
    auto kept = k.restore();
    REQUIRE(kept);
    CHECK(kept->value.owner == "fits");
    // The previous commit moved along as the fallback of the new one.
    k.commit(huge);
    k.commit(inventory{"larger still", std::vector<int>(1000, 1)});
    CHECK(s.entries()[0].moves == 2);
    }
    segment again("large", dir.options());
    keeper<inventory> reopened(again, "inv");
    CHECK(reopened.restore()->value.items.size() == 1000);
    CHECK(reopened.restore()->info.generation == 5);
}

TEST_CASE("a different type under an existing key is refused, never reinterpreted", "[keeper]") {
    shm_dir dir;
    segment s("types", dir.options());
    { keeper<position>(s, "pos").commit({1, 2, 3}); }
    CHECK(code_of([&] { keeper<double> wrong(s, "pos"); }) == errc::type_mismatch);
    CHECK(code_of([&] { keeper<inventory> wrong(s, "pos"); }) == errc::type_mismatch);
    struct bigger { char bytes[64]; };
    CHECK(code_of([&] { keeper<bigger> wrong(s, "pos"); }) == errc::type_mismatch);
    // The refused keepers wrote nothing: the state is intact.
    keeper<position> right(s, "pos");
    REQUIRE(right.restore());
    CHECK(right.restore()->value.tick == 3);
}

TEST_CASE("a different schema version is refused unless an upgrade hook converts it", "[keeper]") {
    shm_dir dir;
    segment s("schema", dir.options());
    { keeper<inventory>(s, "inv").commit({"old", {9}}); }

    keepsake::keeper_options<inventory> v2_no_hook;
    v2_no_hook.schema_version = 2;
    CHECK(code_of([&] { keeper<inventory> k(s, "inv", v2_no_hook); }) == errc::type_mismatch);

    keepsake::keeper_options<inventory_v2> upgrade;
    upgrade.schema_version = 2;
    upgrade.upgrade = [](const keepsake::stored_record& record) {
        REQUIRE(record.schema_version == 1);
        auto old = keepsake::decode_as<inventory>(record);
        return inventory_v2{old.owner, old.items, 100};
    };
    keeper<inventory_v2> k(s, "inv", upgrade);
    auto kept = k.restore();
    REQUIRE(kept);
    CHECK(kept->info.upgraded);
    CHECK(kept->value.owner == "old");
    CHECK(kept->value.gold == 100);
    CHECK(k.commit(kept->value) == 2);
    auto again = k.restore();
    REQUIRE(again);
    CHECK_FALSE(again->info.upgraded);
    CHECK(again->value.gold == 100);
}

TEST_CASE("more than two slots keep older generations as fallbacks", "[keeper]") {
    shm_dir dir;
    keepsake::keeper_options<long> options;
    options.slots = 4;
    {
        segment s("slots", dir.options());
        keeper<long> k(s, "n", options);
        for (long i = 1; i <= 10; ++i) CHECK(k.commit(i * 100) == static_cast<std::uint64_t>(i));
        auto listed = s.entries();
        REQUIRE(listed.size() == 1);
        CHECK(listed[0].slot_count == 4);
        CHECK(k.restore()->value == 1000);
        options.slots = 1;
        CHECK(code_of([&] { keeper<long> bad(s, "m", options); }) == errc::invalid_argument);
        options.slots = 4;
    }
    // Generations 7..10 sit in the four slots (round robin: 10 in slot 1,
    // 9 in slot 0). Damage the two newest: restore falls back to 8.
    const std::string file = dir.file("slots");
    std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
    const test_support::slot_place place = test_support::find_slots_in_file(file, "n");
    for (std::uint32_t slot : {0u, 1u}) {
        io.seekp(static_cast<std::streamoff>(place.data(slot)));
        io.put('\x7f');
    }
    io.close();
    segment s("slots", dir.options());
    keeper<long> k(s, "n", options);
    auto kept = k.restore();
    REQUIRE(kept);
    CHECK(kept->value == 800);
    CHECK(kept->info.generation == 8);
    CHECK(kept->info.skipped_slots == 2);
    CHECK(k.commit(1100) == 11);  // above every generation seen, damaged or not
}

TEST_CASE("a capacity too small for the type is refused before the key exists", "[keeper]") {
    shm_dir dir;
    segment s("capacity", dir.options());
    keepsake::keeper_options<double> tiny;
    tiny.capacity = 4;
    CHECK(code_of([&] { keeper<double> k(s, "d", tiny); }) == errc::invalid_argument);
    CHECK(s.entries().empty());
    keeper<double> k(s, "d");  // the key is still free to create properly
    CHECK(k.commit(2.5) == 1);
}

TEST_CASE("bytes that pass their checksum but do not decode are an error naming the key, never no state",
          "[keeper][decode]") {
    shm_dir dir;
    {
        segment s("decode", dir.options());
        keeper<inventory> k(s, "inv");
        k.commit({"first", {1}});
        k.commit({"second", {2}});
    }
    // The string's length prefix (8 bytes) decodes, its characters do not.
    test_support::reseal_slots(dir.file("decode"), "inv", 10);
    const std::string before = test_support::read_file(dir.file("decode"));
    segment s("decode", dir.options());
    keeper<inventory> k(s, "inv");
    inventory mine{"untouched", {9, 9}};
    try {
        k.restore_into(mine);
        FAIL("restore took undecodable bytes for no state");
    } catch (const keepsake::error& failure) {
        const std::string message = failure.what();
        CHECK(failure.code() == errc::decode_failed);
        CHECK(message.find("key 'inv'") != std::string::npos);
        CHECK(message.find("generation 2") != std::string::npos);
        CHECK(message.find(keepsake::fingerprint_text(keepsake::type_fingerprint<inventory>())) != std::string::npos);
        CHECK(message.find("schema_version") != std::string::npos);
        CHECK(message.find("upgrade") != std::string::npos);
    }
    CHECK(mine.owner == "untouched");
    CHECK(mine.items == std::vector<int>{9, 9});
    // Nothing was written: the slots are as they were.
    const test_support::slot_place place = test_support::find_slots(before, "inv");
    const std::size_t span = static_cast<std::size_t>(place.header(place.count) - place.first);
    CHECK(test_support::read_file(dir.file("decode")).substr(place.first, span) == before.substr(place.first, span));
}

namespace {
// One type as two versions of a program see it: the second gained a field
// in what was padding, so sizeof stays the same.
struct player_v1 {
    std::int32_t hp = 0;
    std::int16_t level = 0;
};
struct player_v2 {
    std::int32_t hp = 0;
    std::int16_t level = 0;
    std::int16_t mana = 0;
};
struct tagged_v1 {
    std::string name;
    std::int32_t hp = 0;
    std::int16_t level = 0;
    template <class Archive>
    void serialize(Archive& archive) { archive(name, hp, level); }
};
struct tagged_v2 {
    std::string name;
    std::int32_t hp = 0;
    std::int16_t level = 0;
    std::int16_t mana = 0;
    template <class Archive>
    void serialize(Archive& archive) { archive(name, hp, level, mana); }
};
} // namespace

}  // namespace keeper_tests

// Both versions under one name, as a program that changed the struct sees it.
template <> struct keepsake::state_traits<keeper_tests::player_v1> {
    static constexpr std::uint32_t schema_version = 1;
    static std::string type_name() { return "player"; }
};
template <> struct keepsake::state_traits<keeper_tests::player_v2> {
    static constexpr std::uint32_t schema_version = 1;
    static std::string type_name() { return "player"; }
};
template <> struct keepsake::state_traits<keeper_tests::tagged_v1> {
    static constexpr std::uint32_t schema_version = 1;
    static std::string type_name() { return "tagged"; }
};
template <> struct keepsake::state_traits<keeper_tests::tagged_v2> {
    static constexpr std::uint32_t schema_version = 1;
    static std::string type_name() { return "tagged"; }
};

namespace keeper_tests {

TEST_CASE("a decode must consume exactly the committed bytes", "[keeper][decode]") {
    static_assert(sizeof(tagged_v1) == sizeof(tagged_v2), "the padding case: the size stays the same");
    std::byte bytes[128];
    const std::size_t written = keepsake::encode(tagged_v1{"a", 7, 8}, bytes, sizeof bytes);
    tagged_v2 more;
    CHECK(code_of([&] { keepsake::decode_into(bytes, written, more); }) == errc::decode_failed);  // reads past
    const std::size_t longer = keepsake::encode(tagged_v2{"a", 7, 8, 9}, bytes, sizeof bytes);
    tagged_v1 fewer;
    CHECK(code_of([&] { keepsake::decode_into(bytes, longer, fewer); }) == errc::decode_failed);  // leaves bytes
}

TEST_CASE("a field added into padding changes the fingerprint: the old bytes are refused up front",
          "[keeper][decode]") {
    static_assert(sizeof(player_v1) == sizeof(player_v2), "the padding case: the size stays the same");
    CHECK(keepsake::type_fingerprint<player_v1>() != keepsake::type_fingerprint<player_v2>());
    CHECK(keepsake::type_fingerprint<tagged_v1>() != keepsake::type_fingerprint<tagged_v2>());
    shm_dir dir;
    segment s("padding", dir.options());
    { keeper<player_v1>(s, "raw").commit({100, 3}); }
    { keeper<tagged_v1>(s, "cereal").commit({"ada", 100, 3}); }
    CHECK(code_of([&] { keeper<player_v2> next(s, "raw"); }) == errc::type_mismatch);
    CHECK(code_of([&] { keeper<tagged_v2> next(s, "cereal"); }) == errc::type_mismatch);
    // With a new schema version and an upgrade hook, the old bytes convert.
    keepsake::keeper_options<tagged_v2> options;
    options.schema_version = 2;
    options.upgrade = [](const keepsake::stored_record& old) {
        const tagged_v1 before = keepsake::decode_as<tagged_v1>(old);
        return tagged_v2{before.name, before.hp, before.level, 50};
    };
    keeper<tagged_v2> upgraded(s, "cereal", options);
    const auto kept = upgraded.restore();
    REQUIRE(kept);
    CHECK(kept->info.upgraded);
    CHECK(kept->value.mana == 50);
}

TEST_CASE("one key has one keeper per process", "[keeper]") {
    shm_dir dir;
    segment s("single", dir.options());
    keeper<int> first(s, "n");
    CHECK(code_of([&] { keeper<int> second(s, "n"); }) == errc::key_in_use);
    CHECK(code_of([&] { s.remove_key("n"); }) == errc::key_in_use);
    CHECK(code_of([&] { keeper<int> bad(s, "bad key"); }) == errc::invalid_name);
    CHECK(code_of([&] { keeper<int> bad(s, std::string(81, 'k')); }) == errc::invalid_name);
}

TEST_CASE("a keeper moved elsewhere keeps its key, and the key is free once it is gone", "[keeper]") {
    shm_dir dir;
    segment s("moves", dir.options());
    {
        keeper<int> original(s, "n");
        original.commit(5);
        keeper<int> moved(std::move(original));
        CHECK(moved.commit(6) == 2);
        CHECK(code_of([&] { keeper<int> second(s, "n"); }) == errc::key_in_use);
    }
    keeper<int> later(s, "n");
    CHECK(later.restore()->value == 6);
}

namespace {
// Serialising this commits to the keeper it is being committed to: a
// deterministic stand-in for a second thread entering the same keeper.
struct reentrant {
    keeper<reentrant>* target = nullptr;
    std::string text;  // not trivially copyable: goes through serialize()
    template <class Archive>
    void serialize(Archive& archive) {
        int marker = 1;
        archive(marker);
        if (target) target->commit(reentrant{});
    }
};
} // namespace

TEST_CASE("two users inside one keeper at once are caught", "[keeper]") {
    shm_dir dir;
    segment s("busy", dir.options());
    keeper<reentrant> k(s, "r");
    CHECK(code_of([&] { k.commit(reentrant{&k, {}}); }) == errc::concurrent_use);
    CHECK(k.commit(reentrant{}) == 1);  // the guard was released
}

TEST_CASE("a keeper keeps its segment mapped after the segment handle is closed", "[keeper]") {
    shm_dir dir;
    segment s("lifetime", dir.options());
    keeper<int> k(s, "n");
    s.close();
    CHECK_FALSE(s.is_open());
    CHECK(k.commit(3) == 1);
    CHECK(k.restore()->value == 3);
    CHECK(code_of([&] { s.entries(); }) == errc::invalid_argument);
}

TEST_CASE("cereal keys start small: a default segment holds thousands of them without growing", "[keeper][grow]") {
    shm_dir dir;
    keepsake::segment_options options;
    options.directory = dir.path();  // every other option as a new user gets it
    segment s("thousands", options);
    const std::uint64_t size = s.size();
    for (int i = 0; i < 3000; ++i)
        keeper<std::string>(s, "player/" + std::to_string(i)).commit("name " + std::to_string(i));
    CHECK(s.size() == size);  // 4 MiB held them all
    CHECK(s.entries().size() == 3000);
    CHECK(keeper<std::string>(s, "player/2999").restore()->value == "name 2999");
}

}  // namespace keeper_tests
