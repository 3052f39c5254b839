// keepsake/detail/config.hpp: header-only (default) or compiled mode.
// In compiled mode (KEEPSAKE_COMPILED_LIB, set by the CMake option
// KEEPSAKE_COMPILED) the non-template code in the *-inl.hpp headers is built
// once into a library instead of in every translation unit, as spdlog does.
#pragma once

#ifdef KEEPSAKE_COMPILED_LIB
#undef KEEPSAKE_HEADER_ONLY
#define KEEPSAKE_INLINE
#else
#ifndef KEEPSAKE_HEADER_ONLY
#define KEEPSAKE_HEADER_ONLY
#endif
#define KEEPSAKE_INLINE inline
#endif

#define KEEPSAKE_API
