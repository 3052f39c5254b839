// keepsake/detail/checksum.hpp: XXH3 (libxxhash, header-only through
// XXH_INLINE_ALL) behind two small functions.
#pragma once

#include <cstddef>
#include <cstdint>

#ifndef XXH_INLINE_ALL
#define XXH_INLINE_ALL
#endif
#include <xxhash.h>

namespace keepsake::detail {

inline std::uint64_t hash_bytes(const void* data, std::size_t size,
                                std::uint64_t seed = 0) noexcept {
    return XXH3_64bits_withSeed(data, size, seed);
}

// Folds a few header words into a seed, so one pass over the data checks the
// data and the words that describe it together.
inline std::uint64_t mix_words(std::uint64_t a, std::uint64_t b, std::uint64_t c,
                               std::uint64_t d) noexcept {
    const std::uint64_t words[4] = {a, b, c, d};
    return XXH3_64bits(words, sizeof(words));
}

} // namespace keepsake::detail
