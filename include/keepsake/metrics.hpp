// keepsake/metrics.hpp: the runtime's counters in Prometheus' text
// exposition format (version 0.0.4), for a program to serve on its own
// endpoint (keepsake has no HTTP server):
//
//   std::string body = keepsake::prometheus_text(runtime, {{"sqlite", &exporter}});
//   // serve it with Content-Type: text/plain; version=0.0.4
//
// Everything is read from what units, supervisors and exporters count
// anyway (unit_stats, supervisor_stats, exporter_stats): rendering costs a
// lock of the runtime's registry and a few relaxed loads per unit, and
// nothing is added to a commit, a call or a crash.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "keepsake/exporter.hpp"
#include "keepsake/objects/directory_spec.hpp"
#include "keepsake/runtime.hpp"
#include "keepsake/version.hpp"

namespace keepsake {

// An exporter to report, under the label exporter="name".
struct exporter_metrics {
    std::string name;
    const exporter* source = nullptr;
};

// An object directory to report, under the label directory="name": its
// counts for all its objects (an object is not a unit of the runtime's
// list, so a million objects are not a million series). Made by
// metrics_of(directory); the directory must outlive the rendering.
struct directory_metrics {
    std::string name;
    std::function<directory_stats()> read;
};

template <class State, class Handler>
class object_directory;  // keepsake/objects/directory.hpp

template <class State, class Handler>
directory_metrics metrics_of(const object_directory<State, Handler>& directory) {
    return {directory.name(), [&directory] { return directory.stats(); }};
}

namespace detail {

// A label value with \, " and newline escaped, as the format wants.
inline std::string prometheus_label(const std::string& value) {
    std::string escaped;
    escaped.reserve(value.size());
    for (char c : value) {
        if (c == '\\') escaped += "\\\\";
        else if (c == '"') escaped += "\\\"";
        else if (c == '\n') escaped += "\\n";
        else escaped += c;
    }
    return escaped;
}

inline std::string prometheus_number(double value) {
    if (std::isnan(value)) return "NaN";
    if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
    char text[32];
    std::snprintf(text, sizeof(text), "%.17g", value);
    return text;
}

// Writes metric families: each one's HELP and TYPE, then its samples.
class prometheus_writer {
public:
    void family(const char* name, const char* type, const char* help) {
        text_ += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
        name_ = name;
    }
    void sample(const std::string& labels, double value) {
        text_ += name_;
        if (!labels.empty()) text_ += "{" + labels + "}";
        text_ += " " + prometheus_number(value) + "\n";
    }
    std::string take() { return std::move(text_); }

private:
    std::string text_;
    std::string name_;
};

inline std::string label(const char* key, const std::string& value) {
    return std::string(key) + "=\"" + prometheus_label(value) + "\"";
}

// One family per row, one sample per unit (or supervisor, or exporter).
template <class Counters>
struct family_row {
    const char* name;
    const char* type;
    const char* help;
    double (*read)(const Counters&);
};

inline void write_runtime(prometheus_writer& out, const runtime& where) {
    const std::vector<metered_counters> all = where.sample_meters();
    std::map<std::string, double> units, supervisors;
    for (const char* state : {"running", "restarting", "not_running"}) units[state] = supervisors[state] = 0;
    for (const metered_counters& each : all) ++(each.supervisor ? supervisors : units)[each.state];
    out.family("keepsake_units", "gauge", "Units in the runtime, by state.");
    for (const auto& [state, count] : units) out.sample(label("state", state), count);
    out.family("keepsake_supervisors", "gauge", "Supervisors in the runtime, by state.");
    for (const auto& [state, count] : supervisors) out.sample(label("state", state), count);

    using row = family_row<metered_counters>;
    using counters = const metered_counters&;
    static const row unit_rows[] = {
        {"keepsake_unit_crashes_total", "counter", "Worker crashes of the unit (exceptions escaping its code).",
         [](counters c) { return double(c.crashes); }},
        {"keepsake_unit_restarts_total", "counter", "Worker restarts in place, from the last commit.",
         [](counters c) { return double(c.restarts); }},
        {"keepsake_unit_starts_total", "counter", "Starts of the unit by its supervisor (instances).",
         [](counters c) { return double(c.instance); }},
        {"keepsake_unit_messages_total", "counter", "Messages the unit served.",
         [](counters c) { return double(c.messages); }},
        {"keepsake_unit_commits_total", "counter", "Commits of the unit's state to shared memory.",
         [](counters c) { return double(c.commits); }},
        {"keepsake_unit_generation", "gauge", "The unit's newest committed generation.",
         [](counters c) { return double(c.generation); }},
        {"keepsake_unit_queue_depth", "gauge", "Messages waiting in the unit's mailbox.",
         [](counters c) { return double(c.queued); }},
        {"keepsake_unit_uptime_seconds", "gauge", "Time since the unit's current instance started.",
         [](counters c) { return c.uptime_seconds; }},
    };
    static const row supervisor_rows[] = {
        {"keepsake_supervisor_restarts_total", "counter", "Automatic restarts of the supervisor's children.",
         [](counters c) { return double(c.restarts); }},
        {"keepsake_supervisor_queue_depth", "gauge", "Child exits and management calls waiting.",
         [](counters c) { return double(c.queued); }},
    };
    auto write_rows = [&](const auto& rows, bool supervisor) {
        for (const row& each : rows) {
            out.family(each.name, each.type, each.help);
            for (const metered_counters& child : all)
                if (child.supervisor == supervisor)
                    out.sample(label(supervisor ? "supervisor" : "unit", child.name), each.read(child));
        }
    };
    write_rows(unit_rows, false);
    write_rows(supervisor_rows, true);
}

// Each row's family, with one sample per source (labelled `key`: its name).
template <class Stats, std::size_t Rows, class Source>
void write_per_source(prometheus_writer& out, const family_row<Stats> (&rows)[Rows], const char* key,
                      const std::vector<Source>& sources, const std::vector<Stats>& stats) {
    for (const family_row<Stats>& each : rows) {
        out.family(each.name, each.type, each.help);
        for (std::size_t i = 0; i < sources.size(); ++i) out.sample(label(key, sources[i].name), each.read(stats[i]));
    }
}

inline void write_exporters(prometheus_writer& out, const std::vector<exporter_metrics>& exporters) {
    if (exporters.empty()) return;
    using row = family_row<exporter_stats>;
    using counters = const exporter_stats&;
    static const row rows[] = {
        {"keepsake_export_passes_total", "counter", "Export passes that went through every key.",
         [](counters s) { return double(s.passes); }},
        {"keepsake_export_records_total", "counter", "Records the store took.",
         [](counters s) { return double(s.records); }},
        {"keepsake_export_store_failures_total", "counter", "Store calls (and passes) that failed; retried.",
         [](counters s) { return double(s.failures); }},
        {"keepsake_export_refused_total", "counter", "Records the store refused (stale generation, rejected).",
         [](counters s) { return double(s.refused); }},
    };
    std::vector<exporter_stats> stats;
    for (const exporter_metrics& each : exporters) stats.push_back(each.source->stats());
    const auto now = std::chrono::steady_clock::now();
    out.family("keepsake_export_lag_seconds", "gauge",
               "Age of the newest instant every commit before which is in the store (+Inf: no complete pass yet).");
    for (std::size_t i = 0; i < exporters.size(); ++i)
        out.sample(label("exporter", exporters[i].name),
                   stats[i].passes == 0 ? HUGE_VAL : std::chrono::duration<double>(now - stats[i].covered_until).count());
    write_per_source(out, rows, "exporter", exporters, stats);
}

inline void write_directories(prometheus_writer& out, const std::vector<directory_metrics>& directories) {
    if (directories.empty()) return;
    using row = family_row<directory_stats>;
    using counters = const directory_stats&;
    static const row rows[] = {
        {"keepsake_directory_active_objects", "gauge", "Objects of the directory active now.",
         [](counters s) { return double(s.active); }},
        {"keepsake_directory_activations_total", "counter", "Objects started (from shared memory, the store or new).",
         [](counters s) { return double(s.activations); }},
        {"keepsake_directory_hibernations_total", "counter", "Objects hibernated: idle, evicted or terminated.",
         [](counters s) { return double(s.hibernations); }},
        {"keepsake_directory_evictions_total", "counter", "Idle objects evicted at max_active.",
         [](counters s) { return double(s.evictions); }},
        {"keepsake_directory_shutdowns_total", "counter", "Objects shut down: exported and removed from the segment.",
         [](counters s) { return double(s.shutdowns); }},
        {"keepsake_directory_alarms_fired_total", "counter", "Alarms delivered to their handler.",
         [](counters s) { return double(s.alarms_fired); }},
        {"keepsake_directory_alarm_retries_total", "counter", "Alarms retried after their handler threw.",
         [](counters s) { return double(s.alarm_retries); }},
        {"keepsake_directory_alarms_failed_total", "counter", "Alarms given up after their last retry.",
         [](counters s) { return double(s.alarms_failed); }},
    };
    std::vector<directory_stats> stats;
    for (const directory_metrics& each : directories) stats.push_back(each.read());
    write_per_source(out, rows, "directory", directories, stats);
}

inline void write_build_info(prometheus_writer& out) {
    out.family("keepsake_build_info", "gauge", "The keepsake version this program was built with.");
    out.sample(label("version", KEEPSAKE_VERSION_STRING), 1);
}

} // namespace detail

// The runtime's units and supervisors, and the given exporters and object
// directories.
inline std::string prometheus_text(const runtime& where, const std::vector<exporter_metrics>& exporters = {},
                                   const std::vector<directory_metrics>& directories = {}) {
    detail::prometheus_writer out;
    detail::write_build_info(out);
    detail::write_runtime(out, where);
    detail::write_exporters(out, exporters);
    detail::write_directories(out, directories);
    return out.take();
}

// Only exporters: for a program with keepers and no runtime.
inline std::string prometheus_text(const std::vector<exporter_metrics>& exporters) {
    detail::prometheus_writer out;
    detail::write_build_info(out);
    detail::write_exporters(out, exporters);
    return out.take();
}

} // namespace keepsake
