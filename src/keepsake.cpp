// The compiled mode's one translation unit: keepsake's non-template code,
// built once. Enabled with the CMake option KEEPSAKE_COMPILED.
#ifndef KEEPSAKE_COMPILED_LIB
#error "src/keepsake.cpp is the compiled mode: build it with KEEPSAKE_COMPILED_LIB defined"
#endif

#include "keepsake/segment-inl.hpp"
#include "keepsake/detail/directory-inl.hpp"
#include "keepsake/exporter-inl.hpp"
#include "keepsake/stores/file_store-inl.hpp"
#include "keepsake/runtime-inl.hpp"
#include "keepsake/detail/child-inl.hpp"
#include "keepsake/supervisor-inl.hpp"
