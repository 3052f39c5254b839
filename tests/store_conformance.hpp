// tests/store_conformance.hpp: what every store must do (store.hpp), run
// against each: the built-in stores in keepsake_tests, the PostgreSQL store
// in keepsake_postgres_tests (against a server the tests start).
#pragma once

#include <catch2/catch.hpp>

#include <memory>
#include <string>
#include <vector>

#include <keepsake/store.hpp>

namespace store_conformance {

using keepsake::record;

inline record make_record(const std::string& key, std::uint64_t generation, std::size_t size = 64, std::uint32_t schema = 1) {
    record r;
    r.key = key;
    r.generation = generation;
    r.schema_version = schema;
    r.codec = 1;
    r.fingerprint = 0xF00DF00DF00DF00Dull ^ generation;
    r.bytes.resize(size);
    for (std::size_t i = 0; i < size; ++i) r.bytes[i] = static_cast<std::byte>((generation * 31 + i) & 0xff);
    return r;
}

inline bool same(const record& a, const record& b) {
    return a.key == b.key && a.generation == b.generation && a.schema_version == b.schema_version &&
           a.codec == b.codec && a.fingerprint == b.fingerprint && a.bytes == b.bytes;
}

inline std::uint64_t generation_of(keepsake::store& s, const std::string& key) {
    const auto found = s.get(key);
    return found ? found->generation : 0;
}

// The suite, in the calling test case's sections. Kind::open() opens the
// store under test; open() again sees the same records.
template <class Kind>
void run() {
    Kind kind;
    std::shared_ptr<keepsake::store> s = kind.open();

    SECTION("a record comes back exactly as it was put, empty bytes too") {
        const record full = make_record("k", 7, 300, 3);
        const record empty = make_record("e", 1, 0);
        s->put_batch({full, empty});
        REQUIRE(same(*s->get("k"), full));
        REQUIRE(same(*s->get("e"), empty));
    }
    SECTION("a missing key is nothing, and removing it is false") {
        CHECK_FALSE(s->get("absent"));
        CHECK_FALSE(s->remove("absent"));
    }
    SECTION("an older or equal generation never replaces a newer one") {
        s->put_batch({make_record("k", 5)});
        s->put_batch({make_record("k", 3)});
        CHECK(same(*s->get("k"), make_record("k", 5)));
        record equal = make_record("k", 5);
        equal.bytes[0] = std::byte{0x55};
        s->put_batch({equal});
        CHECK(same(*s->get("k"), make_record("k", 5)));
        s->put_batch({make_record("k", 9), make_record("k", 8)});  // within one batch too
        CHECK(same(*s->get("k"), make_record("k", 9)));
    }
    SECTION("put_batch returns the indexes of the records it skipped as not newer") {
        CHECK(s->put_batch({make_record("k", 5)}).empty());
        const std::vector<std::size_t> skipped = s->put_batch(
            {make_record("a", 1), make_record("k", 3), make_record("k", 5), make_record("k", 9), make_record("k", 8)});
        CHECK(skipped == std::vector<std::size_t>{1, 2, 4});
        CHECK(same(*s->get("k"), make_record("k", 9)));
        CHECK(same(*s->get("a"), make_record("a", 1)));
        CHECK(s->put_batch({}).empty());
    }
    SECTION("remove takes a key out of get and list") {
        s->put_batch({make_record("a", 1), make_record("b", 1)});
        CHECK(s->remove("a"));
        CHECK_FALSE(s->get("a"));
        CHECK(s->list("") == std::vector<std::string>{"b"});
        s->put_batch({make_record("a", 1)});  // a removed key starts afresh
        CHECK(generation_of(*s, "a") == 1);
    }
    SECTION("a prefix scopes keys") {
        s->put_batch({make_record("app1/x", 1), make_record("app1/y", 1), make_record("app2/x", 1),
                      make_record("app1", 1)});
        CHECK(s->list("app1/") == std::vector<std::string>{"app1/x", "app1/y"});
        CHECK(s->list("app2/") == std::vector<std::string>{"app2/x"});
        CHECK(s->list("") == std::vector<std::string>{"app1", "app1/x", "app1/y", "app2/x"});
    }
    SECTION("keys with any bytes round-trip") {
        const std::string odd = std::string("p:q/r.s%t u\x01") + char(0xff);
        s->put_batch({make_record(odd, 2)});
        CHECK(same(*s->get(odd), make_record(odd, 2)));
        CHECK(s->list("p:") == std::vector<std::string>{odd});
    }
    SECTION("a large batch lands whole, and a store opened again still has it") {
        std::vector<record> batch;
        for (int i = 0; i < 300; ++i) batch.push_back(make_record("key/" + std::to_string(i), 1 + i % 5));
        s->put_batch(batch);
        s.reset();
        auto again = kind.open();
        CHECK(again->list("key/").size() == 300);
        for (int i = 0; i < 300; i += 37) CHECK(same(*again->get(batch[i].key), batch[i]));
    }
}

} // namespace store_conformance
