// keepsake/detail/inspect_units.hpp: keepsake-inspect's `units` table (the
// unit registry: type, parent, status, starts, crashes, last crashes).
#pragma once

#include <ctime>
#include <ostream>
#include <string>

#include "keepsake/unit_registry.hpp"

namespace keepsake::detail {

inline std::string wall_time_text(std::uint64_t wall_ns) {
    if (wall_ns == 0) return "-";
    const std::time_t seconds = static_cast<std::time_t>(wall_ns / 1000000000u);
    std::tm utc{};
    gmtime_r(&seconds, &utc);
    char text[32];
    std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &utc);
    return text;
}

// One line per unit, then its crash history indented below it; last, the
// process deaths the segment keeps.
inline void print_units(const segment& where, std::ostream& out) {
    out << "key\ttype\tparent\tstatus\trunning\tgeneration\tstarts\tcrashes\tlast change\n";
    for_each_unit(where, [&](const unit_info& unit) {
        out << unit.key << '\t' << (unit.type.empty() ? "-" : unit.type) << '\t'
            << (unit.parent.empty() ? "-" : unit.parent) << (unit.dynamic ? " (dynamic)" : "") << '\t'
            << to_string(unit.status) << '\t' << (unit.running ? "yes" : "no") << '\t' << unit.generation << '\t'
            << unit.starts << '\t' << unit.crashes << '\t' << wall_time_text(unit.status_ns) << '\n';
        for (const crash_entry& crash : unit.history)
            out << "  crash " << wall_time_text(crash.wall_ns) << ' ' << to_string(crash.kind) << " at generation "
                << crash.generation << ": " << crash.reason << '\n';
    });
    for (const process_death& death : process_deaths(where))
        out << "process died: pid " << death.pid << " (found " << wall_time_text(death.found_ns) << " by pid "
            << death.found_by_pid << ")\n";
}

} // namespace keepsake::detail
