// keeper<T>: commit and restore, codecs, type and schema checks, upgrades,
// sizes, and misuse.
#include <catch2/catch.hpp>

#include <fstream>
#include <string>
#include <vector>

#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>

#include "support.hpp"

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

TEST_CASE("a state larger than its slots is refused and the last commit stays", "[keeper]") {
    shm_dir dir;
    segment s("large", dir.options());
    keepsake::keeper_options<inventory> options;
    options.capacity = 64;
    keeper<inventory> k(s, "inv", options);
    k.commit({"small", {1}});
    inventory huge{"big", std::vector<int>(100, 7)};
    std::string message;
    try {
        k.commit(huge);
    } catch (const keepsake::error& failure) {
        CHECK(failure.code() == errc::state_too_large);
        message = failure.what();
    }
    // "big" is 8 + 3 bytes, 100 ints are 8 + 400.
    CHECK(message.find("encodes to 419 bytes, a slot holds 64") != std::string::npos);
    CHECK(message.find("keeper_options::capacity") != std::string::npos);
    auto kept = k.restore();
    REQUIRE(kept);
    CHECK(kept->value.owner == "small");
    CHECK(kept->info.generation == 1);
    CHECK(k.commit({"fits", {2}}) == 2);
}

TEST_CASE("a different type under an existing key is refused, never reinterpreted", "[keeper]") {
    shm_dir dir;
    segment s("types", dir.options());
    { keeper<position>(s, "pos").commit({1, 2, 3}); }
    CHECK(code_of([&] { keeper<double> wrong(s, "pos"); }) == errc::type_mismatch);
    CHECK(code_of([&] { keeper<inventory> wrong(s, "pos"); }) == errc::type_mismatch);
    struct bigger { char bytes[64]; };
    CHECK(code_of([&] { keeper<bigger> wrong(s, "pos"); }) == errc::state_too_large);
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
    using namespace keepsake::detail;
    std::uint64_t entry_offset = 0;
    io.seekg(sizeof(segment_header) + offsetof(dir_entry, offset));
    io.read(reinterpret_cast<char*>(&entry_offset), sizeof(entry_offset));
    const std::uint64_t stride = slot_stride(sizeof(long));
    for (std::uint64_t slot : {std::uint64_t{0}, std::uint64_t{1}}) {
        io.seekp(static_cast<std::streamoff>(entry_offset + slot * stride + sizeof(slot_header)));
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

TEST_CASE("restore_into leaves the caller's value alone when no slot decodes", "[keeper]") {
    shm_dir dir;
    std::uint64_t capacity = 0;
    {
        segment s("decode", dir.options());
        keeper<inventory> k(s, "inv");
        k.commit({"first", {1}});
        k.commit({"second", {2}});
        capacity = k.slot_capacity();
    }
    // Cut both slots' sizes to 10 bytes and re-seal them with valid checksums:
    // the string's length prefix (8 bytes) decodes, its characters do not.
    using namespace keepsake::detail;
    std::fstream io(dir.file("decode"), std::ios::in | std::ios::out | std::ios::binary);
    std::uint64_t entry_offset = 0;
    io.seekg(sizeof(segment_header) + offsetof(dir_entry, offset));
    io.read(reinterpret_cast<char*>(&entry_offset), sizeof(entry_offset));
    for (std::uint64_t slot = 0; slot < 2; ++slot) {
        const auto at = static_cast<std::streamoff>(entry_offset + slot * slot_stride(capacity));
        slot_header header{};
        io.seekg(at);
        io.read(reinterpret_cast<char*>(&header), sizeof(header));
        std::string data(10, '\0');
        io.read(data.data(), 10);
        header.size = 10;
        header.checksum = slot_checksum(header.generation, header.size, header.fingerprint, header.schema_version,
                                        header.codec, data.data());
        io.seekp(at);
        io.write(reinterpret_cast<const char*>(&header), sizeof(header));
    }
    io.close();
    segment s("decode", dir.options());
    keeper<inventory> k(s, "inv");
    inventory mine{"untouched", {9, 9}};
    CHECK_FALSE(k.restore_into(mine).has_value());
    CHECK(mine.owner == "untouched");
    CHECK(mine.items == std::vector<int>{9, 9});
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

TEST_CASE("a keeper moved elsewhere keeps its key; the key is free once it is gone", "[keeper]") {
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
