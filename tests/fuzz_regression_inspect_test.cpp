// keepsake-inspect's fuzz entry (fuzz/entries/inspect.hpp) on every input
// that ever failed in its fuzzer, and on its seeds. Its own source file:
// under UBSan it skips rapidjson's null-pointer offset (tests/CMakeLists.txt).
#include "entries/inspect.hpp"
#include "fuzz_replay.hpp"

namespace fuzz_regression_inspect_tests {  // a unity build's sources keep their names apart (tests/CMakeLists.txt)

TEST_CASE("fuzz regressions: keepsake-inspect on a segment file", "[fuzz][inspect]") {
    test_support::replay_regressions("inspect", keepsake_fuzz::inspect_entry);
}

TEST_CASE("fuzz seeds: keepsake-inspect on the segments the library makes", "[fuzz][inspect]") {
    test_support::replay_seeds("inspect", keepsake_fuzz::inspect_entry);
}

}  // namespace fuzz_regression_inspect_tests
