// keepsake/detail/checksum.hpp: XXH3 (libxxhash, header-only through
// XXH_INLINE_ALL) behind two small functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>

#ifndef XXH_INLINE_ALL
#define XXH_INLINE_ALL
#endif
#include <xxhash.h>

namespace keepsake::detail {

inline std::uint64_t hash_bytes(const void* data, std::size_t size,
                                std::uint64_t seed = 0) noexcept {
    return XXH3_64bits_withSeed(data, size, seed);
}

// Folds a few header words into a seed, so one XXH3 pass over the data
// checks the data and the words that describe it together. A multiply-xorshift
// chain (as in XXH3's own avalanche): any change to any word changes the seed.
inline std::uint64_t mix_words(std::uint64_t a, std::uint64_t b, std::uint64_t c,
                               std::uint64_t d) noexcept {
    std::uint64_t h = 0x9E3779B97F4A7C15ull;
    for (std::uint64_t word : {a, b, c, d}) {
        h = (h ^ word) * 0xBF58476D1CE4E5B9ull;
        h ^= h >> 31;
    }
    h *= 0x94D049BB133111EBull;
    return h ^ (h >> 29);
}

} // namespace keepsake::detail
