// Claims per second by three sweepers racing over a dead node's orphans;
// and export into the PostgreSQL store beside its floor, in pairs in the same
// run (issue 14): a raw batched upsert of the same rows through libpq, one
// multi-row INSERT ... ON CONFLICT statement of binary parameters a batch
// (the fastest plain way to upsert a batch), with the same generation rule.
// Against a private server the bench starts (tests/postgres_server.hpp:
// initdb into a temporary directory, fsync off, so both sides pay the same
// commits and neither pays the disk).
//
// Workload: 10 000 keys of 64 B, all changed before each export, batches of
// 1024 records.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <memory>
#include <thread>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <unistd.h>

#include <libpq-fe.h>

#include <keepsake/keepsake.hpp>
#include <keepsake/cluster/membership.hpp>
#include <keepsake/cluster/ownership.hpp>
#include <keepsake/stores/postgres_store.hpp>

#include "cluster_processes.hpp"
#include "export_workload.hpp"
#include "postgres_server.hpp"

namespace {

using export_workload::batch_size;
using export_workload::key_count;
using export_workload::state64;

void put_word(unsigned char* out, std::uint64_t word) {
    for (int byte = 7; byte >= 0; --byte, word >>= 8) out[byte] = static_cast<unsigned char>(word & 0xff);
}

// The floor: each batch one INSERT of `rows` rows (7 binary parameters a
// row, the store's columns), ON CONFLICT with the same WHERE.
class raw_upserter {
public:
    explicit raw_upserter(benchmark::State& run)
        : run_(run), connection_(PQconnectdb(test_support::postgres_server::shared().conninfo().c_str())) {
        if (PQstatus(connection_) != CONNECTION_OK) run_.SkipWithError(PQerrorMessage(connection_));
        PQsetNoticeProcessor(connection_, [](void*, const char*) {}, nullptr);
        execute("DROP TABLE IF EXISTS raw_t");
        execute("CREATE TABLE raw_t (key BYTEA PRIMARY KEY, generation BIGINT NOT NULL, schema_version BIGINT NOT NULL,"
                " codec BIGINT NOT NULL, fingerprint BIGINT NOT NULL, checksum BIGINT NOT NULL, data BYTEA NOT NULL)");
        prepare("full", batch_size);
        prepare("rest", key_count % batch_size);
        for (std::size_t i = 0; i < key_count; ++i) keys_.push_back("bench/k" + std::to_string(i));
    }
    raw_upserter(const raw_upserter&) = delete;
    raw_upserter& operator=(const raw_upserter&) = delete;
    ~raw_upserter() { PQfinish(connection_); }

    void round() {
        ++round_;
        for (std::size_t first = 0; first < key_count; first += batch_size) {
            const std::size_t rows = std::min(batch_size, key_count - first);
            std::vector<state64> values(rows);
            std::vector<std::array<unsigned char, 8>> words(rows * 5);
            std::vector<const char*> pointers;
            std::vector<int> lengths, formats(rows * 7, 1);
            for (std::size_t row = 0; row < rows; ++row) {
                const std::size_t i = first + row;
                std::fill(std::begin(values[row].words), std::end(values[row].words), round_ * key_count + i);
                const std::uint64_t row_words[5] = {round_, 1, 1, 7, 9};
                pointers.push_back(keys_[i].data());
                lengths.push_back(static_cast<int>(keys_[i].size()));
                for (int w = 0; w < 5; ++w) {
                    put_word(words[row * 5 + w].data(), row_words[w]);
                    pointers.push_back(reinterpret_cast<const char*>(words[row * 5 + w].data()));
                    lengths.push_back(8);
                }
                pointers.push_back(reinterpret_cast<const char*>(&values[row]));
                lengths.push_back(sizeof(state64));
            }
            PGresult* done = PQexecPrepared(connection_, rows == batch_size ? "full" : "rest",
                                            static_cast<int>(rows * 7), pointers.data(), lengths.data(),
                                            formats.data(), 0);
            if (PQresultStatus(done) != PGRES_COMMAND_OK) run_.SkipWithError(PQresultErrorMessage(done));
            PQclear(done);
        }
    }

private:
    benchmark::State& run_;
    PGconn* connection_;
    std::vector<std::string> keys_;
    std::uint64_t round_ = 0;

    void execute(const char* sql) {
        PGresult* done = PQexec(connection_, sql);
        if (PQresultStatus(done) != PGRES_COMMAND_OK) run_.SkipWithError(PQresultErrorMessage(done));
        PQclear(done);
    }

