// The fuzz entries of a segment file, a file store record and an SQLite row
// (fuzz/entries/) on every input that ever failed in their fuzzers and on
// their seeds; the three inputs issue 10 lists; and resealing, which the
// fuzzers rely on to get past checksums, computes what the library does.
#include "entries/file_record.hpp"
#include "entries/segment.hpp"
#include "entries/sqlite_row.hpp"
#include "fuzz_replay.hpp"
#include "issue10_inputs.hpp"

namespace fuzz_regression_tests {  // a unity build's sources keep their names apart (tests/CMakeLists.txt)

using keepsake::errc;
using keepsake::recovery_source;
using keepsake::detail::max_generation;

TEST_CASE("fuzz regressions: a segment file opened as owner, read-only and for maintenance", "[fuzz][segment]") {
    test_support::replay_regressions("segment", keepsake_fuzz::segment_entry);
}

TEST_CASE("fuzz regressions: a file store record file", "[fuzz][store]") {
    test_support::replay_regressions("file_record", keepsake_fuzz::file_record_entry);
}

TEST_CASE("fuzz regressions: an SQLite store row", "[fuzz][store]") {
    test_support::replay_regressions("sqlite_row", keepsake_fuzz::sqlite_row_entry);
}

TEST_CASE("fuzz seeds: the files and rows the library makes pass every entry", "[fuzz]") {
    test_support::replay_seeds("segment", keepsake_fuzz::segment_entry);
    test_support::replay_seeds("file_record", keepsake_fuzz::file_record_entry);
    test_support::replay_seeds("sqlite_row", keepsake_fuzz::sqlite_row_entry);
}

TEST_CASE("resealing changes nothing in what the library writes: the fuzzers compute its checksums", "[fuzz]") {
    for (const auto& seed : keepsake_fuzz::seeds::segment_seeds()) {
        INFO("segment seed " << seed.name);
        const bool unchanged = keepsake_fuzz::reseal_segment(seed.bytes) == seed.bytes;
        CHECK(unchanged);
    }
    for (const auto& seed : keepsake_fuzz::seeds::record_file_seeds()) {
        INFO("record file seed " << seed.name);
        const bool unchanged = keepsake_fuzz::reseal_record_file(seed.bytes) == seed.bytes;
        CHECK(unchanged);
    }
}

TEST_CASE("issue 10's inputs as listed are refused before anything is decoded", "[fuzz][issue10]") {
    // The record names std::string with the fingerprint of the build that
    // found it: another type to this build, refused as such.
    const auto str = issue10::recover_from_file<std::string>(issue10::unhex(issue10::str_asks_4gib), "str");
    CHECK(str.error == errc::type_mismatch);
    CHECK(str.restored == 0);
    // Generations far above 2^62: damage, so the record is passed over, and
    // recovery starts from the initial state, saying why.
    for (const auto& damaged : {issue10::recover_from_file<bool>(issue10::unhex(issue10::bool_holds_0x6c), "bool"),
                                issue10::recover_from_file<keepsake_fuzz::pod>(
                                    issue10::unhex(issue10::pod_at_top_generation), "pod")}) {
        CHECK(!damaged.error);
        CHECK(damaged.source == recovery_source::initial);
        CHECK(damaged.generation == 1);
        CHECK(damaged.restored == 1);
        REQUIRE(damaged.problems.size() == 1);
        CHECK(damaged.problems[0].find("out of range") != std::string::npos);
    }
}

TEST_CASE("issue 10's inputs made for this build: decode_failed for the bytes, record_corrupt for the generation",
          "[fuzz][issue10]") {
    // The 4 GiB length is refused before anything is sized for it.
    const auto str =
        issue10::recover_from_file<std::string>(issue10::for_this_build<std::string>(issue10::unhex(issue10::str_asks_4gib)), "str");
    CHECK(str.error == errc::decode_failed);
    CHECK(str.message.find("a length of 4295323500 elements") != std::string::npos);
    CHECK(str.restored == 0);
    // The bool's byte, at a generation in range so that it is decoded.
    const auto flag =
        issue10::recover_from_file<bool>(issue10::for_this_build<bool>(issue10::unhex(issue10::bool_holds_0x6c), 5), "bool");
    CHECK(flag.error == errc::decode_failed);
    CHECK(flag.message.find("holds 108, not 0 or 1") != std::string::npos);
    CHECK(flag.restored == 0);
    // Generation 2^64-1, whatever the type: damage.
    const auto top = issue10::recover_from_file<keepsake_fuzz::pod>(
        issue10::for_this_build<keepsake_fuzz::pod>(issue10::unhex(issue10::pod_at_top_generation)), "pod");
    CHECK(!top.error);
    CHECK(top.source == recovery_source::initial);
    CHECK(top.restored == 1);
    REQUIRE(top.problems.size() == 1);
    CHECK(top.problems[0].find("generation 18446744073709551615 is out of range") != std::string::npos);
}

TEST_CASE("a store record at the top of the range recovers to a generation restore reads", "[fuzz][generation]") {
    const std::string pod = issue10::unhex(issue10::pod_at_top_generation);
    // The highest generation a store hands on: recovery commits one above
    // it, the highest a commit may publish, and restore reads it.
    const auto highest = issue10::recover_from_file<keepsake_fuzz::pod>(
        issue10::for_this_build<keepsake_fuzz::pod>(pod, max_generation - 1), "pod");
    CHECK(!highest.error);
    CHECK(highest.source == recovery_source::store);
    CHECK(highest.generation == max_generation);
    CHECK(highest.restored == max_generation);
    // One more is damage.
    for (const std::uint64_t generation : {max_generation, max_generation + 1, ~std::uint64_t{0} - 1}) {
        CAPTURE(generation);
        const auto above = issue10::recover_from_file<keepsake_fuzz::pod>(
            issue10::for_this_build<keepsake_fuzz::pod>(pod, generation), "pod");
        CHECK(!above.error);
        CHECK(above.source == recovery_source::initial);
        CHECK(above.restored == 1);
    }
}

}  // namespace fuzz_regression_tests
