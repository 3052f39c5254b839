// The state of the cluster tests' counter objects (tests/cluster_node.cpp
// and the tests that read what it left in PostgreSQL).
#pragma once

#include <cstdint>

namespace cluster_test {

struct counter {
    std::uint64_t count = 0;
    char writer[16] = {};  // the node that wrote it last
};

} // namespace cluster_test
