// keepsake/cluster/placement.hpp: which node a new object starts on (issue
// 14, step 4). A placement is a function of the object's key, the node
// asking and the live nodes with room (capacity); it names one of them.
//
// A node asks only for an object nobody owns and nobody is placed on: an
// object keeps its node while that node lives (sticky: after a restart under
// the same id, the node claims its objects back first), and goes elsewhere
// only when it is out. The choice is written in PostgreSQL (the object is
// "placed" there), so every node that is asked agrees where it goes.
#pragma once

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "keepsake/cluster/ownership.hpp"

namespace keepsake::cluster {

struct placement_request {
    const std::string& key;               // "<directory>/<key>"
    const std::string& self;              // the node asking
    const std::vector<node_load>& nodes;  // live nodes with room, by id; never empty
};

// The id of the node `request.key` should start on: one of request.nodes
// (another answer is refused with errc::not_found).
using placement = std::function<std::string(const placement_request& request)>;

namespace placements {

// The least loaded node (fewest objects; the first by id among equals).
inline placement least_loaded() {
    return [](const placement_request& request) {
        return std::min_element(request.nodes.begin(), request.nodes.end(),
                                [](const node_load& a, const node_load& b) { return a.objects < b.objects; })
            ->node_id;
    };
}

// The node asking, when it has room; else the least loaded.
inline placement local_first() {
    return [spill = least_loaded()](const placement_request& request) {
        for (const node_load& each : request.nodes)
            if (each.node_id == request.self) return request.self;
        return spill(request);
    };
}

// Each node in turn (by id), counted by the node asking.
inline placement round_robin() {
    auto next = std::make_shared<std::atomic<std::size_t>>(0);
    return [next](const placement_request& request) {
        return request.nodes[next->fetch_add(1, std::memory_order_relaxed) % request.nodes.size()].node_id;
    };
}

// A node picked at random.
inline placement random() {
    struct source {
        std::mutex lock;
        std::mt19937_64 bits{std::random_device{}()};
    };
    auto from = std::make_shared<source>();
    return [from](const placement_request& request) {
        std::lock_guard<std::mutex> held(from->lock);
        return request.nodes[std::uniform_int_distribution<std::size_t>(0, request.nodes.size() - 1)(from->bits)].node_id;
    };
}

// Always `node_id` (refused while it is out or full).
inline placement on_node(std::string node_id) {
    return [node_id = std::move(node_id)](const placement_request&) { return node_id; };
}

} // namespace placements
} // namespace keepsake::cluster
