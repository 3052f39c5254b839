// keepsake/detail/format.hpp: how numbers appear in keepsake's messages, the
// same in errors, logs and keepsake-inspect's output.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace keepsake::detail {

// A 64-bit word (a type fingerprint, a checksum) as 0x and 16 hex digits.
inline std::string hex64(std::uint64_t value) {
    char text[24];
    std::snprintf(text, sizeof(text), "0x%016llx", static_cast<unsigned long long>(value));
    return text;
}

} // namespace keepsake::detail
