// One libFuzzer target: fuzz/CMakeLists.txt compiles this file once per
// entry, naming the entry's header and function (KEEPSAKE_FUZZ_HEADER,
// KEEPSAKE_FUZZ_ENTRY). The same entries run in the regression tests.
#include <cstddef>
#include <cstdint>

#include KEEPSAKE_FUZZ_HEADER

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    return keepsake_fuzz::KEEPSAKE_FUZZ_ENTRY(data, size);
}