    void prepare(const char* name, std::size_t rows) {
        if (rows == 0) return;
        std::string sql = "INSERT INTO raw_t AS stored VALUES ";
        for (std::size_t row = 0; row < rows; ++row) {
            sql += row == 0 ? "(" : ", (";
            for (int column = 1; column <= 7; ++column)
                sql += "$" + std::to_string(row * 7 + column) + (column == 7 ? ")" : ", ");
        }
        sql += " ON CONFLICT (key) DO UPDATE SET generation = excluded.generation, schema_version ="
               " excluded.schema_version, codec = excluded.codec, fingerprint = excluded.fingerprint, checksum ="
               " excluded.checksum, data = excluded.data WHERE stored.generation < excluded.generation";
        std::vector<Oid> types;
        for (std::size_t row = 0; row < rows; ++row)
            for (Oid type : {17u, 20u, 20u, 20u, 20u, 20u, 17u}) types.push_back(type);
        PGresult* done = PQprepare(connection_, name, sql.c_str(), static_cast<int>(types.size()), types.data());
        if (PQresultStatus(done) != PGRES_COMMAND_OK) run_.SkipWithError(PQresultErrorMessage(done));
        PQclear(done);
    }
};

// Each iteration times one raw round and one export round back to back (the
// export's changes made untimed), so drifts hit both alike.
void BM_export_vs_raw_postgres(benchmark::State& run) {
    raw_upserter raw(run);
    keepsake::postgres_store_options options;
    options.table = "export_t";
    keepsake::postgres_store store(test_support::postgres_server::shared().conninfo(), options);
    export_workload::paired_export_vs_raw(run, raw, store);
    run.SetItemsProcessed(static_cast<std::int64_t>(run.iterations() * key_count * 2));
}

// Claims per second with 3 sweepers: a dead node owned `objects` objects;
// three nodes, each on its own thread and connection, claim its orphans in
// batches of 100 until none is left (each orphan exactly once, checked).
void BM_claims_three_sweepers(benchmark::State& run) {
    const std::size_t objects = 10000;
    const std::string conninfo = test_support::postgres_server::shared().conninfo();
    static int round = 0;
    for (auto _ : run) {
        run.PauseTiming();
        const std::string prefix = "claims" + std::to_string(round++) + "_";
        auto time = std::make_shared<keepsake::manual_clock>();
        auto node = [&](const std::string& id) {
            keepsake::cluster::node_options options;
            options.node_id = id;
            options.table_prefix = prefix;
            options.time = time;
            return options;
        };
        keepsake::cluster::membership dead(conninfo, node("dead"));
        {
            keepsake::cluster::ownership owned(conninfo, dead, prefix);
            for (std::size_t i = 0; i < objects; ++i) owned.claim("o" + std::to_string(i));
        }
        std::vector<std::unique_ptr<keepsake::cluster::membership>> nodes;
        std::vector<std::unique_ptr<keepsake::cluster::ownership>> owners;
        for (int i = 0; i < 3; ++i) {
            nodes.push_back(std::make_unique<keepsake::cluster::membership>(conninfo, node("n" + std::to_string(i))));
            owners.push_back(std::make_unique<keepsake::cluster::ownership>(conninfo, *nodes.back(), prefix));
            nodes.back()->observe();
        }
        time->advance(std::chrono::seconds(6));
        for (auto& each : nodes) each->heartbeat();
        if (nodes[0]->sweep().size() != 1) run.SkipWithError("the dead node was not declared");
        std::atomic<std::size_t> claimed{0};
        run.ResumeTiming();
        std::vector<std::thread> sweepers;
        for (auto& each : owners)
            sweepers.emplace_back([&, mine = each.get()] {
                for (auto got = mine->claim_orphans(100); !got.empty(); got = mine->claim_orphans(100))
                    claimed += got.size();
            });
        for (auto& thread : sweepers) thread.join();
        run.PauseTiming();
        if (claimed.load() != objects) run.SkipWithError("orphans claimed more or less than once");
        run.ResumeTiming();
    }
    run.SetItemsProcessed(static_cast<std::int64_t>(run.iterations() * objects));
}

// Failover: node a holds 10 000 objects; SIGKILLed, its objects are claimed
// and started by b and c (node processes, tests/cluster_node.cpp; heartbeat
// 1 s, ttl 2 s, an export a second). The time is from the kill to both survivors answering
// every one of them (each ticks all it owns every 50 ms); claimed_s: to the
// last claim, from PostgreSQL.
void BM_failover_10000_objects(benchmark::State& run) {
    constexpr int objects = 10000;
    for (auto _ : run) {
        test_support::node_processes nodes(KEEPSAKE_CLUSTER_NODE, 2000, 1000, 50, 1000);
        nodes.start("a", objects);
        nodes.start("b", 0);
        nodes.start("c", 0);
        std::this_thread::sleep_for(std::chrono::seconds(2));  // ticking, exported
        const auto killed = std::chrono::steady_clock::now();
        const std::int64_t killed_ns =
            std::chrono::duration_cast<std::chrono::nanoseconds>(killed.time_since_epoch()).count();
        nodes.signal("a", SIGKILL);
        nodes.wait("a");
        double claimed_s = 0;
        const bool answered = test_support::node_processes::eventually(
            [&] {
                if (claimed_s == 0) {
                    std::size_t moved = 0;
                    for (const auto& [object, row] : nodes.owners()) moved += row.node != "a" ? 1 : 0;
                    if (moved == objects)
                        claimed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
                }
                const auto b = nodes.served("b");
                const auto c = nodes.served("c");
                return b && c && b->second > killed_ns && c->second > killed_ns && b->first + c->first == objects;
            },
            std::chrono::seconds(120));
        const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
        if (!answered) run.SkipWithError("the survivors did not answer every object within 120 s");
        run.SetIterationTime(took);
        run.counters["claimed_s"] = claimed_s;
    }
}

} // namespace

BENCHMARK(BM_failover_10000_objects)->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_claims_three_sweepers)->Iterations(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_export_vs_raw_postgres)->Iterations(10)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
