// keepsake/detail/unit_registration.hpp: what a unit writes into the
// registry of its segment, and the decisions the registry makes for it
// (poison-state protection). Kept beside the unit core so the core only
// calls it at its start, crash and end.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "keepsake/crash_reports.hpp"
#include "keepsake/detail/fatal_signals.hpp"
#include "keepsake/detail/registry_book.hpp"
#include "keepsake/detail/type_breaker.hpp"
#include "keepsake/restart_policy.hpp"
#include "keepsake/segment.hpp"

namespace keepsake::detail {

// Where a supervisor placed a child (unset for a root unit).
// Where a supervisor placed a unit. `parent` is the supervisor's own name:
// read only while it starts the unit's instance (it is waiting there), so
// the unit keeps a pointer, not a copy.
struct placement {
    const std::string* parent = nullptr;
    bool dynamic = false;
    std::uint64_t order = 0;
};
inline const placement unplaced{};  // a unit no supervisor placed

// What a unit's spec asks of the registry: made from the spec each time it
// is needed (many units share one spec; a copy in each would be 72 bytes
// a unit). Its type's breaker the registration keeps.
struct unit_policy {
    crash_threshold threshold = crash_threshold::off();
    std::uint32_t rollback_after = 0;
    store* recover_from = nullptr;  // its store, for its record after a reboot
    std::string_view store_prefix;  // the unit's spec's, which outlives the call
};

// What a crash led to.
struct crash_outcome {
    bool poisoned = false;        // the unit is permanently crashed now
    bool breaker_opened = false;  // its type's breaker opened just now
};

class unit_registration {
public:
    unit_registration() = default;
    explicit unit_registration(std::shared_ptr<type_breaker> breaker) : breaker_(std::move(breaker)) {}
    unit_registration(const unit_registration&) = delete;
    unit_registration& operator=(const unit_registration&) = delete;
    ~unit_registration() { detach(); }

    bool attached() const noexcept { return entry_ != nullptr; }
    // For running_scope: the record a fatal signal marks (null: none).
    unit_record_slots* entry() const noexcept { return entry_ != nullptr ? &entry_->record : nullptr; }

    void attach(const segment& where, const std::string& key) {
        if (entry_ != nullptr) return;
        book_ = registry_book::of(where.shared_impl());
        entry_ = &book_->attach(key);
    }

    void detach() noexcept {
        if (entry_ == nullptr) return;
        try {
            book_->release(*entry_);
        } catch (...) {
            // Releasing touches no shared memory: nothing to report.
        }
        entry_ = nullptr;
        book_.reset();
    }

    std::optional<persisted_unit> record() const { return entry_ != nullptr ? book_->read(*entry_) : std::nullopt; }

    unit_status status() const {
        auto found = record();
        return found ? static_cast<unit_status>(found->status) : unit_status::running;
    }

    // The first start of a unit in this process: if the run that last
    // started it died while it ran, that is a crash of it (a fatal signal
    // while its code ran always counts; a kill from outside counts with
    // count_process_kills). True if it is (now) permanently crashed.
    bool account_previous_run(const crash_threshold& threshold, std::uint64_t generation) {
        auto found = record();
        // A fatal signal marked it: whichever run that was, it died of it.
        const bool died_here = found && (found->flags & unit_flag_died_here) != 0 && found->run != book_->run();
        if (!found || static_cast<unit_status>(found->status) != unit_status::running ||
            (!died_here && !book_->died_with_previous_run(*found)))
            return status_is(found, unit_status::permanently_crashed);
        // The run's death is the segment's (its death log); a kill from
        // outside that does not count is not this unit's crash.
        if (book_->died_with_previous_run(*found)) book_->note_process_death();
        if (!died_here && !threshold.count_process_kills) return false;
        std::string reason = died_here ? "the process died of signal " + std::to_string(found->died_signal) + " (" +
                                             signal_name(static_cast<int>(found->died_signal)) + ") while this unit ran"
                                       : "the process died (killed from outside, or power lost) while this unit "
                                         "was running";
        // Not cached: with count_process_kills every unit of a resume after
        // a kill counts one, and most never crash again (a cache is 1.2 KiB
        // a unit).
        return crashed(died_here ? crash_kind::process_crashed : crash_kind::process_killed, reason, generation,
                       threshold, true, false, false);
    }

