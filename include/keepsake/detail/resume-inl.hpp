// keepsake/detail/resume-inl.hpp: a dynamic supervisor resumes the children
// the unit registry says were running under its name (README "Resume").
// Part of the supervisor's code (supervisor-inl.hpp includes it).
#pragma once

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "keepsake/detail/registry_book.hpp"

namespace keepsake {
namespace detail {

inline std::string record_text(const char* text, std::uint8_t length) { return std::string(text, length); }

// Would its supervisor have restarted it? Then it resumes.
inline bool resumable(const persisted_unit& record) noexcept {
    const auto status = static_cast<unit_status>(record.status);
    const auto restart = static_cast<restart_type>(record.restart);
    if (status == unit_status::running) return true;
    return status == unit_status::crashed && restart != restart_type::temporary;
}

KEEPSAKE_INLINE void supervisor_core::resume_children() {
    const segment* where = spec_.registry != nullptr ? spec_.registry : runtime_.options().default_segment;
    if (where == nullptr) return;
    const auto began = std::chrono::steady_clock::now();
    auto book = registry_book::of(where->shared_impl());
    if (spec_.resume_from != nullptr) {
        try {
            book->import_from(*spec_.resume_from, spec_.store_prefix);
        } catch (const std::exception& failure) {
            publish_by(name(), event_kind::resume_refused, spec_.resume_from->describe(), 0, exit_kind::crashed,
                       std::string("could not read the registry from the store: ") + failure.what());
        }
    }
    std::vector<persisted_unit> mine;
    for (const persisted_unit& record : book->records())
        if ((record.flags & unit_flag_dynamic) != 0 && record_text(record.parent, record.parent_length) == name())
            mine.push_back(record);
    std::sort(mine.begin(), mine.end(),
              [](const persisted_unit& a, const persisted_unit& b) { return a.order < b.order; });
    // Room for them all at once: no rehash of the name tables as they come.
    children_.reserve(children_.size() + mine.size());
    by_id_.reserve(by_id_.size() + mine.size());
    runtime_.reserve_names(mine.size());
    book->reserve(mine.size());
    // The registry lists a unit once: only a child already here may share
    // a resumed one's id. With none, no lookup a unit (each a cold walk of
    // a table of 100 000 nodes spread over the heap).
    const bool check_ids = !children_.empty();
    std::uint64_t resumed = 0;
    for (const persisted_unit& record : mine) {
        if (resume_one(*book, record, check_ids)) ++resumed;
        next_order_ = std::max(next_order_, record.order + 1);
    }
    if (!runtime_.events().any()) return;
    event what;
    what.kind = event_kind::resumed;
    what.supervisor = name();
    what.child = name();
    what.instance = resumed;
    what.at = runtime_.clock().now();
    what.took = std::chrono::duration_cast<duration>(std::chrono::steady_clock::now() - began);
    runtime_.events().publish(what);
}

KEEPSAKE_INLINE bool supervisor_core::resume_one(registry_book& book, const persisted_unit& record, bool check_id) {
    const std::string key = record_text(record.key, record.key_length);
    const std::string type = record_text(record.type, record.type_length);
    const auto status = static_cast<unit_status>(record.status);
    auto refuse = [&](const std::string& why) {
        publish_by(name(), event_kind::resume_refused, key, 0, exit_kind::normal, why);
        return false;
    };
    auto with_entry = [&](auto&& job) {
        auto& held = book.attach(key);
        try {
            job(held);
        } catch (...) {
            book.release(held);
            throw;
        }
        book.release(held);
    };
    if (status == unit_status::deleted) {  // a delete a crash cut short
        with_entry([&](registry_book::entry& held) { book.remove_unit(held, key); });
        return false;
    }
    if (status == unit_status::permanently_crashed)
        return refuse("permanently crashed: clear it (keepsake::clear_crashed or keepsake-inspect clear) to start it");
    if (!resumable(record)) return false;
    if (type.empty()) return refuse("it has no registered type (start it from keepsake::register_unit_type's types)");
    if (check_id && find(key) != nullptr) return refuse("a child of that id is already there");
    resume_candidate candidate;
    candidate.key = key;
    candidate.type = type;
    candidate.status = status;
    candidate.starts = record.starts;
    candidate.crashes = record.crashes;
    try {
        candidate.spec = child_of_type(type, key);
    } catch (const std::exception& failure) {
        return refuse(failure.what());
    }
    const resume_action action = spec_.on_resume ? spec_.on_resume(candidate) : resume_action::resume;
    if (action == resume_action::remove) {
        with_entry([&](registry_book::entry& held) { book.remove_unit(held, key); });
        return refuse("removed by on_resume");
    }
    if (action == resume_action::skip) {
        with_entry([&](registry_book::entry& held) {
            book.update(held, [](persisted_unit& kept) {
                kept.status = static_cast<std::uint32_t>(unit_status::stopped_graceful);
            });
        });
        return refuse("skipped by on_resume");
    }
    next_order_ = record.order;
    try {
        do_start_child(candidate.spec);
        return true;
    } catch (const std::exception& failure) {
        detail::report(report_kind::crash, [&](report_line& line) {
            line << "supervisor '" << name() << "': child '" << key << "' could not be resumed: " << failure.what();
        });
        return refuse(failure.what());
    }
}

} // namespace detail
} // namespace keepsake
