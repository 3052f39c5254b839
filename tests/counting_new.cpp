// The global operator new and delete of keepsake_alloc_tests, counting what
// each thread allocates (counting_new.hpp).
#include "counting_new.hpp"

#include <algorithm>
#include <cstdlib>
#include <new>

#include <malloc.h>

namespace {

thread_local std::size_t calls = 0;
thread_local std::int64_t live = 0;
thread_local std::int64_t peak = 0;
thread_local std::size_t largest = 0;

void* counted(std::size_t size, std::size_t alignment = alignof(std::max_align_t)) {
    ++calls;
    void* memory = nullptr;
    if (alignment <= alignof(std::max_align_t)) memory = std::malloc(size == 0 ? 1 : size);
    else if (::posix_memalign(&memory, alignment, size == 0 ? alignment : size) != 0) memory = nullptr;
    largest = std::max(largest, size);
    if (memory) {
        live += static_cast<std::int64_t>(::malloc_usable_size(memory));
        peak = std::max(peak, live);
    }
    return memory;
}

void released(void* memory) noexcept {
    if (!memory) return;
    live -= static_cast<std::int64_t>(::malloc_usable_size(memory));
    std::free(memory);
}

} // namespace

namespace test_support::heap {
std::size_t allocations() noexcept { return calls; }
std::int64_t live_bytes() noexcept { return live; }
std::int64_t peak_bytes() noexcept { return peak; }
std::size_t largest_request() noexcept { return largest; }
void reset_peak() noexcept {
    peak = live;
    largest = 0;
}
} // namespace test_support::heap

void* operator new(std::size_t size) {
    if (void* memory = counted(size)) return memory;
    throw std::bad_alloc();
}
void* operator new[](std::size_t size) { return ::operator new(size); }
void* operator new(std::size_t size, std::align_val_t alignment) {
    if (void* memory = counted(size, static_cast<std::size_t>(alignment))) return memory;
    throw std::bad_alloc();
}
void* operator new[](std::size_t size, std::align_val_t alignment) { return ::operator new(size, alignment); }
void* operator new(std::size_t size, const std::nothrow_t&) noexcept { return counted(size); }
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept { return counted(size); }
void operator delete(void* memory) noexcept { released(memory); }
void operator delete[](void* memory) noexcept { released(memory); }
void operator delete(void* memory, std::size_t) noexcept { released(memory); }
void operator delete[](void* memory, std::size_t) noexcept { released(memory); }
void operator delete(void* memory, std::align_val_t) noexcept { released(memory); }
void operator delete[](void* memory, std::align_val_t) noexcept { released(memory); }
void operator delete(void* memory, std::size_t, std::align_val_t) noexcept { released(memory); }
void operator delete[](void* memory, std::size_t, std::align_val_t) noexcept { released(memory); }