    // A restart of the worker in place (same instance, same run): counted
    // in the record's starts at its next write (every crash writes it), so
    // a crash and its restart cost one record write, not two.
    void restarted_in_place() noexcept {
        if (prepaid_start_) prepaid_start_ = false;  // the crash's write counted it
        else ++unwritten_starts_;
    }
    // The restart the crash's write counted did not come (the unit gave up,
    // or is permanently crashed): taken back at the next write.
    void restart_not_taken() noexcept {
        if (!prepaid_start_) return;
        prepaid_start_ = false;
        --unwritten_starts_;
    }

    // A start of the worker.
    void started(const placement& where, std::string_view type, restart_type restart, key_lifecycle lifecycle) {
        book_->update(*entry_, [&](persisted_unit& record) {
            record.starts = with_unwritten(record.starts);
            record.status = static_cast<std::uint32_t>(unit_status::running);
            record.flags = (record.flags & ~(unit_flag_died_here | unit_flag_dynamic)) |
                           (where.dynamic ? unit_flag_dynamic : 0u);
            record.died_signal = 0;
            record.restart = static_cast<std::uint32_t>(restart);
            record.lifecycle = static_cast<std::uint32_t>(lifecycle);
            record.order = where.order;
            record.run = book_->run();
            ++record.starts;
            copy_text(record.type, record.type_length, max_type_name, type);
            copy_text(record.parent, record.parent_length, max_parent_name,
                      where.parent != nullptr ? std::string_view(*where.parent) : std::string_view());
        });
    }

    // Records a crash; true if it makes the unit permanently crashed.
    // With `restart_likely`, the restart in place that should follow is
    // counted in the same write (restarted_in_place, restart_not_taken).
    // `cache`: see registry_book::record_crash.
    bool crashed(crash_kind kind, std::string_view reason, std::uint64_t generation, const crash_threshold& threshold,
                 bool at_start = true, bool restart_likely = false, bool cache = true) {
        const std::int32_t starts = unwritten_starts_ + (restart_likely ? 1 : 0);
        const bool poisoned =
            book_->record_crash(*entry_, kind, reason, generation, threshold, at_start, starts, cache);
        unwritten_starts_ = 0;
        prepaid_start_ = restart_likely;
        return poisoned;
    }

    // Crashes in a row, newest first, that happened at `generation` (no
    // commit since) and that the state may have caused: what the rollback
    // ladder counts. Kills from outside and forced stops are not counted.
    std::uint32_t crashes_at(const std::string& key, std::uint64_t generation) const {
        auto history = book_->history(key);
        if (!history) return 0;
        std::uint32_t in_a_row = 0;
        for (std::uint32_t step = 0; step < history->count; ++step) {
            const std::uint32_t index =
                static_cast<std::uint32_t>((history->next + crash_history_size - 1 - step) % crash_history_size);
            const persisted_crash& each = history->entries[index];
            const auto kind = static_cast<crash_kind>(each.kind & crash_kind_mask);
            if (kind == crash_kind::process_killed || kind == crash_kind::killed) continue;
            if (each.generation != generation) break;
            if ((each.kind & crash_at_start_bit) != 0) ++in_a_row;
        }
        return in_a_row;
    }

    // The ladder started the unit below `generation`, whose copy it kept.
    void rolled_back(const std::optional<keepsake::record>& skipped, std::uint64_t generation) {
        if (skipped) book_->keep_skipped(*skipped);
        book_->update(*entry_, [&](persisted_unit& record) {
            record.starts = with_unwritten(record.starts);
            record.rolled_back_from = generation;
        });
    }

    std::uint64_t rolled_back_from() const {
        auto found = record();
        return found ? found->rolled_back_from : 0;
    }

    void set_status(unit_status status) {
        if (entry_ == nullptr) return;
        book_->update(*entry_, [&](persisted_unit& record) {
            record.starts = with_unwritten(record.starts);
            // Only clear_crashed takes a unit out of permanently_crashed.
            if (static_cast<unit_status>(record.status) != unit_status::permanently_crashed)
                record.status = static_cast<std::uint32_t>(status);
        });
    }

