// tests/counting_new.hpp: the heap as the replaced global operator new of
// keepsake_alloc_tests (counting_new.cpp) sees it, per thread. Only that
// binary links it: sanitizers replace operator new themselves.
#pragma once

#include <cstddef>
#include <cstdint>

namespace test_support::heap {

// Calls to operator new on this thread, since the start.
std::size_t allocations() noexcept;
// Bytes this thread allocated and has not freed (usable sizes; memory freed
// by another thread than the one that allocated it is counted where freed).
std::int64_t live_bytes() noexcept;
// The highest live_bytes() since the last reset_peak(), and the largest
// single request since then.
std::int64_t peak_bytes() noexcept;
std::size_t largest_request() noexcept;
void reset_peak() noexcept;

// What `action` had in use at once beyond what was in use before it.
struct usage {
    std::int64_t extra_peak = 0;
    std::size_t largest_request = 0;
};

template <class Action>
usage usage_of(Action&& action) {
    reset_peak();
    const std::int64_t before = live_bytes();
    action();
    return usage{peak_bytes() - before, largest_request()};
}

} // namespace test_support::heap
