// Segment: names, creation, ownership, outcomes, growth, listing, removal.
#include <catch2/catch.hpp>

#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>

#include "support.hpp"

namespace segment_tests {  // a unity build's sources keep their names apart (tests/CMakeLists.txt)

using keepsake::errc;
using keepsake::open_outcome;
using keepsake::segment;
using test_support::shm_dir;

namespace {

errc code_of(const std::function<void()>& action) {
    try {
        action();
    } catch (const keepsake::error& failure) {
        return failure.code();
    }
    FAIL("expected a keepsake::error");
    return errc::invalid_argument;
}

std::string message_of(const std::function<void()>& action) {
    try {
        action();
    } catch (const keepsake::error& failure) {
        return failure.what();
    }
    FAIL("expected a keepsake::error");
    return {};
}

} // namespace

TEST_CASE("segment names follow the rules and a bad name creates nothing", "[segment]") {
    shm_dir dir;
    for (const std::string& bad : {std::string(), std::string("has space"), std::string("slash/inside"),
                                  std::string("dollar$"), std::string(201, 'a'), std::string("ünï")}) {
        CHECK(code_of([&] { segment s(bad, dir.options()); }) == errc::invalid_name);
    }
    CHECK(segment::list(dir.path()).empty());
    segment longest(std::string(200, 'n'), dir.options());
    segment dotted("a.b_c-D9", dir.options());
    CHECK(segment::list(dir.path()).size() == 2);
}

TEST_CASE("a new segment is created with mode 0600 unless asked otherwise", "[segment]") {
    shm_dir dir;
    {
        segment s("private", dir.options());
        CHECK(s.outcome() == open_outcome::created);
        CHECK_FALSE(s.previous_owner().has_value());
    }
    struct stat info {};
    REQUIRE(::stat(dir.file("private").c_str(), &info) == 0);
    CHECK((info.st_mode & 0777) == 0600);

    // A mode that lets group or others in is refused, and creates nothing:
    // such a file would be refused at every later open.
    auto options = dir.options();
    options.mode = 0640;
    CHECK(code_of([&] { segment shared_with_group("group", options); }) == errc::invalid_argument);
    CHECK_FALSE(segment::exists("group", dir.path()));
}

TEST_CASE("reopening after a clean close says so and names the previous owner", "[segment]") {
    shm_dir dir;
    { segment first("clean", dir.options()); }
    segment again("clean", dir.options());
    CHECK(again.outcome() == open_outcome::reopened_clean);
    REQUIRE(again.previous_owner().has_value());
    CHECK(again.previous_owner()->pid == ::getpid());
    CHECK(again.previous_owner()->start_time == keepsake::detail::process_start_time(::getpid()));
}

TEST_CASE("a second opener in the same process gets an error naming the owner", "[segment]") {
    shm_dir dir;
    segment owner("single", dir.options());
    const std::string message = message_of([&] { segment second("single", dir.options()); });
    CHECK(message.find("pid " + std::to_string(::getpid())) != std::string::npos);
    CHECK(code_of([&] { segment second("single", dir.options()); }) == errc::segment_owned);
    CHECK(code_of([&] { segment::remove("single", dir.path()); }) == errc::segment_owned);
    owner.close();
    segment now_mine("single", dir.options());
    CHECK(now_mine.outcome() == open_outcome::reopened_clean);
}

TEST_CASE("a second process is refused until the owner is SIGKILLed, then takes over", "[segment][crash]") {
    shm_dir dir;
    auto* ready = test_support::shared_anonymous<std::atomic<int>>();
    const pid_t child = test_support::fork_child([&] {
        segment mine("owned", dir.options());
        ready->store(1, std::memory_order_release);
        for (;;) ::pause();
    });
    REQUIRE(test_support::wait_ready(*ready, child));

    const std::string message = message_of([&] { segment intruder("owned", dir.options()); });
    CHECK(message.find("pid " + std::to_string(child)) != std::string::npos);

    test_support::kill_and_reap(child);
    segment taken("owned", dir.options());
    CHECK(taken.outcome() == open_outcome::reopened_after_crash);
    REQUIRE(taken.previous_owner().has_value());
    CHECK(taken.previous_owner()->pid == child);
    test_support::release_shared(ready);
}

TEST_CASE("segments are listed and removed by name", "[segment]") {
    shm_dir dir;
    { segment a("alpha", dir.options()); }
    { segment b("beta", dir.options()); }
    CHECK(segment::list(dir.path()) == std::vector<std::string>{"alpha", "beta"});
    CHECK(segment::exists("alpha", dir.path()));
    CHECK(segment::remove("alpha", dir.path()));
    CHECK_FALSE(segment::remove("alpha", dir.path()));
    CHECK_FALSE(segment::exists("alpha", dir.path()));
    CHECK(segment::list(dir.path()) == std::vector<std::string>{"beta"});
    segment fresh("alpha", dir.options());
    CHECK(fresh.outcome() == open_outcome::created);
}

TEST_CASE("a segment grows as keys need room, up to max_size, then says what to set", "[segment][grow]") {
    shm_dir dir;
    using big = test_support::blob<16384>;
    auto options = dir.options(64 * 1024, 8);
    options.max_size = 256 * 1024;
    {
        segment s("tight", options);
        keepsake::keeper<big> first(s, "first");
        big value{};
        big::make(value, 7);
        first.commit(value);
        keepsake::keeper<big> second(s, "second");  // 64 KiB do not hold two: the segment grows
        CHECK(s.size() > 64 * 1024);
        CHECK(second.commit(value) == 1);
        std::vector<std::unique_ptr<keepsake::keeper<big>>> more;
        std::string message;
        try {
            for (int i = 0; i < 100; ++i)
                more.push_back(std::make_unique<keepsake::keeper<big>>(s, "more" + std::to_string(i)));
        } catch (const keepsake::error& failure) {
            CHECK(failure.code() == errc::out_of_space);
            message = failure.what();
        }
        CHECK(message.find("max_size") != std::string::npos);
        CHECK(s.size() == 256 * 1024);
        // Every key made before the limit still commits and restores.
        for (auto& each : more) CHECK(each->commit(value) == 1);
    }
    options.max_size = 1u << 20;
    segment reopened("tight", options);
    CHECK(reopened.size() == 256 * 1024);  // the file's size stays until more is needed
    keepsake::keeper<big> first(reopened, "first");
    auto kept = first.restore();
    REQUIRE(kept);
    CHECK(kept->value.generation == 7);
    keepsake::keeper<big> last(reopened, "last");  // room again, under the larger limit
    CHECK(last.commit(kept->value) == 1);
}

TEST_CASE("the directory grows past its first block, and every key is found again", "[segment][grow]") {
    shm_dir dir;
    const int keys = 300;
    {
        segment s("many", dir.options(1u << 20, 2));
        for (int i = 0; i < keys; ++i) keepsake::keeper<int>(s, "k" + std::to_string(i)).commit(i);
        CHECK(s.entries().size() == static_cast<std::size_t>(keys));
    }
    segment s("many", dir.options(1u << 20, 2));
    CHECK(s.entries().size() == static_cast<std::size_t>(keys));
    for (int i = 0; i < keys; i += 37) CHECK(keepsake::keeper<int>(s, "k" + std::to_string(i)).restore()->value == i);
    // Removed keys give their directory entries and their space back.
    const std::uint64_t free_before = s.free_bytes();
    for (int i = 0; i < keys; ++i) CHECK(s.remove_key("k" + std::to_string(i)));
    CHECK(s.free_bytes() > free_before);
    for (int i = 0; i < keys; ++i) keepsake::keeper<int>(s, "again" + std::to_string(i)).commit(i);
    CHECK(s.entries().size() == static_cast<std::size_t>(keys));
}

TEST_CASE("a directory that can grow no more is a clear error", "[segment]") {
    shm_dir dir;
    auto options = dir.options(64 * 1024, 2);
    options.max_size = 64 * 1024;
    segment s("few", options);
    std::string message;
    try {
        for (int i = 0; i < 100000; ++i) keepsake::keeper<int>(s, "k" + std::to_string(i)).commit(i);
    } catch (const keepsake::error& failure) {
        CHECK(failure.code() == errc::out_of_space);
        message = failure.what();
    }
    CHECK(message.find("max_size") != std::string::npos);
}

TEST_CASE("options out of range are refused before anything is created", "[segment]") {
    shm_dir dir;
    auto options = dir.options();
    options.max_entries = 0;
    CHECK(code_of([&] { segment s("x", options); }) == errc::invalid_argument);
    options = dir.options(1024, 64);
    CHECK(code_of([&] { segment s("x", options); }) == errc::invalid_argument);
    CHECK(segment::list(dir.path()).empty());
}

TEST_CASE("an unfinished creation (magic never written, nothing after the header) is rebuilt", "[segment]") {
    shm_dir dir;
    SECTION("empty file") {
        std::ofstream(dir.file("half")).flush();
    }
    SECTION("sized file, header half-written, magic still 0") {
        std::string bytes(64 * 1024, '\0');
        for (std::size_t i = 8; i < 40; ++i) bytes[i] = static_cast<char>(i);
        std::ofstream(dir.file("half"), std::ios::binary) << bytes;
    }
    REQUIRE(::chmod(dir.file("half").c_str(), 0600) == 0);  // as keepsake creates it
    segment s("half", dir.options());
    CHECK(s.outcome() == open_outcome::created);
    keepsake::keeper<int> k(s, "works");
    CHECK(k.commit(42) == 1);
}

TEST_CASE("a zeroed magic over live data is refused, never wiped", "[segment]") {
    shm_dir dir;
    {
        segment s("live", dir.options());
        keepsake::keeper<long>(s, "kept").commit(7);
    }
    std::string bytes;
    {
        std::ifstream in(dir.file("live"), std::ios::binary);
        bytes.assign((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    }
    std::memset(bytes.data(), 0, 8);
    std::ofstream(dir.file("live"), std::ios::binary | std::ios::trunc) << bytes;
    CHECK(code_of([&] { segment s("live", dir.options()); }) == errc::segment_corrupt);
    std::ifstream in(dir.file("live"), std::ios::binary);
    CHECK(std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>()) == bytes);
}

TEST_CASE("a damaged recorded size never shrinks the file or loses keys", "[segment]") {
    shm_dir dir;
    using big = test_support::blob<65536>;
    {
        segment s("sized", dir.options(1u << 20));
        big value{};
        big::make(value, 5);
        keepsake::keeper<big>(s, "near").commit(value);
        keepsake::keeper<big>(s, "far").commit(value);  // lies beyond 256 KiB
    }
    const int fd = ::open(dir.file("sized").c_str(), O_RDWR);
    REQUIRE(fd >= 0);
    const std::uint64_t smaller = 64 * 1024;
    REQUIRE(::pwrite(fd, &smaller, sizeof(smaller), offsetof(keepsake::detail::segment_header, total_size)) == 8);
    ::close(fd);
    segment s("sized", dir.options(128 * 1024));
    CHECK(s.size() == (1u << 20));
    CHECK(s.damaged_entries() == 0);
    keepsake::keeper<big> far(s, "far");
    auto kept = far.restore();
    REQUIRE(kept);
    CHECK(kept->value.generation == 5);
    struct stat info {};
    REQUIRE(::stat(dir.file("sized").c_str(), &info) == 0);
    CHECK(info.st_size == (1 << 20));
}

TEST_CASE("a full /dev/shm is an out_of_space error at open, not a SIGBUS later", "[segment]") {
    shm_dir dir;
    const std::string mount_point = dir.path() + "/small";
    std::filesystem::create_directories(mount_point);
    if (std::system(("mount -t tmpfs -o size=1m keepsake-test " + mount_point + " 2>/dev/null").c_str()) != 0) {
        WARN("cannot mount a 1 MiB tmpfs here (needs root); the injected-error path is untested");
        return;
    }
    keepsake::segment_options options = dir.options(8u << 20);
    options.directory = mount_point;
    const std::string message = message_of([&] { segment s("toolarge", options); });
    CHECK(message.find("of segment 'toolarge'") != std::string::npos);
    CHECK(code_of([&] { segment s("toolarge", options); }) == errc::out_of_space);
    CHECK(segment::list(mount_point).empty());  // nothing half-made left behind
    options.size = 512 * 1024;
    {
        segment fits("fits", options);
        keepsake::keeper<test_support::blob<65536>> k(fits, "state");
        test_support::blob<65536> value{};
        for (std::uint64_t g = 1; g <= 20; ++g) {  // touches every slot page many times
            test_support::blob<65536>::make(value, g);
            k.commit(value);
        }
        CHECK(k.restore()->value.generation == 20);
    }
    options.size = 4u << 20;  // growing past the room fails, and leaves the segment as it was
    CHECK(code_of([&] { segment s("fits", options); }) == errc::out_of_space);
    options.size = 512 * 1024;
    segment again("fits", options);
    CHECK(again.size() == 512 * 1024);
    again.close();
    CHECK(std::system(("umount " + mount_point).c_str()) == 0);
}

TEST_CASE("a file with foreign bytes is not overwritten", "[segment]") {
    shm_dir dir;
    {
        std::ofstream out(dir.file("foreign"), std::ios::binary);
        out << std::string(4096, 'x');
    }
    REQUIRE(::chmod(dir.file("foreign").c_str(), 0600) == 0);  // private, so its bytes are what is judged
    CHECK(code_of([&] { segment s("foreign", dir.options()); }) == errc::segment_corrupt);
    std::ifstream in(dir.file("foreign"), std::ios::binary);
    std::string kept((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK(kept == std::string(4096, 'x'));
}

TEST_CASE("a segment of another layout version is refused by name", "[segment]") {
    shm_dir dir;
    { segment s("old", dir.options()); }
    const int fd = ::open(dir.file("old").c_str(), O_RDWR);
    REQUIRE(fd >= 0);
    keepsake::detail::segment_header header{};
    REQUIRE(::pread(fd, &header, sizeof(header), 0) == sizeof(header));
    header.layout_version = 99;
    header.header_checksum = keepsake::detail::header_checksum_of(header);
    REQUIRE(::pwrite(fd, &header, sizeof(header), 0) == sizeof(header));
    ::close(fd);
    CHECK(code_of([&] { segment s("old", dir.options()); }) == errc::layout_mismatch);
}

TEST_CASE("entries are listed with their newest generation, and removed keys go away", "[segment]") {
    shm_dir dir;
    segment s("listing", dir.options());
    {
        keepsake::keeper<int> a(s, "a");
        a.commit(1);
        a.commit(2);
        keepsake::keeper<double> b(s, "app/b");
        b.commit(0.5);
    }
    auto listed = s.entries();
    REQUIRE(listed.size() == 2);
    CHECK(listed[0].key == "a");
    CHECK(listed[0].generation == 2);
    CHECK(listed[0].size == sizeof(int));
    CHECK(listed[0].fingerprint == keepsake::type_fingerprint<int>());
    CHECK(listed[1].key == "app/b");
    CHECK(listed[1].generation == 1);
    CHECK(s.remove_key("a"));
    CHECK_FALSE(s.remove_key("a"));
    CHECK(s.entries().size() == 1);
    keepsake::keeper<int> again(s, "a");
    CHECK_FALSE(again.restore().has_value());
}

TEST_CASE("a missing segment directory is a clear system error", "[segment]") {
    auto options = shm_dir().options();  // the directory is removed again at once
    const std::string message = message_of([&] { segment s("nowhere", options); });
    CHECK(message.find("cannot create segment file " + options.directory + "/keepsake.nowhere") != std::string::npos);
    CHECK(message.find("No such file or directory") != std::string::npos);
    CHECK(code_of([&] { segment s("nowhere", options); }) == errc::system_error);
}

TEST_CASE("many keys: added, removed, added again and reopened, each finds its own state", "[segment]") {
    shm_dir dir;
    auto options = dir.options();
    options.max_entries = 3000;
    options.size = 8u << 20;
    constexpr int keys = 2000;
    {
        segment s("many", options);
        for (int i = 0; i < keys; ++i) keepsake::keeper<long>(s, "k" + std::to_string(i)).commit(i);
        for (int i = 0; i < keys; i += 3) CHECK(s.remove_key("k" + std::to_string(i)));
        // Freed directory entries are used again (the region of a removed
        // key is not: it is only unused space).
        for (int i = 0; i < keys; i += 3) keepsake::keeper<long>(s, "again" + std::to_string(i)).commit(-i);
        CHECK(s.entries().size() == static_cast<std::size_t>(keys));
    }
    segment reopened("many", options);
    for (int i = 0; i < keys; ++i) {
        keepsake::keeper<long> kept(reopened, "k" + std::to_string(i));
        const auto found = kept.restore();
        if (i % 3 == 0) {
            CHECK_FALSE(found.has_value());  // removed: a fresh key now
        } else {
            REQUIRE(found.has_value());
            CHECK(found->value == i);
        }
    }
    for (int i = 0; i < keys; i += 3) {
        const auto found = keepsake::keeper<long>(reopened, "again" + std::to_string(i)).restore();
        REQUIRE(found.has_value());
        CHECK(found->value == -i);
    }
}

// --- hostile files: /dev/shm is writable by every user ---------------------------

namespace {

// Each way a file named like a segment can be one keepsake must not trust.
enum class hostile { open_to_all, another_user, symlink, fifo, directory };

const char* describe(hostile kind) {
    switch (kind) {
    case hostile::open_to_all: return "mode 0666";
    case hostile::another_user: return "owned by uid 65534";
    case hostile::symlink: return "a symbolic link";
    case hostile::fifo: return "a FIFO";
    case hostile::directory: return "a directory";
    }
    return "?";
}

// Plants `kind` as segment `name`; `target` is a real segment's file (for
// the link). Returns what the error must say about it.
std::string plant(const shm_dir& dir, hostile kind, const std::string& name, const std::string& target) {
    const std::string path = dir.file(name);
    switch (kind) {
    case hostile::open_to_all:
        std::filesystem::copy_file(target, path);
        REQUIRE(::chmod(path.c_str(), 0666) == 0);
        return "open to group or others";
    case hostile::another_user:
        std::filesystem::copy_file(target, path);
        REQUIRE(::chmod(path.c_str(), 0600) == 0);
        REQUIRE(::chown(path.c_str(), 65534, 65534) == 0);  // the tests run as root
        return "owned by uid 65534";
    case hostile::symlink:
        REQUIRE(::symlink(target.c_str(), path.c_str()) == 0);
        return "a symbolic link";
    case hostile::fifo:
        REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
        return "a FIFO";
    case hostile::directory:
        REQUIRE(::mkdir(path.c_str(), 0700) == 0);
        return "a directory";
    }
    return {};
}

} // namespace

TEST_CASE("hostile files: a segment file keepsake did not make safely is refused, never adopted or followed",
          "[segment][hostile]") {
    if (::geteuid() != 0) {
        WARN("not root: the file owned by another user cannot be made; the other cases still run");
    }
    const hostile kind = GENERATE(hostile::open_to_all, hostile::another_user, hostile::symlink, hostile::fifo,
                                  hostile::directory);
    if (kind == hostile::another_user && ::geteuid() != 0) return;
    INFO(describe(kind));
    shm_dir dir;
    {
        segment real("real", dir.options());
        keepsake::keeper<long>(real, "kept").commit(7);
    }
    struct stat before {};
    REQUIRE(::stat(dir.file("real").c_str(), &before) == 0);
    const std::string why = plant(dir, kind, "x", dir.file("real"));

    // The owner's open, a read-only view, maintenance, remove: each refuses,
    // naming the file, what it is, its owner and its mode.
    const std::string message = message_of([&] { segment s("x", dir.options()); });
    CHECK_THAT(message, Catch::Matchers::Contains("segment file " + dir.file("x") + " is refused") &&
                            Catch::Matchers::Contains(why) && Catch::Matchers::Contains("owner uid") &&
                            Catch::Matchers::Contains("mode 0"));
    CHECK(code_of([&] { segment s("x", dir.options()); }) == errc::unsafe_file);
    CHECK(code_of([&] { segment::open_existing("x", keepsake::segment_access::read_only, dir.path()); }) ==
          errc::unsafe_file);
    CHECK(code_of([&] { segment::open_existing("x", keepsake::segment_access::maintenance, dir.path()); }) ==
          errc::unsafe_file);
    CHECK(code_of([&] { segment::remove("x", dir.path()); }) == errc::unsafe_file);
    CHECK(segment::exists("x", dir.path()));

    // Listed, as refused, without opening it (a FIFO would hang an open).
    const auto files = segment::list_files(dir.path());
    REQUIRE(files.size() == 2);
    CHECK(files[0].name == "real");
    CHECK(files[0].refused.empty());
    CHECK(files[1].name == "x");
    CHECK_THAT(files[1].refused, Catch::Matchers::Contains(why) && Catch::Matchers::Contains("owner uid"));
    CHECK(segment::list(dir.path()) == std::vector<std::string>{"real", "x"});

    // Nothing was written through it: the link's target is as it was.
    struct stat after {};
    REQUIRE(::stat(dir.file("real").c_str(), &after) == 0);
    CHECK(after.st_mtim.tv_sec == before.st_mtim.tv_sec);
    CHECK(after.st_mtim.tv_nsec == before.st_mtim.tv_nsec);
    segment real("real", dir.options());
    CHECK(keepsake::keeper<long>(real, "kept").restore()->value == 7);
}

TEST_CASE("hostile files: a file made private by its owner opens again", "[segment][hostile]") {
    shm_dir dir;
    { segment s("loose", dir.options()); }
    REQUIRE(::chmod(dir.file("loose").c_str(), 0644) == 0);
    CHECK(code_of([&] { segment s("loose", dir.options()); }) == errc::unsafe_file);
    REQUIRE(::chmod(dir.file("loose").c_str(), 0600) == 0);
    segment s("loose", dir.options());
    CHECK(s.outcome() == open_outcome::reopened_clean);
}

// The owner's key index (detail/key_index.hpp) holds only hashes and entry
// numbers; the keys are the entries'. Random adds and removes, against a map,
// with entry numbers reused as the directory reuses them.
TEST_CASE("the key index finds what a map finds through random adds and removes", "[segment][index]") {
    keepsake::detail::key_index index;
    std::vector<std::string> entries;      // what each directory entry holds ("" free)
    std::map<std::string, std::uint32_t> model;
    std::vector<std::uint32_t> free_entries;
    std::size_t peak = 0;
    std::mt19937_64 random(7);
    auto holds = [&](const std::string& key) {
        return [&entries, key](std::uint32_t entry) { return entry < entries.size() && entries[entry] == key; };
    };
    for (int step = 0; step < 200000; ++step) {
        const std::string key = "k" + std::to_string(random() % 20000);
        const auto known = model.find(key);
        if (known == model.end()) {
            std::uint32_t entry = static_cast<std::uint32_t>(entries.size());
            if (!free_entries.empty()) {
                entry = free_entries.back();
                free_entries.pop_back();
            } else {
                entries.emplace_back();
            }
            entries[entry] = key;
            index.assign(key, entry, holds(key));
            model.emplace(key, entry);
            peak = std::max(peak, model.size());
        } else if (random() % 2 == 0) {
            REQUIRE(index.erase(key, known->second));
            entries[known->second].clear();
            free_entries.push_back(known->second);
            model.erase(known);
        }
        if (step % 1000 == 0) {
            REQUIRE(index.size() == model.size());
            for (const auto& [each, entry] : model) REQUIRE(index.find(each, holds(each)) == entry);
            for (int absent = 0; absent < 50; ++absent) {
                const std::string other = "k" + std::to_string(20000 + random() % 20000);
                REQUIRE_FALSE(index.find(other, holds(other)));
            }
        }
    }
    // 8 B a slot; it doubles past 3/4 full: under 22 B a key at its peak.
    CHECK(index.bytes() <= peak * 64 / 3);
    // Nearly all removed, it gives the peak's memory back.
    while (model.size() > 10) {
        const auto last = std::prev(model.end());
        REQUIRE(index.erase(last->first, last->second));
        model.erase(last);
    }
    for (const auto& [each, entry] : model) CHECK(index.find(each, holds(each)) == entry);
    CHECK(index.bytes() <= 8 * 128);
}

}  // namespace segment_tests
