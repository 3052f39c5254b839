// keepsake/detail/sparse.hpp: containers that give back their peak's memory.
#pragma once

namespace keepsake::detail {

// After a burst (a million objects active, then hibernated), the containers
// that held one item per live unit keep their peak's capacity. These give it
// back once they are 1/8 full, which costs a copy of what is left: O(1) a
// removal, amortized. Never throws (they are called on paths that must
// not): out of memory, the container stays as it was (both calls leave it
// unchanged when their allocation fails).
template <class Vector>
void shrink_if_sparse(Vector& items) noexcept {
    if (items.capacity() <= 64 || items.size() * 8 >= items.capacity()) return;
    try {
        items.shrink_to_fit();
    } catch (...) {
    }
}
template <class Map>
void rehash_if_sparse(Map& items) noexcept {
    if (items.bucket_count() <= 64 || items.size() * 8 >= items.bucket_count()) return;
    try {
        items.rehash(0);
    } catch (...) {
    }
}

} // namespace keepsake::detail
