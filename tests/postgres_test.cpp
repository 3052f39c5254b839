// The PostgreSQL store (issue 14, step 1) against a real server that these
// tests start (postgres_server.hpp): the store conformance suite, the
// generation rule between connections, a reply lost after COMMIT, a damaged
// row, a server restart, and an exporter into it.
#include <catch2/catch.hpp>

#include <atomic>
#include <thread>

#include <libpq-fe.h>

#include <keepsake/exporter.hpp>
#include <keepsake/stores/postgres_store.hpp>

#include "postgres_server.hpp"
#include "store_conformance.hpp"
#include "support.hpp"

namespace postgres_tests {  // a unity build's sources keep their names apart (tests/CMakeLists.txt)

using keepsake::errc;
using keepsake::record;
using store_conformance::make_record;
using store_conformance::same;
using test_support::error_from;
using test_support::postgres_server;

namespace {

// A fresh table for each test (each section runs the case again).
std::string fresh_table() {
    static std::atomic<int> counter{0};
    return "t" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
}

keepsake::postgres_store_options in_table(const std::string& table) {
    keepsake::postgres_store_options options;
    options.table = table;
    return options;
}

struct postgres_kind {
    std::string table = fresh_table();
    std::shared_ptr<keepsake::store> open() {
        return std::make_shared<keepsake::postgres_store>(postgres_server::shared().conninfo(), in_table(table));
    }
};

// A plain libpq connection, for what the store does not do (damage a row,
// end a backend).
class raw_connection {
public:
    raw_connection() : connection_(PQconnectdb(postgres_server::shared().conninfo().c_str())) {
        if (PQstatus(connection_) != CONNECTION_OK) throw std::runtime_error(PQerrorMessage(connection_));
    }
    ~raw_connection() { PQfinish(connection_); }
    // The first column of the first row ("" if none).
    std::string run(const std::string& sql) {
        PGresult* done = PQexec(connection_, sql.c_str());
        const auto status = PQresultStatus(done);
        std::string first = status == PGRES_TUPLES_OK && PQntuples(done) > 0 ? PQgetvalue(done, 0, 0) : "";
        const std::string why = PQresultErrorMessage(done);
        PQclear(done);
        if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) throw std::runtime_error(sql + ": " + why);
        return first;
    }

private:
    PGconn* connection_;
};

} // namespace

TEST_CASE("store: conformance", "[postgres][store]") { store_conformance::run<postgres_kind>(); }

TEST_CASE("store: the generation rule holds between connections writing at once", "[postgres][store]") {
    const std::string table = fresh_table();
    keepsake::postgres_store first(postgres_server::shared().conninfo(), in_table(table));
    std::atomic<bool> go{false};
    std::vector<std::thread> writers;
    for (int writer = 0; writer < 4; ++writer)
        writers.emplace_back([&, writer] {
            keepsake::postgres_store mine(postgres_server::shared().conninfo(), in_table(table));
            while (!go.load()) std::this_thread::yield();
            // Each writer puts every generation of its share, in a shuffled
            // order; the newest must win whoever writes last.
            std::vector<record> batch;
            for (std::uint64_t g = 1; g <= 200; ++g)
                if (g % 4 == static_cast<std::uint64_t>(writer)) batch.push_back(make_record("shared", 201 - g));
            for (const record& each : batch) mine.put_batch({each});
        });
    go = true;
    for (auto& writer : writers) writer.join();
    CHECK(same(*first.get("shared"), make_record("shared", 200)));
}

TEST_CASE("store: a reply lost after COMMIT is recognised on the retry", "[postgres][store]") {
    const std::string table = fresh_table();
    keepsake::postgres_store s(postgres_server::shared().conninfo(), in_table(table));
    std::vector<record> batch;
    for (int i = 0; i < 50; ++i) batch.push_back(make_record("k" + std::to_string(i), 3));
    CHECK(s.put_batch(batch).empty());
    // The store's backend is terminated after its COMMIT: the writer never
    // hears back (as if the reply was lost), and retries the same batch.
    raw_connection admin;
    admin.run("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'keepsake' AND pid <> "
              "pg_backend_pid() AND query LIKE '%" + table + "%'");
    std::vector<std::size_t> skipped;
    for (int attempt = 0; attempt < 3; ++attempt) {  // the first may fail on the dead connection
        try {
            skipped = s.put_batch(batch);
            break;
        } catch (const keepsake::error& failed) {
            CHECK(failed.code() == errc::store_failed);
        }
    }
    CHECK(skipped.size() == batch.size());  // every record already there
    for (const record& each : batch) CHECK(same(*s.get(each.key), each));
}

