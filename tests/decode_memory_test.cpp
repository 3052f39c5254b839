// A forged length costs memory in proportion to the bytes that carry it,
// never to what it claims: issue 10's records, the same bytes in an SQLite
// row and in a segment slot, and keepsake-inspect dump --json of that slot,
// each refused with less than 1 MiB of extra heap (counting_new.cpp counts
// operator new on this thread; SQLite's own malloc is not counted).
#include <catch2/catch.hpp>

#include <fstream>
#include <sstream>

#include <keepsake/inspect.hpp>
#include <keepsake/stores/sqlite_store.hpp>

#include "counting_new.hpp"
#include "issue10_inputs.hpp"

namespace decode_memory_tests {  // a unity build's sources keep their names apart (tests/CMakeLists.txt)

using keepsake::errc;
using test_support::heap::usage;
using test_support::heap::usage_of;

namespace {

constexpr std::int64_t one_mib = 1 << 20;

template <class T>
usage recovering(const std::string& file, const std::string& key, issue10::recovery& result) {
    usage used;
    result = issue10::recover_from_file<T>(file, key, [&](auto&& run) { used = usage_of(run); });
    return used;
}

// The bytes of the issue's "str" record: a cereal length of 4 GiB and nothing after it.
std::vector<std::byte> forged_string_bytes() {
    const std::string file = issue10::unhex(issue10::str_asks_4gib);
    const std::string data = file.substr(sizeof(keepsake::detail::file_record_header) + 3);
    const auto* begin = reinterpret_cast<const std::byte*>(data.data());
    return std::vector<std::byte>(begin, begin + data.size());
}

} // namespace

TEST_CASE("issue 10's records are refused with less than 1 MiB of extra heap", "[alloc][decode]") {
    issue10::recovery result;
    const std::string str = issue10::unhex(issue10::str_asks_4gib);
    const std::string flag = issue10::unhex(issue10::bool_holds_0x6c);
    const std::string pod = issue10::unhex(issue10::pod_at_top_generation);
    SECTION("as listed") {
        usage used = recovering<std::string>(str, "str", result);
        CHECK(result.error == errc::type_mismatch);
        CHECK(used.extra_peak < one_mib);
        CHECK(used.largest_request < one_mib);
        used = recovering<bool>(flag, "bool", result);
        CHECK(result.problems.size() == 1);
        CHECK(used.extra_peak < one_mib);
        used = recovering<keepsake_fuzz::pod>(pod, "pod", result);
        CHECK(result.problems.size() == 1);
        CHECK(used.extra_peak < one_mib);
    }
    SECTION("made for this build, so that the decoder meets them") {
        usage used = recovering<std::string>(issue10::for_this_build<std::string>(str), "str", result);
        CHECK(result.error == errc::decode_failed);
        CHECK(used.extra_peak < one_mib);
        CHECK(used.largest_request < one_mib);
        used = recovering<bool>(issue10::for_this_build<bool>(flag, 5), "bool", result);
        CHECK(result.error == errc::decode_failed);
        CHECK(used.extra_peak < one_mib);
        used = recovering<keepsake_fuzz::pod>(issue10::for_this_build<keepsake_fuzz::pod>(pod), "pod", result);
        CHECK(result.problems.size() == 1);
        CHECK(used.extra_peak < one_mib);
    }
}

TEST_CASE("a 4 GiB string length in an SQLite row is refused with less than 1 MiB of extra heap", "[alloc][decode]") {
    test_support::temp_dir files;
    test_support::shm_dir memory;
    keepsake::sqlite_store store(files.path() + "/rows.db", {keepsake::sqlite_sync::off});
    keepsake::record forged;
    forged.key = "str";
    forged.generation = 9;
    const keepsake_fuzz::identity as = keepsake_fuzz::identity_of<std::string>();
    forged.fingerprint = as.fingerprint;
    forged.schema_version = as.schema_version;
    forged.codec = as.codec;
    forged.bytes = forged_string_bytes();
    store.put_batch({forged});
    keepsake::segment segment("row", memory.options());
    keepsake::keeper<std::string> kept(segment, "str");
    std::optional<errc> failed;
    const usage used = usage_of([&] {
        try {
            keepsake::recover(kept, store, std::string());
        } catch (const keepsake::error& failure) {
            failed = failure.code();
        }
    });
    CHECK(failed == errc::decode_failed);
    CHECK(used.extra_peak < one_mib);
    CHECK(used.largest_request < one_mib);
}

TEST_CASE("a 4 GiB string length in a slot is refused by restore and keepsake-inspect with less than 1 MiB of extra heap",
          "[alloc][decode]") {
    test_support::shm_dir memory;
    {
        keepsake::segment segment("slot", memory.options());
        keepsake::keeper<std::string>(segment, "str").commit("hello");
    }
    // The newest slot holds the forged bytes, with checksums that hold.
    std::string bytes = test_support::read_file(memory.file("slot"));
    const test_support::slot_place place = test_support::find_slots(bytes, "str");
    const std::vector<std::byte> forged = forged_string_bytes();
    keepsake::detail::slot_header header{};
    keepsake_fuzz::read_at(bytes, place.header(0), header);
    REQUIRE(header.generation == 1);
    header.size = forged.size();
    keepsake_fuzz::write_at(bytes, place.header(0), header);
    std::memcpy(&bytes[place.data(0)], forged.data(), forged.size());
    keepsake_fuzz::write_file(memory.file("slot"), keepsake_fuzz::reseal_segment(bytes));

    keepsake::inspector tool;
    tool.register_type<std::string>("std::string");
    std::ostringstream out, err;
    int status = 0;
    usage used = usage_of([&] { status = tool.run({"--dir", memory.path(), "dump", "slot", "str", "--json"}, out, err); });
    CHECK(status == 1);
    CHECK(err.str().find("a length of 4295323500 elements") != std::string::npos);
    CHECK(used.extra_peak < one_mib);
    CHECK(used.largest_request < one_mib);

    keepsake::segment segment("slot", memory.options());
    keepsake::keeper<std::string> kept(segment, "str");
    std::optional<errc> failed;
    used = usage_of([&] {
        try {
            kept.restore();
        } catch (const keepsake::error& failure) {
            failed = failure.code();
        }
    });
    CHECK(failed == errc::decode_failed);
    CHECK(used.extra_peak < one_mib);
    CHECK(used.largest_request < one_mib);
}

}  // namespace decode_memory_tests
