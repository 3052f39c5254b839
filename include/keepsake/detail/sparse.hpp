// keepsake/detail/sparse.hpp: containers that give back their peak's memory.
#pragma once

namespace keepsake::detail {

// After a burst (a million objects active, then hibernated), the containers
// that held one item per live unit keep their peak's capacity. These give it
// back once they are 1/8 full, which costs a copy of what is left: O(1) a
// removal, amortized.
template <class Vector>
void shrink_if_sparse(Vector& items) {
    if (items.capacity() > 64 && items.size() * 8 < items.capacity()) items.shrink_to_fit();
}
template <class Map>
void rehash_if_sparse(Map& items) {
    if (items.bucket_count() > 64 && items.size() * 8 < items.bucket_count()) items.rehash(0);
}

} // namespace keepsake::detail
