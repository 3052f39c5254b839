// The inspect tool (keepsake/inspect.hpp) and what it stands on: read-only
// and maintenance views of a segment, and the commit time in each slot.
// Segments come from fork()ed children that are SIGKILLed, as a user's would.
#include <catch2/catch.hpp>

#include <cstdint>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>

#include <keepsake/inspect.hpp>

#include "support.hpp"

namespace inspect_tests {  // a unity build's sources keep their names apart (tests/CMakeLists.txt)

using keepsake::errc;
using keepsake::inspector;
using keepsake::keeper;
using keepsake::segment;
using keepsake::segment_access;
using test_support::shm_dir;
using test_support::temp_dir;

namespace {

struct position {  // trivially copyable: the raw codec
    double x = 0;
    double y = 0;
    std::int32_t id = 0;
    template <class Archive>
    void serialize(Archive& archive) {
        archive(CEREAL_NVP(x), CEREAL_NVP(y), CEREAL_NVP(id));
    }
};

struct profile {  // the cereal codec
    std::string name;
    std::vector<int> scores;
    template <class Archive>
    void serialize(Archive& archive) {
        archive(CEREAL_NVP(name), CEREAL_NVP(scores));
    }
};

struct ran {
    int status = -1;
    std::string out;
    std::string err;
};

ran run_tool(const inspector& tool, const shm_dir& dir, std::vector<std::string> args) {
    args.insert(args.begin(), {"--dir", dir.path()});
    std::ostringstream out, err;
    ran result;
    result.status = tool.run(args, out, err);
    result.out = out.str();
    result.err = err.str();
    return result;
}

inspector make_tool() {
    inspector tool;
    tool.register_type<position>("position").register_type<profile>("profile");
    return tool;
}

std::vector<char> file_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Whether the file holds exactly `bytes` (a bool: Catch would print a
// whole segment for a failed vector comparison).
bool file_holds(const std::string& path, const std::vector<char>& bytes) { return file_bytes(path) == bytes; }

void write_byte(const std::string& path, std::size_t offset, unsigned char value) {
    std::fstream io(path, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(static_cast<std::streamoff>(offset));
    io.put(static_cast<char>(value));
}

// The file offset of slot `slot`'s header, for the first key of a segment.
std::size_t slot_offset(const std::string& path, std::uint32_t slot) {
    return static_cast<std::size_t>(test_support::find_slots_in_file(path).header(slot));
}

// The row of `key` in `show`'s table, split at tabs.
std::vector<std::string> row_of(const std::string& shown, const std::string& key) {
    std::istringstream lines(shown);
    for (std::string line; std::getline(lines, line);) {
        if (line.compare(0, key.size() + 1, key + "\t") != 0) continue;
        std::vector<std::string> cells;
        std::istringstream split(line);
        for (std::string cell; std::getline(split, cell, '\t');) cells.push_back(cell);
        return cells;
    }
    return {};
}

struct child_report {
    std::atomic<int> ready{0};
    std::atomic<std::uint64_t> position_generation{0};
    std::atomic<std::uint64_t> profile_generation{0};
};

const position last_position{1.5, -2.25, 7};

// A child that commits a position three times and a profile once, says so,
// then waits to be killed, owning the segment "app".
pid_t start_owner(const shm_dir& dir, child_report& report) {
    return test_support::fork_child([&] {
        segment s("app", dir.options());
        keeper<position> where(s, "pos");
        keeper<profile> who(s, "profile");
        where.commit(position{0, 0, 1});
        where.commit(position{1, 1, 2});
        report.position_generation.store(where.commit(last_position));
        report.profile_generation.store(who.commit(profile{"ada", {3, 1, 4}}));
        report.ready.store(1, std::memory_order_release);
        for (;;) ::pause();
    });
}

} // namespace

TEST_CASE("a commit records its time, and a slot without one stays valid", "[inspect][keeper]") {
    shm_dir dir;
    {
        segment s("timed", dir.options());
        keeper<position> timed(s, "timed");
        const std::uint64_t before = keepsake::detail::commit_clock_ns();
        timed.commit(position{1, 2, 3});
        const std::uint64_t after = keepsake::detail::commit_clock_ns();
        REQUIRE(s.entries().size() == 1);
        CHECK(s.entries()[0].commit_ns >= before);
        CHECK(s.entries()[0].commit_ns <= after);
        CHECK(s.entries()[0].commit_ns != 0);
    }
    // A slot written before commit times were recorded (commit_ns 0, the
    // checksum of then) still checks out: old segments keep their state.
    const std::size_t slot0 = slot_offset(dir.file("timed"), 0);
    const std::vector<char> bytes = file_bytes(dir.file("timed"));
    keepsake::detail::slot_header header{};
    std::memcpy(&header, bytes.data() + slot0, sizeof(header));
    REQUIRE(header.generation == 1);
    header.commit_ns = 0;
    header.checksum = keepsake::detail::slot_checksum(header.generation, header.size, header.fingerprint,
                                                      header.schema_version, header.codec,
                                                      bytes.data() + slot0 + sizeof(header), 0, header.tag);
    {
        std::fstream io(dir.file("timed"), std::ios::in | std::ios::out | std::ios::binary);
        io.seekp(static_cast<std::streamoff>(slot0));
        io.write(reinterpret_cast<const char*>(&header), sizeof(header));
    }
    segment s("timed", dir.options());
    keeper<position> timed(s, "timed");
    const auto restored = timed.restore();
    REQUIRE(restored);
    CHECK(restored->value.id == 3);
    CHECK(restored->info.skipped_slots == 0);
    CHECK(s.entries()[0].commit_ns == 0);
    CHECK(run_tool(make_tool(), dir, {"show", "timed", "--tsv"}).out.find("\tunknown\t") != std::string::npos);
}

TEST_CASE("a flipped commit time fails the slot's checksum", "[inspect][corruption]") {
    shm_dir dir;
    {
        segment s("flip", dir.options());
        keeper<position> k(s, "k");
        k.commit(position{1, 1, 1});
        k.commit(position{2, 2, 2});  // generation 2, in slot 1
    }
    const std::size_t slot1 = slot_offset(dir.file("flip"), 1);
    const std::size_t at = slot1 + offsetof(keepsake::detail::slot_header, commit_ns) + 2;
    // Flipped, not set: a set byte that was already that value changes nothing.
    write_byte(dir.file("flip"), at, static_cast<unsigned char>(file_bytes(dir.file("flip"))[at] ^ 0x5a));
    segment s("flip", dir.options());
    keeper<position> k(s, "k");
    const auto restored = k.restore();
    REQUIRE(restored);
    CHECK(restored->value.id == 1);
    CHECK(restored->info.skipped_slots == 1);
}

TEST_CASE("a read-only view works beside a live owner and changes nothing", "[inspect][segment]") {
    shm_dir dir;
    segment owner("live", dir.options());
    keeper<position> k(owner, "pos");
    k.commit(last_position);

    const std::vector<char> before = file_bytes(owner.path());
    {
        segment view = segment::open_existing("live", segment_access::read_only, dir.path());
        CHECK(view.access() == segment_access::read_only);
        const keepsake::segment_status status = view.status();
        CHECK(status.owner.pid == static_cast<long>(::getpid()));
        CHECK(status.owner_alive);
        CHECK_FALSE(status.closed_cleanly);
        REQUIRE(view.entries().size() == 1);
        CHECK(view.entries()[0].generation == 1);
        // Writing through it is refused, never a write to a read-only mapping.
        CHECK(test_support::error_from([&] { keeper<position> other(view, "other"); }).code() ==
              errc::invalid_argument);
        CHECK(test_support::error_from([&] { view.remove_key("pos"); }).code() == errc::invalid_argument);
        CHECK(test_support::error_from([&] { view.drop_damaged_entries(); }).code() == errc::invalid_argument);
    }
    CHECK(file_holds(owner.path(), before));
    CHECK(test_support::error_from([&] { segment::open_existing("live", segment_access::owner, dir.path()); })
              .code() == errc::invalid_argument);
    // A maintenance view needs the lock, which the owner holds.
    const keepsake::error refused =
        test_support::error_from([&] { segment::open_existing("live", segment_access::maintenance, dir.path()); });
    CHECK(refused.code() == errc::segment_owned);
    CHECK(std::string(refused.what()).find(std::to_string(::getpid())) != std::string::npos);
    // The owner goes on committing.
    CHECK(k.commit(position{}) == 2);
}

TEST_CASE("a maintenance view leaves the crash and the recorded owner for the next owner to see",
          "[inspect][segment][crash]") {
    shm_dir dir;
    auto* report = test_support::shared_anonymous<child_report>();
    const pid_t child = start_owner(dir, *report);
    REQUIRE(test_support::wait_ready(report->ready, child));
    test_support::kill_and_reap(child);
    {
        segment held = segment::open_existing("app", segment_access::maintenance, dir.path());
        CHECK(held.remove_key("profile"));
        // While it is held, no program can take the segment.
        CHECK(test_support::error_from([&] { segment s("app", dir.options()); }).code() == errc::segment_owned);
    }
    segment next("app", dir.options());
    CHECK(next.outcome() == keepsake::open_outcome::reopened_after_crash);
    REQUIRE(next.previous_owner());
    CHECK(next.previous_owner()->pid == static_cast<long>(child));
    REQUIRE(next.entries().size() == 1);
    CHECK(next.entries()[0].key == "pos");
    test_support::release_shared(report);
}

TEST_CASE("inspect lists, shows, dumps, exports and deletes the segment of a SIGKILLed process",
          "[inspect][crash]") {
    shm_dir dir;
    temp_dir stores;
    auto* report = test_support::shared_anonymous<child_report>();
    const std::uint64_t started = keepsake::detail::commit_clock_ns();
    const pid_t child = start_owner(dir, *report);
    REQUIRE(test_support::wait_ready(report->ready, child));
    const std::uint64_t reported = keepsake::detail::commit_clock_ns();
    test_support::kill_and_reap(child);
    const inspector tool = make_tool();
    const std::string pid = std::to_string(child);
    const std::vector<char> untouched = file_bytes(dir.file("app"));

    SECTION("list") {
        const ran listed = run_tool(tool, dir, {"list"});
        CHECK(listed.status == 0);
        CHECK(listed.out == "app  2 keys, 1048576 bytes, crashed: pid " + pid + " died without closing it\n");
    }
    SECTION("show") {
        const ran text = run_tool(tool, dir, {"show", "app"});
        REQUIRE(text.status == 0);
        CHECK(text.out.find("owner     crashed: pid " + pid + " died without closing it") != std::string::npos);
        CHECK(text.out.find("keys      2\n") != std::string::npos);
        CHECK(text.out.find("\nKEY      GENERATION  SIZE  FINGERPRINT         TYPE      CODEC   SCHEMA  COMMITTED") !=
              std::string::npos);
        const ran shown = run_tool(tool, dir, {"show", "app", "--tsv"});
        REQUIRE(shown.status == 0);
        CHECK(shown.out.compare(0, 4, "KEY\t") == 0);
        const segment view = segment::open_existing("app", segment_access::read_only, dir.path());
        for (const keepsake::entry_info& entry : view.entries()) {
            CHECK(entry.commit_ns >= started);
            CHECK(entry.commit_ns <= reported);
            const std::vector<std::string> row = row_of(shown.out, entry.key);
            REQUIRE(row.size() == 10);
            CHECK(row[2] == std::to_string(entry.size));
            CHECK(row[7] == keepsake::detail::utc_time(entry.commit_ns));
            CHECK(row[8] == "2 x " + std::to_string(entry.slot_capacity) + " B");
            CHECK(row[9] == "-");
        }
        const std::vector<std::string> pos = row_of(shown.out, "pos");
        REQUIRE(pos.size() == 10);
        CHECK(pos[1] == std::to_string(report->position_generation.load()));
        CHECK(pos[1] == "3");
        CHECK(pos[2] == std::to_string(sizeof(position)));
        CHECK(pos[3] == keepsake::detail::hex64(keepsake::type_fingerprint<position>()));
        CHECK(pos[4] == "position");
        CHECK(pos[5] == "raw");
        CHECK(pos[6] == "1");
        const std::vector<std::string> who = row_of(shown.out, "profile");
        REQUIRE(who.size() == 10);
        CHECK(who[1] == "1");
        CHECK(who[3] == keepsake::detail::hex64(keepsake::type_fingerprint<profile>()));
        CHECK(who[4] == "profile");
        CHECK(who[5] == "cereal");
    }
    SECTION("dump as hex, raw bytes and JSON") {
        const ran hex = run_tool(tool, dir, {"dump", "app", "pos"});
        REQUIRE(hex.status == 0);
        std::vector<std::byte> expected(sizeof(position));
        std::memcpy(expected.data(), &last_position, sizeof(position));
        std::ostringstream hex_lines;
        keepsake::detail::hex_dump(expected, hex_lines);
        CHECK(hex.out == "key pos, generation 3, " + std::to_string(sizeof(position)) + " bytes, fingerprint " +
                             keepsake::detail::hex64(keepsake::type_fingerprint<position>()) +
                             " (position, raw), schema 1\n" + hex_lines.str());

        const ran raw = run_tool(tool, dir, {"dump", "app", "pos", "--raw"});
        REQUIRE(raw.status == 0);
        REQUIRE(raw.out.size() == sizeof(position));
        position decoded;
        std::memcpy(&decoded, raw.out.data(), sizeof(decoded));
        CHECK(decoded.x == 1.5);
        CHECK(decoded.y == -2.25);
        CHECK(decoded.id == 7);

        const ran json = run_tool(tool, dir, {"dump", "app", "pos", "--json"});
        REQUIRE(json.status == 0);
        CHECK(json.out.find("\"x\": 1.5") != std::string::npos);
        CHECK(json.out.find("\"y\": -2.25") != std::string::npos);
        CHECK(json.out.find("\"id\": 7") != std::string::npos);
        const ran who = run_tool(tool, dir, {"dump", "app", "profile", "--json"});
        REQUIRE(who.status == 0);
        CHECK(who.out.find("\"name\": \"ada\"") != std::string::npos);
        CHECK(who.out.find("\"scores\": [") != std::string::npos);
    }
    SECTION("export to SQLite and to files") {
        const std::string db = stores.path() + "/state.db";
        const ran to_sqlite = run_tool(tool, dir, {"export", "app", "--sqlite", db, "--prefix", "app/"});
        REQUIRE(to_sqlite.status == 0);
        CHECK(to_sqlite.out.find("exported 2 record(s) of segment 'app'") != std::string::npos);
        keepsake::sqlite_store sqlite(db);
        CHECK(sqlite.list("") == std::vector<std::string>{"app/pos", "app/profile"});
        const auto pos = sqlite.get("app/pos");
        REQUIRE(pos);
        CHECK(pos->generation == 3);
        CHECK(pos->fingerprint == keepsake::type_fingerprint<position>());
        position stored;
        keepsake::decode_into(pos->bytes.data(), pos->bytes.size(), stored);
        CHECK(stored.id == 7);

        const ran to_files = run_tool(tool, dir, {"export", "app", "--files", stores.path() + "/files"});
        REQUIRE(to_files.status == 0);
        keepsake::file_store files(stores.path() + "/files");
        const auto who = files.get("profile");
        REQUIRE(who);
        profile decoded;
        keepsake::decode_into(who->bytes.data(), who->bytes.size(), decoded);
        CHECK(decoded.name == "ada");
        CHECK(decoded.scores == std::vector<int>{3, 1, 4});
    }
    SECTION("a second export of an unchanged segment writes nothing, and says so") {
        const std::string db = stores.path() + "/state.db";
        REQUIRE(run_tool(tool, dir, {"export", "app", "--sqlite", db}).out.find("exported 2 record(s)") !=
                std::string::npos);
        const ran again = run_tool(tool, dir, {"export", "app", "--sqlite", db});
        REQUIRE(again.status == 0);
        CHECK(again.out == "exported 0 record(s) of segment 'app' to SQLite store " + db +
                               "; 2 already there at the same generation\n");
        const ran files = run_tool(tool, dir, {"export", "app", "--files", stores.path() + "/files"});
        CHECK(files.out.find("exported 2 record(s)") != std::string::npos);
        const ran files_again = run_tool(tool, dir, {"export", "app", "--files", stores.path() + "/files"});
        CHECK(files_again.out.find("exported 0 record(s)") != std::string::npos);
        CHECK(files_again.out.find("2 already there") != std::string::npos);
    }
    SECTION("the stores it exported to, read back: list, get and dump, changing nothing") {
        const std::string db = stores.path() + "/state.db";
        const std::string files = stores.path() + "/files";
        REQUIRE(run_tool(tool, dir, {"export", "app", "--sqlite", db, "--prefix", "app/"}).status == 0);
        REQUIRE(run_tool(tool, dir, {"export", "app", "--files", files}).status == 0);
        std::ofstream(files + "/leftover.tmp") << "an interrupted put's file";

        const ran listed = run_tool(tool, dir, {"store", "list", "--sqlite", db, "--prefix", "app/", "--tsv"});
        REQUIRE(listed.status == 0);
        CHECK(listed.out.compare(0, 4, "KEY\t") == 0);
        const std::vector<std::string> pos = row_of(listed.out, "app/pos");
        REQUIRE(pos.size() == 8);
        CHECK(pos[1] == "3");
        CHECK(pos[2] == std::to_string(sizeof(position)));
        CHECK(pos[3] == keepsake::detail::hex64(keepsake::type_fingerprint<position>()));
        CHECK(pos[4] == "position");
        CHECK(pos[6] == "1");
        CHECK(row_of(listed.out, "app/profile").at(1) == "1");
        const ran text = run_tool(tool, dir, {"store", "list", "--files", files});
        CHECK(text.out.find("records   2\n") != std::string::npos);
        CHECK(text.out.find("file store " + files) != std::string::npos);

        const ran got = run_tool(tool, dir, {"store", "get", "--sqlite", db, "app/pos"});
        REQUIRE(got.status == 0);
        CHECK(got.out.find("generation   3\n") != std::string::npos);
        CHECK(got.out.find("type         position\n") != std::string::npos);
        CHECK(got.out.find("checksum     valid\n") != std::string::npos);

        const ran json = run_tool(tool, dir, {"store", "dump", "--files", files, "profile", "--json"});
        REQUIRE(json.status == 0);
        CHECK(json.out.find("\"name\": \"ada\"") != std::string::npos);
        const ran raw = run_tool(tool, dir, {"store", "dump", "--sqlite", db, "app/pos", "--raw"});
        REQUIRE(raw.out.size() == sizeof(position));
        position decoded;
        std::memcpy(&decoded, raw.out.data(), sizeof(decoded));
        CHECK(decoded.id == 7);
        const ran hex = run_tool(tool, dir, {"store", "dump", "--sqlite", db, "app/pos"});
        CHECK(hex.out.rfind("key app/pos, generation 3, " + std::to_string(sizeof(position)) + " bytes", 0) == 0);

        // Read-only: the interrupted put's file is left to its owner.
        CHECK(std::filesystem::exists(files + "/leftover.tmp"));
        const ran missing = run_tool(tool, dir, {"store", "get", "--sqlite", db, "app/none"});
        CHECK(missing.status == 1);
        CHECK(missing.err.find("has no record 'app/none'") != std::string::npos);
        const ran no_file = run_tool(tool, dir, {"store", "list", "--sqlite", stores.path() + "/absent.db"});
        CHECK(no_file.status == 1);
        CHECK_FALSE(std::filesystem::exists(stores.path() + "/absent.db"));
    }
    // None of the above changed a byte of the segment.
    CHECK(file_holds(dir.file("app"), untouched));

    SECTION("delete") {
        const ran deleted = run_tool(tool, dir, {"delete", "app", "pos"});
        CHECK(deleted.status == 0);
        CHECK(deleted.out == "deleted key 'pos' from segment 'app'\n");
        const ran shown = run_tool(tool, dir, {"show", "app", "--tsv"});
        CHECK(row_of(shown.out, "pos").empty());
        CHECK(row_of(shown.out, "profile").size() == 10);
        // The crash is still there for the program's next run to see.
        CHECK(run_tool(tool, dir, {"show", "app"}).out.find("crashed: pid " + pid) != std::string::npos);
        const ran again = run_tool(tool, dir, {"delete", "app", "pos"});
        CHECK(again.status == 1);
        CHECK(again.err.find("has no key 'pos'") != std::string::npos);
    }
    test_support::release_shared(report);
}

TEST_CASE("inspect refuses to delete from a segment a live process owns, naming it", "[inspect][crash]") {
    shm_dir dir;
    auto* report = test_support::shared_anonymous<child_report>();
    const pid_t child = start_owner(dir, *report);
    REQUIRE(test_support::wait_ready(report->ready, child));
    const inspector tool = make_tool();

    const ran shown = run_tool(tool, dir, {"show", "app"});
    CHECK(shown.status == 0);
    CHECK(shown.out.find("open, owned by pid " + std::to_string(child) + " (alive)") != std::string::npos);
    CHECK(run_tool(tool, dir, {"dump", "app", "pos", "--json"}).status == 0);

    const ran refused = run_tool(tool, dir, {"delete", "app", "pos"});
    CHECK(refused.status == 1);
    CHECK(refused.err.find("cannot delete key 'pos'") != std::string::npos);
    CHECK(refused.err.find("pid " + std::to_string(child)) != std::string::npos);

    const ran whole = run_tool(tool, dir, {"remove", "app"});
    CHECK(whole.status == 1);
    CHECK(whole.err.find("cannot remove segment 'app'") != std::string::npos);
    CHECK(whole.err.find("pid " + std::to_string(child)) != std::string::npos);
    CHECK(segment::exists("app", dir.path()));

    test_support::kill_and_reap(child);
    CHECK(run_tool(tool, dir, {"delete", "app", "pos"}).status == 0);
    const ran removed = run_tool(tool, dir, {"remove", "app"});
    CHECK(removed.status == 0);
    CHECK(removed.out == "removed segment 'app' (" + dir.path() + ")\n");
    CHECK_FALSE(segment::exists("app", dir.path()));
    const ran again = run_tool(tool, dir, {"remove", "app"});
    CHECK(again.status == 1);
    CHECK(again.err.find("there is no segment 'app'") != std::string::npos);
    test_support::release_shared(report);
}

TEST_CASE("inspect gives a clear error and a non-zero status on bad input, never a crash", "[inspect]") {
    shm_dir dir;
    const inspector tool = make_tool();
    {
        segment s("good", dir.options());
        keeper<long> plain(s, "plain");
        plain.commit(42);
    }
    auto fails = [&](std::vector<std::string> args, int status, const std::string& says) {
        const ran result = run_tool(tool, dir, std::move(args));
        CHECK(result.status == status);
        CHECK(result.err.find(says) != std::string::npos);
        CHECK(result.out.empty());
        if (result.err.find(says) == std::string::npos) FAIL_CHECK("stderr was: " << result.err);
    };

    SECTION("unknown names") {
        fails({"show", "nosuch"}, 1, "there is no segment 'nosuch'");
        fails({"dump", "nosuch", "k"}, 1, "there is no segment 'nosuch'");
        fails({"delete", "nosuch", "k"}, 1, "there is no segment 'nosuch'");
        fails({"show", "bad name!"}, 1, "invalid segment name 'bad name!'");
        fails({"dump", "good", "nokey"}, 1, "segment 'good' has no key 'nokey'");
        fails({"dump", "good", "bad key!"}, 1, "invalid key 'bad key!'");
        fails({"delete", "good", "nokey"}, 1, "segment 'good' has no key 'nokey'");
        fails({"dump", "good", "plain", "--json"}, 1, "which no registered type has (registered: position, profile)");
        const ran missing = run_tool(tool, dir, {"--dir", dir.path() + "/absent", "list"});
        CHECK(missing.status == 1);
        CHECK(missing.err.find("does not exist") != std::string::npos);
    }
    SECTION("bad usage") {
        fails({}, 2, "no command given");
        fails({"frobnicate"}, 2, "unknown command 'frobnicate'");
        fails({"dump", "good"}, 2, "dump takes SEGMENT KEY (1 given)");
        fails({"show", "good", "--json"}, 2, "--json and --raw go with dump");
        fails({"dump", "good", "plain", "--tsv"}, 2, "--tsv goes with show");
        fails({"export", "good"}, 2, "export takes one store");
        fails({"export", "good", "--sqlite", "a", "--files", "b"}, 2, "export takes one store");
        fails({"list", "--bogus"}, 2, "unknown option --bogus");
        fails({"export", "good", "--files", "x", "--timeout", "soon"}, 2, "--timeout wants whole seconds");
        fails({"store", "list"}, 2, "store list takes one store");
        fails({"store", "get", "--files", "x"}, 2, "store get takes a store and KEY (0 given)");
        fails({"store", "frob", "--files", "x"}, 2, "unknown store command 'frob'");
        fails({"store"}, 2, "store needs list, get or dump");
        fails({"show", "good", "--sqlite", "x"}, 2, "--sqlite, --files and --prefix go with export and store");
        fails({"remove"}, 2, "remove takes SEGMENT (0 given)");
        std::ostringstream out, err;
        CHECK(tool.run({"--help"}, out, err) == 0);
        CHECK(out.str().find("usage: keepsake-inspect") != std::string::npos);
        std::ostringstream version, no_err;
        CHECK(tool.run({"--version"}, version, no_err) == 0);
        CHECK(version.str() == std::string("keepsake-inspect ") + KEEPSAKE_VERSION_STRING + " (segment layout " +
                                 std::to_string(keepsake::detail::segment_layout_version) + ")\n");
        CHECK(std::string(KEEPSAKE_VERSION_STRING) == std::to_string(KEEPSAKE_VERSION_MAJOR) + "." +
                                                         std::to_string(KEEPSAKE_VERSION_MINOR) + "." +
                                                         std::to_string(KEEPSAKE_VERSION_PATCH));
        CHECK(KEEPSAKE_VERSION == KEEPSAKE_VERSION_MAJOR * 10000 + KEEPSAKE_VERSION_MINOR * 100 + KEEPSAKE_VERSION_PATCH);
        const ran types = run_tool(tool, dir, {"types"});
        CHECK(types.status == 0);
        CHECK(types.out.find("position  " + keepsake::detail::hex64(keepsake::type_fingerprint<position>()) +
                             "  raw     1") != std::string::npos);
    }
    SECTION("damaged segments") {
        const std::string file = dir.file("good");
        const std::vector<std::string> field_names{"first_block_entries", "data_offset", "created_ns"};
        for (std::size_t offset : {offsetof(keepsake::detail::segment_header, first_block_entries),
                                   offsetof(keepsake::detail::segment_header, data_offset),
                                   offsetof(keepsake::detail::segment_header, created_ns) + 3}) {
            CAPTURE(offset);
            const std::vector<char> original = file_bytes(file);
            write_byte(file, offset, static_cast<unsigned char>(original[offset] ^ 0x41));
            const std::vector<char> damaged = file_bytes(file);
            for (const std::vector<std::string>& args :
                 {std::vector<std::string>{"show", "good"}, {"dump", "good", "plain"}, {"delete", "good", "plain"},
                  {"export", "good", "--files", dir.path() + "/out"}})
                fails(args, 1, "segment 'good' is damaged (header checksum mismatch)");
            const ran listed = run_tool(tool, dir, {"list"});
            CHECK(listed.status == 0);
            CHECK(listed.out.find("good  unreadable: segment 'good' is damaged") != std::string::npos);
            CHECK(file_holds(file, damaged));  // looked at, never rebuilt or wiped
            write_byte(file, offset, static_cast<unsigned char>(original[offset]));
        }
        write_byte(file, 0, 0x00);  // the magic
        fails({"show", "good"}, 1, "is not a keepsake segment, or its header is damaged (bad magic)");
        REQUIRE(::truncate(file.c_str(), 100) == 0);
        fails({"show", "good"}, 1, "is not a keepsake segment");
        write_byte(file, 0, 0x4b);
        fails({"show", "good"}, 1, "the file is shorter than its header");
    }
    SECTION("a damaged slot is reported, and its older generation dumped") {
        {
            segment s("good", dir.options());
            keeper<long> plain(s, "plain");
            plain.commit(43);  // generation 2, in slot 1
        }
        write_byte(dir.file("good"), slot_offset(dir.file("good"), 1) + sizeof(keepsake::detail::slot_header), 0x77);
        const ran shown = run_tool(tool, dir, {"show", "good", "--tsv"});
        CHECK(shown.status == 0);
        const std::vector<std::string> row = row_of(shown.out, "plain");
        REQUIRE(row.size() == 10);
        CHECK(row[1] == "1");
        CHECK(row[9] == "1 damaged slot(s)");
        const ran dumped = run_tool(tool, dir, {"dump", "good", "plain", "--raw"});
        REQUIRE(dumped.status == 0);
        long value = 0;
        REQUIRE(dumped.out.size() == sizeof(value));
        std::memcpy(&value, dumped.out.data(), sizeof(value));
        CHECK(value == 42);
    }
}

TEST_CASE("inspect list shows files it will not trust as refused, and never hangs on a FIFO", "[inspect][hostile]") {
    shm_dir dir;
    const inspector tool = make_tool();
    {
        segment s("good", dir.options());
        keeper<long>(s, "plain").commit(42);
    }
    REQUIRE(::mkfifo(dir.file("x").c_str(), 0600) == 0);  // opening it without O_NONBLOCK would wait forever
    REQUIRE(::symlink(dir.file("good").c_str(), dir.file("link").c_str()) == 0);
    std::filesystem::copy_file(dir.file("good"), dir.file("open"));
    REQUIRE(::chmod(dir.file("open").c_str(), 0644) == 0);

    const ran listed = run_tool(tool, dir, {"list"});
    CHECK(listed.status == 0);
    std::istringstream lines(listed.out);
    std::vector<std::string> rows;
    for (std::string line; std::getline(lines, line);) rows.push_back(line);
    REQUIRE(rows.size() == 4);
    CHECK(rows[0].rfind("good  1 key, ", 0) == 0);
    CHECK(rows[1].rfind("link  refused: a symbolic link (owner uid ", 0) == 0);
    CHECK(rows[2] == "open  refused: open to group or others (owner uid " + std::to_string(::geteuid()) +
                         ", mode 0644); see keepsake-inspect show open");
    CHECK(rows[3].rfind("x  refused: a FIFO (owner uid ", 0) == 0);

    for (const char* name : {"x", "link", "open"}) {
        INFO(name);
        const ran shown = run_tool(tool, dir, {"show", name});
        CHECK(shown.status == 1);
        CHECK_THAT(shown.err, Catch::Matchers::Contains("segment file " + dir.file(name) + " is refused") &&
                                  Catch::Matchers::Contains("chmod 600"));
    }
}

}  // namespace inspect_tests
