// One conformance suite run against every store, then what each store does
// with damaged records, and the fault-injecting wrapper.
#include <catch2/catch.hpp>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <keepsake/stores/faulty_store.hpp>
#include <keepsake/stores/file_store.hpp>
#include <keepsake/stores/memory_store.hpp>
#include <keepsake/stores/sqlite_store.hpp>

#include "store_conformance.hpp"
#include "support.hpp"

namespace store_tests {  // a unity build's sources keep their names apart (tests/CMakeLists.txt)

using keepsake::errc;
using keepsake::record;
using test_support::error_from;
using test_support::temp_dir;

// Fault injection for the file store's system calls: these definitions
// take the place of the C library's unlink() and fsync() in this test
// binary. Unarmed, they do what the C library does.
namespace {
std::atomic<const char*> fail_unlink_ending{nullptr};  // fail unlink() of a path ending so (EIO)
std::atomic<int> fail_directory_syncs{0};              // fail this many fsync()s of a directory (EIO)
std::atomic<int> directory_syncs{0};                   // fsync()s of a directory that succeeded

bool ends_with(const char* text, const char* suffix) {
    const std::size_t n = std::strlen(text), m = std::strlen(suffix);
    return n >= m && std::strcmp(text + n - m, suffix) == 0;
}
} // namespace

extern "C" int unlink(const char* path) noexcept {
    const char* ending = fail_unlink_ending.load();
    if (ending != nullptr && ends_with(path, ending)) {
        errno = EIO;
        return -1;
    }
    return ::unlinkat(AT_FDCWD, path, 0);
}

extern "C" int fsync(int fd) {
    struct stat info {};
    const bool directory = ::fstat(fd, &info) == 0 && S_ISDIR(info.st_mode);
    if (directory && fail_directory_syncs.load() > 0) {
        fail_directory_syncs.fetch_sub(1);
        errno = EIO;
        return -1;
    }
    const long result = ::syscall(SYS_fsync, fd);
    if (directory && result == 0) directory_syncs.fetch_add(1);
    return static_cast<int>(result);
}

namespace {

using store_conformance::generation_of;
using store_conformance::make_record;
using store_conformance::same;

// Each kind opens its store; open() again sees the same records (for
// memory, the same object).
struct memory_kind {
    std::shared_ptr<keepsake::memory_store> shared = std::make_shared<keepsake::memory_store>();
    std::shared_ptr<keepsake::store> open() { return shared; }
};

struct file_kind {
    temp_dir dir;
    std::shared_ptr<keepsake::store> open() { return std::make_shared<keepsake::file_store>(dir.path()); }
};

struct sqlite_kind {
    temp_dir dir;
    std::shared_ptr<keepsake::store> open() { return std::make_shared<keepsake::sqlite_store>(dir.path() + "/s.db"); }
};

} // namespace

TEMPLATE_TEST_CASE("store conformance", "[store]", memory_kind, file_kind, sqlite_kind) {
    store_conformance::run<TestType>();
}

namespace {

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

} // namespace

TEST_CASE("file store: a damaged newest file falls back to the previous record", "[store][file]") {
    temp_dir dir;
    keepsake::file_store s(dir.path());
    s.put_batch({make_record("k", 1)});
    s.put_batch({make_record("k", 2)});
    const std::string rec = s.path_of("k");
    const std::string prev = rec.substr(0, rec.size() - 4) + ".prev";
    const std::string good = read_file(rec);

    SECTION("truncated") {
        write_file(rec, good.substr(0, good.size() - 1));
        CHECK(same(*s.get("k"), make_record("k", 1)));
    }
    SECTION("wrong checksum") {
        std::string bad = good;
        bad[bad.size() - 1] ^= 0x20;
        write_file(rec, bad);
        CHECK(same(*s.get("k"), make_record("k", 1)));
        // A put over a damaged file keeps the older valid copy as fallback.
        s.put_batch({make_record("k", 3)});
        CHECK(s.get("k")->generation == 3);
        CHECK(read_file(prev) != bad);
        write_file(rec, "junk");
        CHECK(s.get("k")->generation == 1);
    }
    SECTION("a record format this keepsake does not know") {
        std::string other = good;
        other[8] = 99;  // format_version, with a header checksum to match
        keepsake::detail::file_record_header header{};
        std::memcpy(&header, other.data(), sizeof(header));
        header.header_checksum = keepsake::detail::file_header_checksum(header);
        std::memcpy(other.data(), &header, sizeof(header));
        write_file(rec, other);
        CHECK(same(*s.get("k"), make_record("k", 1)));
    }
    SECTION("no valid copy left is a clear record_corrupt error") {
        write_file(rec, good.substr(0, 10));
        write_file(prev, "");
        const keepsake::error failure = error_from([&] { s.get("k"); });
        CHECK(failure.code() == errc::record_corrupt);
        CHECK(std::string(failure.what()).find("truncated") != std::string::npos);
        CHECK(std::string(failure.what()).find("key 'k'") != std::string::npos);
    }
    SECTION("a file holding another key is refused") {
        s.put_batch({make_record("other", 5)});
        write_file(rec, read_file(s.path_of("other")));
        CHECK(s.get("k")->generation == 1);
    }
}

TEST_CASE("file store: a forged header length cannot wrap into a match", "[store][file]") {
    temp_dir dir;
    keepsake::file_store s(dir.path());
    const std::string key = "ten-chars!";  // 10 bytes
    s.put_batch({make_record(key, 1, 0)});
    const std::string rec = s.path_of(key);
    // The header and 3 bytes; 64 + 10 + data_length wraps around to 67.
    std::string forged = read_file(rec).substr(0, sizeof(keepsake::detail::file_record_header) + 3);
    keepsake::detail::file_record_header header{};
    std::memcpy(&header, forged.data(), sizeof(header));
    REQUIRE(header.key_length == key.size());
    header.data_length = ~std::uint64_t{0} - 6;  // 2^64 - 7
    header.header_checksum = keepsake::detail::file_header_checksum(header);
    std::memcpy(forged.data(), &header, sizeof(header));
    write_file(rec, forged);
    const keepsake::error failure = error_from([&] { s.get(key); });
    CHECK(failure.code() == errc::record_corrupt);
    CHECK(std::string(failure.what()).find("does not match its header") != std::string::npos);
}

TEST_CASE("file store: a remove stopped between its unlinks never brings back an older record", "[store][file]") {
    temp_dir dir;
    keepsake::file_store s(dir.path());
    s.put_batch({make_record("k", 1)});
    s.put_batch({make_record("k", 2)});  // k.rec holds 2, k.prev holds 1
    fail_unlink_ending = "k.prev";
    const keepsake::error failure = error_from([&] { s.remove("k"); });
    fail_unlink_ending = nullptr;
    CHECK(failure.code() == errc::store_failed);
    const auto left = s.get("k");
    REQUIRE(left);
    CHECK(left->generation == 2);  // the newest, as before the remove; never generation 1
    CHECK(s.remove("k"));          // done again, it completes
    CHECK_FALSE(s.get("k"));
    CHECK(s.list("").empty());
}

TEST_CASE("file store: a failed directory sync is retried by the next put", "[store][file]") {
    temp_dir dir;
    keepsake::file_store s(dir.path());
    fail_directory_syncs = 1;
    CHECK(error_from([&] { s.put_batch({make_record("k", 1)}); }).code() == errc::store_failed);
    REQUIRE(fail_directory_syncs == 0);
    directory_syncs = 0;
    // Nothing new to rename (k.rec already holds generation 1), but the
    // rename of the failed put is still to be made durable.
    CHECK(s.put_batch({make_record("k", 1)}) == std::vector<std::size_t>{0});
    CHECK(directory_syncs == 1);
    CHECK(s.put_batch({make_record("k", 1)}) == std::vector<std::size_t>{0});
    CHECK(directory_syncs == 1);  // and once durable, not again
}

TEST_CASE("file store: leftovers of an interrupted put are cleared at open", "[store][file]") {
    temp_dir dir;
    {
        keepsake::file_store s(dir.path());
        s.put_batch({make_record("k", 4)});
    }
    write_file(dir.path() + "/k.tmp", "half a record");
    std::rename((dir.path() + "/k.rec").c_str(), (dir.path() + "/k.prev").c_str());  // crash between renames
    keepsake::file_store s(dir.path());
    CHECK_FALSE(std::filesystem::exists(dir.path() + "/k.tmp"));
    CHECK(s.list("") == std::vector<std::string>{"k"});
    CHECK(s.get("k")->generation == 4);
    s.put_batch({make_record("k", 3)});  // still older than the .prev it has
    CHECK(s.get("k")->generation == 4);
}

TEST_CASE("SQLite store: a damaged row is record_corrupt, WAL is on", "[store][sqlite]") {
    temp_dir dir;
    const std::string path = dir.path() + "/s.db";
    keepsake::sqlite_store s(path);
    s.put_batch({make_record("k", 2), make_record("j", 1)});
    sqlite3* raw = nullptr;
    REQUIRE(sqlite3_open(path.c_str(), &raw) == SQLITE_OK);
    REQUIRE(sqlite3_exec(raw, "UPDATE keepsake_records SET data = substr(data, 1, 10) WHERE key = 'k'",
                         nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_stmt* mode = nullptr;
    REQUIRE(sqlite3_prepare_v2(raw, "PRAGMA journal_mode", -1, &mode, nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_step(mode) == SQLITE_ROW);
    CHECK(std::string(reinterpret_cast<const char*>(sqlite3_column_text(mode, 0))) == "wal");
    sqlite3_finalize(mode);
    sqlite3_close(raw);
    const keepsake::error failure = error_from([&] { s.get("k"); });
    CHECK(failure.code() == errc::record_corrupt);
    CHECK(std::string(failure.what()).find("checksum") != std::string::npos);
    CHECK(same(*s.get("j"), make_record("j", 1)));
}

TEST_CASE("SQLite store: its file, and the WAL beside it, are created 0600", "[store][sqlite][hostile]") {
    temp_dir dir;
    const std::string path = dir.path() + "/private.db";
    const mode_t previous = ::umask(0);  // not the umask: the store decides
    keepsake::sqlite_store s(path);
    ::umask(previous);
    s.put_batch({make_record("k", 1)});
    for (const std::string& file : {path, path + "-wal"}) {
        INFO(file);
        struct stat info {};
        REQUIRE(::stat(file.c_str(), &info) == 0);
        CHECK((info.st_mode & 0777) == 0600);
    }
}

TEST_CASE("file store: records are 0600, its directory must be private, a planted file or link is not used",
          "[store][file][hostile]") {
    temp_dir dir;
    const std::string where = dir.path() + "/fs";
    keepsake::file_store s(where);
    s.put_batch({make_record("k", 1)});
    struct stat info {};
    REQUIRE(::stat(where.c_str(), &info) == 0);
    CHECK((info.st_mode & 0777) == 0700);
    REQUIRE(::stat(s.path_of("k").c_str(), &info) == 0);
    CHECK((info.st_mode & 0777) == 0600);

    // A link left where the next temporary file goes: written around, not through.
    const std::string target = dir.path() + "/target";
    { std::ofstream(target) << "untouched"; }
    const std::string base = s.path_of("k").substr(0, s.path_of("k").size() - 4);
    REQUIRE(::symlink(target.c_str(), (base + ".tmp").c_str()) == 0);
    s.put_batch({make_record("k", 2)});
    CHECK(same(*s.get("k"), make_record("k", 2)));
    std::ifstream kept(target);
    CHECK(std::string(std::istreambuf_iterator<char>(kept), std::istreambuf_iterator<char>()) == "untouched");

    // A FIFO in a record's place is an error, not a wait.
    REQUIRE(::mkfifo((where + "/f.rec").c_str(), 0600) == 0);
    CHECK(error_from([&] { s.get("f"); }).code() == errc::unsafe_file);

    // A directory others may write into, or another user's, is refused.
    const std::string open_dir = dir.path() + "/open";
    REQUIRE(::mkdir(open_dir.c_str(), 0700) == 0);
    REQUIRE(::chmod(open_dir.c_str(), 0777) == 0);
    const keepsake::error refused = error_from([&] { keepsake::file_store bad(open_dir); });
    CHECK(refused.code() == errc::unsafe_file);
    CHECK_THAT(refused.what(), Catch::Matchers::Contains("writable by group or others") &&
                                   Catch::Matchers::Contains("mode 0777"));
    if (::geteuid() == 0) {
        REQUIRE(::chmod(open_dir.c_str(), 0700) == 0);
        REQUIRE(::chown(open_dir.c_str(), 65534, 65534) == 0);
        CHECK_THAT(error_from([&] { keepsake::file_store bad(open_dir); }).what(),
                   Catch::Matchers::Contains("owned by uid 65534"));
    }
}

namespace {

// Runs one SQL statement on the file, outside the store, and returns the
// first column of its first row as text ("" if none).
std::string sql_value(const std::string& path, const std::string& sql) {
    sqlite3* raw = nullptr;
    REQUIRE(sqlite3_open(path.c_str(), &raw) == SQLITE_OK);
    sqlite3_stmt* statement = nullptr;
    REQUIRE(sqlite3_prepare_v2(raw, sql.c_str(), -1, &statement, nullptr) == SQLITE_OK);
    std::string value;
    if (sqlite3_step(statement) == SQLITE_ROW && sqlite3_column_text(statement, 0) != nullptr)
        value = reinterpret_cast<const char*>(sqlite3_column_text(statement, 0));
    sqlite3_finalize(statement);
    sqlite3_close(raw);
    return value;
}

} // namespace

TEST_CASE("SQLite store: keys are TEXT, so the sqlite3 shell finds a record by key = '...'", "[store][sqlite]") {
    temp_dir dir;
    const std::string path = dir.path() + "/s.db";
    keepsake::sqlite_store s(path);
    s.put_batch({make_record("app/x", 7), make_record("app/y", 3)});
    CHECK(sql_value(path, "SELECT generation FROM keepsake_records WHERE key = 'app/x'") == "7");
    CHECK(sql_value(path, "SELECT typeof(key) FROM keepsake_records WHERE key = 'app/y'") == "text");
    CHECK(sql_value(path, "SELECT type FROM pragma_table_info('keepsake_records') WHERE name = 'key'") == "TEXT");
}

TEST_CASE("SQLite store: a table of keepsake 0.1.0 (BLOB keys) is migrated, records intact", "[store][sqlite]") {
    temp_dir dir;
    const std::string path = dir.path() + "/old.db";
    const record old_record = make_record("app/x", 5, 40);
    {
        // The 0.1.0 schema and a row as 0.1.0 wrote it: the key as a blob.
        sqlite3* raw = nullptr;
        REQUIRE(sqlite3_open(path.c_str(), &raw) == SQLITE_OK);
        REQUIRE(sqlite3_exec(raw,
                             "CREATE TABLE keepsake_records (key BLOB PRIMARY KEY NOT NULL, generation INTEGER NOT "
                             "NULL, schema_version INTEGER NOT NULL, codec INTEGER NOT NULL, fingerprint INTEGER NOT "
                             "NULL, checksum INTEGER NOT NULL, data BLOB NOT NULL) WITHOUT ROWID",
                             nullptr, nullptr, nullptr) == SQLITE_OK);
        sqlite3_stmt* insert = nullptr;
        REQUIRE(sqlite3_prepare_v2(raw, "INSERT INTO keepsake_records VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)", -1, &insert,
                                   nullptr) == SQLITE_OK);
        auto as_signed = [](std::uint64_t word) {
            sqlite3_int64 value;
            std::memcpy(&value, &word, sizeof(value));
            return value;
        };
        sqlite3_bind_blob(insert, 1, old_record.key.data(), static_cast<int>(old_record.key.size()), SQLITE_STATIC);
        sqlite3_bind_int64(insert, 2, static_cast<sqlite3_int64>(old_record.generation));
        sqlite3_bind_int64(insert, 3, old_record.schema_version);
        sqlite3_bind_int64(insert, 4, old_record.codec);
        sqlite3_bind_int64(insert, 5, as_signed(old_record.fingerprint));
        sqlite3_bind_int64(insert, 6, as_signed(keepsake::detail::record_checksum(old_record)));
        sqlite3_bind_blob(insert, 7, old_record.bytes.data(), static_cast<int>(old_record.bytes.size()), SQLITE_STATIC);
        REQUIRE(sqlite3_step(insert) == SQLITE_DONE);
        sqlite3_finalize(insert);
        sqlite3_close(raw);
    }
    keepsake::sqlite_store_options reading;
    reading.read_only = true;
    const keepsake::error refused = error_from([&] { keepsake::sqlite_store s(path, reading); });
    CHECK(refused.code() == errc::layout_mismatch);
    CHECK(std::string(refused.what()).find("open the store read-write once") != std::string::npos);

    keepsake::sqlite_store s(path);
    CHECK(same(*s.get("app/x"), old_record));
    CHECK(s.list("app/") == std::vector<std::string>{"app/x"});
    CHECK(sql_value(path, "SELECT typeof(key) FROM keepsake_records") == "text");
    CHECK(sql_value(path, "SELECT generation FROM keepsake_records WHERE key = 'app/x'") == "5");
    CHECK(s.put_batch({make_record("app/x", 4)}) == std::vector<std::size_t>{0});  // still never older
    CHECK(s.put_batch({make_record("app/x", 6)}).empty());
    CHECK(sql_value(path, "SELECT count(*) FROM keepsake_records") == "1");
}

TEST_CASE("SQLite store: read_only reads, and changes nothing", "[store][sqlite]") {
    temp_dir dir;
    const std::string path = dir.path() + "/s.db";
    keepsake::sqlite_store_options reading;
    reading.read_only = true;
    CHECK(error_from([&] { keepsake::sqlite_store s(path, reading); }).code() == errc::store_failed);  // no file
    CHECK_FALSE(std::filesystem::exists(path));
    {
        keepsake::sqlite_store writer(path);
        writer.put_batch({make_record("k", 2)});
    }
    keepsake::sqlite_store s(path, reading);
    CHECK(same(*s.get("k"), make_record("k", 2)));
    CHECK(s.list("") == std::vector<std::string>{"k"});
    CHECK(error_from([&] { s.put_batch({make_record("k", 3)}); }).code() == errc::invalid_argument);
    CHECK(error_from([&] { s.remove("k"); }).code() == errc::invalid_argument);
    keepsake::sqlite_store_options other_table = reading;
    other_table.table = "not_there";
    const keepsake::error missing = error_from([&] { keepsake::sqlite_store t(path, other_table); });
    CHECK(missing.code() == errc::not_found);
    CHECK(std::string(missing.what()).find("not a keepsake store") != std::string::npos);
}

TEST_CASE("SQLite store: opens and reads while another connection holds its write lock", "[store][sqlite][recovery]") {
    temp_dir dir;
    const std::string path = dir.path() + "/s.db";
    { keepsake::sqlite_store(path).put_batch({make_record("k", 2)}); }
    keepsake::sqlite_store_options impatient;
    impatient.busy_timeout_ms = 100;
    {
        sqlite3* other = nullptr;
        REQUIRE(sqlite3_open(path.c_str(), &other) == SQLITE_OK);
        REQUIRE(sqlite3_exec(other, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr) == SQLITE_OK);
        {
            keepsake::sqlite_store s(path, impatient);
            CHECK(same(*s.get("k"), make_record("k", 2)));
            CHECK(s.list("") == std::vector<std::string>{"k"});
            // Writing waits for the lock, then says so; the exporter retries.
            CHECK(error_from([&] { s.put_batch({make_record("k", 3)}); }).code() == errc::store_failed);
        }
        sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr);
        sqlite3_close(other);
    }
}

TEST_CASE("SQLite store: a bad option or path is a clear error", "[store][sqlite]") {
    keepsake::sqlite_store_options options;
    options.table = "x; DROP";
    CHECK(error_from([&] { keepsake::sqlite_store s(":memory:", options); }).code() == errc::invalid_argument);
    CHECK(error_from([] { keepsake::sqlite_store s("/nonexistent-dir/s.db"); }).code() == errc::store_failed);
}

TEST_CASE("faulty store fails every Nth call, halfway if asked, as asked", "[store][faulty]") {
    keepsake::memory_store inner;
    keepsake::faulty_store s(inner);
    s.fail_every(2);
    s.fail_halfway(true);
    s.put_batch({make_record("a", 1)});  // call 1 passes
    std::vector<record> batch{make_record("b", 1), make_record("c", 1), make_record("d", 1), make_record("e", 1)};
    CHECK(error_from([&] { s.put_batch(batch); }).code() == errc::store_failed);  // call 2 fails after half
    CHECK(inner.list("") == std::vector<std::string>{"a", "b", "c"});
    s.fail_with(keepsake::fault_kind::foreign);
    CHECK(s.get("a"));  // call 3
    bool foreign = false;
    try {
        s.list("");  // call 4
    } catch (const keepsake::error&) {
    } catch (const std::runtime_error&) {
        foreign = true;
    }
    CHECK(foreign);
    s.fail_with(keepsake::fault_kind::disk_full);
    CHECK(s.remove("a"));  // call 5
    CHECK(std::string(error_from([&] { s.get("b"); }).what()).find("No space") != std::string::npos);
    CHECK(s.failures() == 3);
    s.fail_every(0);
    s.stall(std::chrono::milliseconds(30));
    const auto start = std::chrono::steady_clock::now();
    s.put_batch(batch);
    CHECK(std::chrono::steady_clock::now() - start >= std::chrono::milliseconds(30));
    CHECK(inner.list("").size() == 4);
}

}  // namespace store_tests