    // Deletes the unit's state key (nobody may hold it), record and history.
    void remove_all(const std::string& state_key) {
        if (entry_ != nullptr) book_->remove_unit(*entry_, state_key);
    }

    static const char* signal_name(int number) noexcept {
        switch (number) {
        case SIGSEGV: return "SIGSEGV";
        case SIGBUS: return "SIGBUS";
        case SIGILL: return "SIGILL";
        case SIGFPE: return "SIGFPE";
        case SIGABRT: return "SIGABRT";
        }
        return "signal";
    }

    // Before each instance. The first: a new unit of a type whose breaker
    // is open fails (errc::circuit_open); then the record is attached, and
    // a death of the previous run is accounted (generation_now() attaches
    // the keeper and says its newest generation). Returns why the registry
    // declines the start (permanently crashed), or nothing.
    template <class GenerationNow>
    std::optional<std::string> check_at_start(const segment& where, const std::string& key, const unit_policy& policy,
                                              GenerationNow&& generation_now) {
        const bool first = !attached();
        if (first) {
            if (breaker_) breaker_->check();
            attach(where, key);
            import_after_reboot(policy);
        }
        ensure_signal_stack();  // this thread's, once
        const bool poisoned = first ? account_previous_run(policy.threshold, generation_now())
                                    : status() == unit_status::permanently_crashed;
        if (!poisoned) return std::nullopt;
        return "unit '" + key + "' is permanently_crashed (" + std::to_string(policy.threshold.crashes) +
               " crashes within its crash threshold's window): it is not started until cleared with "
               "keepsake::clear_crashed or `keepsake-inspect clear`; its state and crash history are kept";
    }

    // A crash of the unit (its generation then): its type's breaker and,
    // once attached, its record and threshold.
    // Never throws: a registry that cannot record the crash (a full
    // segment) is reported, and the unit goes on as without a registry.
    crash_outcome note_crash(crash_kind kind, std::string_view what, std::uint64_t generation, bool at_start,
                             const crash_threshold& threshold, bool restart_likely = false) noexcept {
        crash_outcome outcome;
        try {
            outcome.breaker_opened = breaker_ && breaker_->note_crash();
            if (attached()) outcome.poisoned = crashed(kind, what, generation, threshold, at_start, restart_likely);
        } catch (const std::exception& failure) {
            report(report_kind::store_failure, [&](report_line& line) {
                line << "the unit registry could not record a crash: " << failure.what();
            });
        } catch (...) {
        }
        return outcome;
    }

    // How many steps down the rollback ladder the next start goes (0: none).
    std::uint32_t rollback_steps(const std::string& key, std::uint64_t newest, std::uint32_t rollback_after) const {
        if (rollback_after == 0 || !attached() || newest == 0) return 0;
        return crashes_at(key, newest) / rollback_after;
    }

private:
    std::shared_ptr<type_breaker> breaker_;  // its type's, if registered
    std::int32_t unwritten_starts_ = 0;  // restarts in place not yet in the record (or taken back)
    bool prepaid_start_ = false;         // the last crash's write counted the restart after it

    std::uint32_t with_unwritten(std::uint32_t starts) noexcept {
        const std::int64_t sum = static_cast<std::int64_t>(starts) + std::exchange(unwritten_starts_, 0);
        return static_cast<std::uint32_t>(sum < 0 ? 0 : sum);
    }

    // A unit recovering from a store finds its record and crash history
    // there after a reboot (its thresholds count across it). A store it
    // cannot read leaves the registry to start afresh: recovery says why.
    void import_after_reboot(const unit_policy& policy) noexcept {
        if (policy.recover_from == nullptr) return;
        try {
            book_->import_unit_into(*entry_, *policy.recover_from, std::string(policy.store_prefix));
        } catch (...) {
        }
    }
    std::shared_ptr<registry_book> book_;
    registry_book::entry* entry_ = nullptr;

    static bool status_is(const std::optional<persisted_unit>& record, unit_status status) noexcept {
        return record && static_cast<unit_status>(record->status) == status;
    }
};

} // namespace keepsake::detail
