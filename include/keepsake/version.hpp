// keepsake/version.hpp: the library's version, as spdlog and fmt give theirs.
//
//   #if KEEPSAKE_VERSION >= 10000   // 1.0.0 or later
//
// KEEPSAKE_VERSION is MAJOR * 10000 + MINOR * 100 + PATCH. CMake's project
// version is read from this file, so the two never disagree.
#pragma once

#define KEEPSAKE_VERSION_MAJOR 0
#define KEEPSAKE_VERSION_MINOR 2
#define KEEPSAKE_VERSION_PATCH 0

#define KEEPSAKE_VERSION (KEEPSAKE_VERSION_MAJOR * 10000 + KEEPSAKE_VERSION_MINOR * 100 + KEEPSAKE_VERSION_PATCH)

#define KEEPSAKE_DETAIL_STRINGIFY2(x) #x
#define KEEPSAKE_DETAIL_STRINGIFY(x) KEEPSAKE_DETAIL_STRINGIFY2(x)
// "0.2.0"
#define KEEPSAKE_VERSION_STRING                                                                      \
    KEEPSAKE_DETAIL_STRINGIFY(KEEPSAKE_VERSION_MAJOR)                                                \
    "." KEEPSAKE_DETAIL_STRINGIFY(KEEPSAKE_VERSION_MINOR) "." KEEPSAKE_DETAIL_STRINGIFY(KEEPSAKE_VERSION_PATCH)
