// tests/fuzz_replay.hpp: feeds a fuzz entry (fuzz/entries/) every input that
// ever failed in its fuzzer (tests/regressions/<target>/) and the seeds its
// fuzzer starts from (fuzz/entries/seeds.hpp). An entry throws
// keepsake_fuzz::finding for a broken invariant; a crash or a sanitizer
// report ends the test binary.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "entries/seeds.hpp"

namespace test_support {

inline std::vector<std::filesystem::path> regression_inputs(const std::string& target) {
    std::vector<std::filesystem::path> inputs;
    const std::filesystem::path directory = std::filesystem::path(KEEPSAKE_REGRESSIONS_DIR) / target;
    if (!std::filesystem::is_directory(directory)) return inputs;
    for (const auto& item : std::filesystem::directory_iterator(directory))
        if (item.is_regular_file() && item.path().filename() != "README.md") inputs.push_back(item.path());
    std::sort(inputs.begin(), inputs.end());
    return inputs;
}

template <class Entry>
void feed(Entry entry, const std::string& bytes) {
    entry(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
}

template <class Entry>
void replay_regressions(const std::string& target, Entry entry) {
    for (const std::filesystem::path& input : regression_inputs(target)) {
        INFO("regression input " << input.string());
        CHECK_NOTHROW(feed(entry, keepsake_fuzz::seeds::read_file(input.string())));
    }
}

template <class Entry>
void replay_seeds(const std::string& target, Entry entry) {
    const std::vector<keepsake_fuzz::seeds::seed> seeds = keepsake_fuzz::seeds::for_target(target);
    CHECK(!seeds.empty());
    for (const auto& seed : seeds) {
        INFO("seed " << seed.name);
        CHECK_NOTHROW(feed(entry, seed.bytes));
    }
}

} // namespace test_support
