// keepsake/detail/metered.hpp: the counters a unit or a supervisor reports
// to keepsake/metrics.hpp, read from the stats they keep anyway (nothing is
// counted for metrics on a hot path).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace keepsake::detail {

struct metered_counters {
    bool supervisor = false;   // else a unit
    std::string name;
    const char* state = "";    // running, restarting or not_running
    std::uint64_t instance = 0;
    std::uint64_t restarts = 0;
    std::uint64_t crashes = 0;     // units
    std::uint64_t messages = 0;    // units
    std::uint64_t commits = 0;     // units
    std::uint64_t generation = 0;  // units
    std::uint64_t queued = 0;
    double uptime_seconds = 0;
};

} // namespace keepsake::detail