TEST_CASE("store: statements cut by size and by repeated keys: every record lands, skips are exact",
          "[postgres][store]") {
    keepsake::postgres_store_options options = in_table(fresh_table());
    options.bytes_per_statement = 2000;  // about three 600-byte records a statement
    options.rows_per_statement = 5;
    keepsake::postgres_store s(postgres_server::shared().conninfo(), options);
    std::vector<record> batch;
    for (int i = 0; i < 20; ++i) batch.push_back(make_record("big" + std::to_string(i % 12), 2 + i / 12, 600));
    batch.push_back(make_record("big3", 1, 600));  // older than the one before it in the batch
    batch.push_back(make_record("huge", 1, 5000));  // larger than a statement: alone
    CHECK(s.put_batch(batch) == std::vector<std::size_t>{20});
    for (int i = 0; i < 12; ++i) {
        const std::string key = "big" + std::to_string(i);
        CHECK(same(*s.get(key), make_record(key, i < 8 ? 3 : 2, 600)));
    }
    CHECK(same(*s.get("huge"), make_record("huge", 1, 5000)));
    CHECK(s.list("big").size() == 12);
    CHECK(s.list("hug").size() == 1);
}

TEST_CASE("store: a damaged row is record_corrupt, never handed on", "[postgres][store]") {
    const std::string table = fresh_table();
    keepsake::postgres_store s(postgres_server::shared().conninfo(), in_table(table));
    s.put_batch({make_record("a", 4), make_record("b", 4), make_record("c", 4)});
    raw_connection admin;
    admin.run("UPDATE " + table + " SET data = set_byte(data, 3, 255 - get_byte(data, 3)) WHERE key = 'a'");
    admin.run("UPDATE " + table + " SET generation = 5 WHERE key = 'b'");
    admin.run("UPDATE " + table + " SET checksum = checksum # 1 WHERE key = 'c'");
    for (const char* key : {"a", "b", "c"}) {
        CAPTURE(key);
        CHECK(error_from([&] { s.get(key); }).code() == errc::record_corrupt);
    }
}

TEST_CASE("store: a bad option or an unreachable server is a clear error", "[postgres][store]") {
    keepsake::postgres_store_options options;
    options.table = "no spaces";
    CHECK(error_from([&] { keepsake::postgres_store s(postgres_server::shared().conninfo(), options); }).code() ==
          errc::invalid_argument);
    const keepsake::error refused = error_from([] {
        keepsake::postgres_store s("host=127.0.0.1 port=1 user=keepsake dbname=postgres connect_timeout=2");
    });
    CHECK(refused.code() == errc::store_failed);
    CHECK_THAT(refused.what(), Catch::Contains("cannot connect"));
}

TEST_CASE("store: after a server restart the next calls connect again, and acknowledged writes survive",
          "[postgres][store][restart]") {
    const std::string table = fresh_table();
    keepsake::postgres_store s(postgres_server::shared().conninfo(), in_table(table));
    s.put_batch({make_record("kept", 7)});
    postgres_server::shared().stop();  // immediate: as a crash
    CHECK(error_from([&] { s.put_batch({make_record("while-down", 1)}); }).code() == errc::store_failed);
    postgres_server::shared().start();
    std::optional<record> found;
    for (int attempt = 0; attempt < 3 && !found; ++attempt) {
        try {
            found = s.get("kept");
        } catch (const keepsake::error& failed) {
            CHECK(failed.code() == errc::store_failed);
        }
    }
    REQUIRE(found);
    CHECK(same(*found, make_record("kept", 7)));
    CHECK(s.put_batch({make_record("after", 1)}).empty());
}

TEST_CASE("store: an exporter copies a segment's keys into it", "[postgres][store][export]") {
    const std::string table = fresh_table();
    test_support::shm_dir dir;
    keepsake::segment seg("pgexport", dir.options());
    for (int i = 0; i < 20; ++i) keepsake::keeper<std::uint64_t>(seg, "n" + std::to_string(i)).commit(i * 10);
    keepsake::postgres_store s(postgres_server::shared().conninfo(), in_table(table));
    {
        keepsake::exporter copier(seg, s);
        REQUIRE(copier.stop(std::chrono::seconds(30)));
    }
    CHECK(s.list("n").size() == 20);
    keepsake::segment fresh("pgexport2", dir.options());
    keepsake::keeper<std::uint64_t> back(fresh, "n7");
    const auto recovered = keepsake::recover(back, s, std::uint64_t{0});
    CHECK(recovered.value == 70);
}

}  // namespace postgres_tests
