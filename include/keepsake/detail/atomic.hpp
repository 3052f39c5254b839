// keepsake/detail/atomic.hpp: atomic access to plain integers that live in
// shared memory. The layout structs stay trivially copyable and their bytes
// stay exactly what is mapped; every access that orders a publish goes here.
#pragma once

#include <cstdint>

namespace keepsake::detail {

template <class Int>
inline Int load_acquire(const Int& word) noexcept {
    return __atomic_load_n(&word, __ATOMIC_ACQUIRE);
}

template <class Int>
inline Int load_relaxed(const Int& word) noexcept {
    return __atomic_load_n(&word, __ATOMIC_RELAXED);
}

template <class Int>
inline void store_release(Int& word, Int value) noexcept {
    __atomic_store_n(&word, value, __ATOMIC_RELEASE);
}

template <class Int>
inline void store_relaxed(Int& word, Int value) noexcept {
    __atomic_store_n(&word, value, __ATOMIC_RELAXED);
}

// Orders every store before it ahead of every store after it (needed on ARM
// before slot data is overwritten, so a reader never sees new data under an
// old generation).
inline void fence_release() noexcept { __atomic_thread_fence(__ATOMIC_RELEASE); }

// Orders every load before it ahead of every load after it: a seqlock
// reader's copy of slot data before its second read of the generation.
inline void fence_acquire() noexcept { __atomic_thread_fence(__ATOMIC_ACQUIRE); }

} // namespace keepsake::detail
