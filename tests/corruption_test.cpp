// Damaged bytes: flipped bytes in the header, the directory and the slots
// give the newest valid state or a clear keepsake::error, never a crash.
#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>

#include "support.hpp"

namespace corruption_tests {  // a unity build's sources keep their names apart (tests/CMakeLists.txt)

using keepsake::errc;
using keepsake::keeper;
using keepsake::segment;
using test_support::blob;
using test_support::shm_dir;

namespace {

struct notes {
    std::string title;
    std::vector<std::uint64_t> lines;
    template <class Archive>
    void serialize(Archive& archive) {
        archive(title, lines);
    }
};

notes make_notes(std::uint64_t generation) {
    return notes{"notes-" + std::to_string(generation), std::vector<std::uint64_t>(generation + 3, generation)};
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_file(const std::string& path, const std::string& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Opens the reference segment (as build_reference made it, or as damaged).
segment open_reference(const shm_dir& dir) {
    return segment("ref", dir.options(64 * 1024, 4));
}

// Rewrites the reference segment's file with `damage` applied to its bytes.
template <class Damage>
void damage_reference(const shm_dir& dir, Damage&& damage) {
    std::string bytes = read_file(dir.file("ref"));
    damage(bytes);
    write_file(dir.file("ref"), bytes);
}

// A segment with a raw key and a cereal key, each committed three times
// (so both slots of each hold a valid state: generations 2 and 3).
void build_reference(const shm_dir& dir) {
    segment s = open_reference(dir);
    keeper<blob<256>> raw(s, "raw");
    keeper<notes> text(s, "text");
    blob<256> value{};
    for (std::uint64_t g = 1; g <= 3; ++g) {
        blob<256>::make(value, g);
        raw.commit(value);
        text.commit(make_notes(g));
    }
}

// Where the first slot of `key` lies in the file, read from its directory.
std::uint64_t entry_offset(const std::string& bytes, const std::string& key) {
    return test_support::find_slots(bytes, key).first;
}

template <class T, class Check>
void restore_any(segment& s, const std::string& key, Check&& check, int& restored, int& fell_back) {
    keeper<T> k(s, key);
    auto kept = k.restore();
    if (!kept) return;
    check(kept->value, kept->info.generation);
    ++restored;
    fell_back += kept->info.generation < 3 ? 1 : 0;
}

} // namespace

TEST_CASE("a damaged newest slot falls back to the older valid one and says so", "[corruption]") {
    shm_dir dir;
    build_reference(dir);
    damage_reference(dir, [](std::string& bytes) {
        // Generation 3 is in slot 0 (1 -> slot 0, 2 -> slot 1, 3 -> slot 0).
        bytes[entry_offset(bytes, "raw") + sizeof(keepsake::detail::slot_header) + 17] ^= 0x40;
    });

    segment s = open_reference(dir);
    keeper<blob<256>> raw(s, "raw");
    auto kept = raw.restore();
    REQUIRE(kept);
    CHECK(kept->info.generation == 2);
    CHECK(kept->info.skipped_slots == 1);
    CHECK(kept->value.consistent());
    CHECK(kept->value.generation == 2);
    // The next commit goes over the damaged slot and stays above generation 3.
    CHECK(raw.commit(kept->value) == 4);
    CHECK(raw.restore()->info.generation == 4);
}

TEST_CASE("a damaged generation word never makes a commit that restore would skip", "[corruption][generation]") {
    using keepsake::detail::max_generation;
    for (const std::uint64_t word : {~std::uint64_t{0}, ~std::uint64_t{0} - 1, max_generation + 1, max_generation,
                                     max_generation - 1, std::uint64_t{1000}, std::uint64_t{5}}) {
        CAPTURE(word);
        shm_dir dir;
        build_reference(dir);
        damage_reference(dir, [&](std::string& bytes) {
            using namespace keepsake::detail;
            // Slot 1 holds generation 2; make it claim `word` (its checksum
            // no longer holds, so it is not restored either).
            const std::uint64_t slot1 = entry_offset(bytes, "raw") + slot_stride(sizeof(blob<256>));
            std::memcpy(&bytes[slot1 + offsetof(slot_header, generation)], &word, sizeof(word));
        });
        segment s = open_reference(dir);
        keeper<blob<256>> raw(s, "raw");
        auto kept = raw.restore();
        REQUIRE(kept);
        CHECK(kept->info.generation == 3);
        // Far above the newest valid one, a damaged word is ignored; just
        // above it (a damaged newest commit), its number is not used again.
        const std::uint64_t expected = word == 5 ? 6 : 4;
        for (std::uint64_t next = expected; next < expected + 3; ++next) {
            CHECK(raw.commit(kept->value) == next);
            CHECK(raw.restore()->info.generation == next);
        }
    }
}


TEST_CASE("a damaged slot size never leads outside the slot", "[corruption]") {
    shm_dir dir;
    build_reference(dir);
    damage_reference(dir, [](std::string& bytes) {
        const std::uint64_t huge = ~std::uint64_t{0} / 2;
        std::memcpy(&bytes[entry_offset(bytes, "text") + offsetof(keepsake::detail::slot_header, size)], &huge,
                    sizeof(huge));
    });
    segment s = open_reference(dir);
    keeper<notes> text(s, "text");
    auto kept = text.restore();
    REQUIRE(kept);
    CHECK(kept->info.generation == 2);
    CHECK(kept->value.title == "notes-2");
}

TEST_CASE("a damaged header or magic is a clear error, not a rebuild", "[corruption]") {
    shm_dir dir;
    build_reference(dir);
    const std::string original = read_file(dir.file("ref"));
    for (std::size_t at : {std::size_t{0}, std::size_t{3}, std::size_t{12}, std::size_t{20}, std::size_t{33}}) {
        std::string bytes = original;
        bytes[at] ^= 0x01;
        write_file(dir.file("ref"), bytes);
        try {
            segment s = open_reference(dir);
            FAIL("opened a segment with a damaged header byte " << at);
        } catch (const keepsake::error& failure) {
            CHECK(failure.code() == errc::segment_corrupt);
            CHECK(std::string(failure.what()).find("remove it") != std::string::npos);
        }
        CHECK(read_file(dir.file("ref")) == bytes);  // left as found
    }
}

TEST_CASE("a damaged directory entry blocks its key with a clear error until dropped", "[corruption]") {
    shm_dir dir;
    build_reference(dir);
    damage_reference(dir, [](std::string& bytes) {
        using namespace keepsake::detail;
        // Flip a byte of the first entry's key ("raw" -> "r?w").
        bytes[sizeof(segment_header) + offsetof(dir_entry, key) + 1] ^= 0x20;
    });
    segment s = open_reference(dir);
    CHECK(s.damaged_entries() == 1);
    try {
        keeper<blob<256>> raw(s, "raw");
        FAIL("attached to a key that may be in a damaged entry");
    } catch (const keepsake::error& failure) {
        CHECK(failure.code() == errc::segment_corrupt);
        CHECK(std::string(failure.what()).find("drop_damaged_entries") != std::string::npos);
    }
    s.drop_damaged_entries();
    CHECK(s.damaged_entries() == 0);
    keeper<notes> text(s, "text");  // the undamaged key is intact
    CHECK(text.restore()->value.title == "notes-3");
    keeper<blob<256>> raw(s, "raw");  // the dropped key starts afresh
    CHECK_FALSE(raw.restore().has_value());
}

TEST_CASE("random byte flips anywhere give a committed state or a clear error", "[corruption]") {
    shm_dir dir;
    build_reference(dir);
    const std::string original = read_file(dir.file("ref"));
    const std::uint64_t used_end = entry_offset(original, "text") + 2 * keepsake::detail::slot_stride(16 * 1024);
    std::mt19937_64 rng(std::random_device{}());
    const int trials = test_support::env_count("KEEPSAKE_FLIP_TRIALS", 3000);
    int errors = 0, restored = 0, fell_back = 0, opened = 0;
    for (int trial = 0; trial < trials; ++trial) {
        std::string bytes = original;
        const int flips = 1 + static_cast<int>(rng() % 4);
        for (int f = 0; f < flips; ++f) {
            // Half the flips in header + directory, half in the slots.
            const std::uint64_t span = (rng() & 1) ? 256 + 4 * sizeof(keepsake::detail::dir_entry) : used_end;
            bytes[rng() % span] ^= static_cast<char>(1 + rng() % 255);
        }
        write_file(dir.file("ref"), bytes);
        try {
            segment s = open_reference(dir);
            ++opened;
            restore_any<blob<256>>(s, "raw", [](const blob<256>& value, std::uint64_t generation) {
                REQUIRE(value.consistent());
                REQUIRE(value.generation == generation);
                REQUIRE((generation == 2 || generation == 3));
            }, restored, fell_back);
            restore_any<notes>(s, "text", [](const notes& value, std::uint64_t generation) {
                const notes expected = make_notes(generation);
                REQUIRE(value.title == expected.title);
                REQUIRE(value.lines == expected.lines);
                REQUIRE((generation == 2 || generation == 3));
            }, restored, fell_back);
        } catch (const keepsake::error& failure) {
            ++errors;
            const errc code = failure.code();
            REQUIRE((code == errc::segment_corrupt || code == errc::type_mismatch || code == errc::layout_mismatch));
        }
    }
    std::printf("byte flips: %d trials, %d opened, %d states restored (%d from the older slot), %d clear errors\n",
                trials, opened, restored, fell_back, errors);
    CHECK(restored > 0);
    CHECK(errors > 0);
}

TEST_CASE("a directory entry copied onto another, or with a key the rules refuse, is set aside in every view",
          "[corruption]") {
    using namespace keepsake::detail;
    shm_dir dir;
    {
        segment s("twice", dir.options());
        keeper<int>(s, "a").commit(1);
        keeper<int>(s, "b").commit(2);
    }
    std::string bytes = test_support::read_file(dir.file("twice"));
    segment_header header{};
    std::memcpy(&header, bytes.data(), sizeof(header));
    const std::size_t first = header.blocks[0].offset;
    SECTION("a second entry of key 'a' (its words check out)") {
        std::memcpy(&bytes[first + sizeof(dir_entry)], &bytes[first], sizeof(dir_entry));
    }
    SECTION("key 'b' renamed to 'b b', resealed") {
        dir_entry entry{};
        std::memcpy(&entry, &bytes[first + sizeof(dir_entry)], sizeof(entry));
        entry.key_length = 3;
        std::memcpy(entry.key, "b b", 3);
        entry.checksum = entry_checksum_of(entry);
        for (region_desc& region : entry.regions) region.checksum = region_checksum_of(region, entry.checksum);
        std::memcpy(&bytes[first + sizeof(dir_entry)], &entry, sizeof(entry));
    }
    { std::ofstream(dir.file("twice"), std::ios::binary | std::ios::trunc) << bytes; }
    {
        segment view = segment::open_existing("twice", keepsake::segment_access::read_only, dir.path());
        REQUIRE(view.entries().size() == 1);
        CHECK(view.entries()[0].key == "a");
    }
    segment s("twice", dir.options());
    CHECK(s.entries().size() == 1);
    CHECK(s.damaged_entries() == 1);
    s.drop_damaged_entries();
    CHECK(keeper<int>(s, "a").restore()->value == 1);
}

// Commits never repeat a generation; damage or a forged file can. Restore,
// the listing and the exporter's copy then try both slots of that
// generation (the higher index first) and all take the same valid one.
TEST_CASE("two slots forged to one generation: restore, entries() and the exporter's copy agree", "[corruption]") {
    using namespace keepsake::detail;
    const bool damage_slot0 = GENERATE(true, false);
    CAPTURE(damage_slot0);
    shm_dir dir;
    build_reference(dir);  // "raw": generation 3 in slot 0, 2 in slot 1
    damage_reference(dir, [&](std::string& bytes) {
        const test_support::slot_place place = test_support::find_slots(bytes, "raw");
        slot_header header{};
        std::memcpy(&header, &bytes[place.header(1)], sizeof(header));
        header.generation = 3;
        if (damage_slot0) {  // slot 1 made a valid generation 3 (with generation 2's bytes); slot 0 damaged
            header.checksum = slot_checksum(header.generation, header.size, header.fingerprint, header.schema_version,
                                            header.codec, &bytes[place.data(1)], header.commit_ns, header.tag);
            bytes[place.data(0) + 17] ^= 0x40;
        }  // else slot 1 claims generation 3 without a checksum that holds
        std::memcpy(&bytes[place.header(1)], &header, sizeof(header));
    });
    segment s = open_reference(dir);
    const std::uint64_t bytes_of = damage_slot0 ? 2 : 3;  // whose bytes the valid slot holds

    const auto copied = keepsake::testing::committed<blob<256>>(s, "raw");
    REQUIRE(copied);
    CHECK(copied->consistent());
    CHECK(copied->generation == bytes_of);
    bool listed = false;
    for (const keepsake::entry_info& entry : s.entries())
        if (entry.key == "raw") {
            listed = true;
            CHECK(entry.generation == 3);
            CHECK(entry.invalid_slots == 1);
        }
    CHECK(listed);
    keeper<blob<256>> raw(s, "raw");
    auto kept = raw.restore();
    REQUIRE(kept);
    CHECK(kept->info.generation == 3);
    CHECK(kept->info.skipped_slots == (damage_slot0 ? 0u : 1u));
    CHECK(kept->value.generation == bytes_of);
    CHECK(raw.commit(kept->value) == 4);
}

// A keeper gives its key back by the directory entry it holds, not by name:
// an entry whose key bytes were damaged while attached (so a second keeper
// of that name took a new entry) must not free the second keeper's hold
// when the first goes.
TEST_CASE("a keeper whose entry's key was damaged while attached releases its own entry only", "[corruption]") {
    using namespace keepsake::detail;
    shm_dir dir;
    segment s("held", dir.options());
    std::optional<keeper<int>> first(std::in_place, s, "victimkey");
    {
        std::fstream file(dir.file("held"), std::ios::in | std::ios::out | std::ios::binary);
        segment_header header{};
        file.read(reinterpret_cast<char*>(&header), sizeof(header));
        bool damaged = false;
        for (std::uint32_t i = 0; i < header.blocks[0].count && !damaged; ++i) {
            const std::uint64_t at = header.blocks[0].offset + i * sizeof(dir_entry);
            dir_entry entry{};
            file.seekg(static_cast<std::streamoff>(at));
            file.read(reinterpret_cast<char*>(&entry), sizeof(entry));
            if (std::string(entry.key, entry.key_length) != "victimkey") continue;
            entry.key[0] = 'V';
            file.seekp(static_cast<std::streamoff>(at + offsetof(dir_entry, key)));
            file.write(entry.key, 1);
            damaged = true;
        }
        REQUIRE(damaged);
    }
    keeper<int> second(s, "victimkey");  // the damaged entry no longer names it: a new entry
    second.commit(7);
    first.reset();
    const keepsake::error refused = test_support::error_from([&] { keeper<int> third(s, "victimkey"); });
    CHECK(refused.code() == errc::key_in_use);
}

}  // namespace corruption_tests
