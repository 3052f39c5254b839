// keepsake/detail/unit_worker.hpp: the worker's life of a unit (declared
// in detail/unit_core.hpp): each (re)start and the state it is handed, the
// registry's say (crash thresholds, the rollback ladder), serving and
// committing, crashes and the restart in place.
#pragma once

#include "keepsake/detail/side_stack.hpp"
#include "keepsake/detail/unit_core.hpp"

namespace keepsake {
namespace detail {

template <class State, class Handler>
void unit_core<State, Handler>::hand_over_state(std::uint64_t number) {
    const bool first = !handed_over_once_;  // the first start of this core: recover from the store too
    if (!keeper_) attach_keeper();
    handed_over_once_ = true;
    // Recorded before the restore and the init hook run: a fatal signal in
    // either is then blamed on this start (the record names this run).
    if (restarts_this_instance_ != 0) registration_.restarted_in_place();
    else registration_.started(placement_ ? *placement_ : unplaced, spec_->type, spec_->restart, lifecycle());
    served_since_start_ = false;
    start_info info;
    info.instance = number;
    info.restarts = restarts_this_instance_;
    if (first && spec_->recover_from != nullptr) {
        recovered<State> found = recover_and_publish();
        for (const std::string& problem : found.problems)
            publish(event_kind::recovery_problem, exit_kind::normal, problem);
        state_ = std::move(found.value);
        info.source = found.source;
        info.generation = found.generation;
        info.restored = found.source != recovery_source::initial;
    } else if (auto found = restore_for_start()) {
        info.generation = found->generation;
        info.restored = true;
        info.source = recovery_source::shared_memory;
    } else {
        state_ = initial_state();
    }
    generation_.store(keeper_->generation(), std::memory_order_relaxed);
    stopping_itself_.store(false, std::memory_order_relaxed);
    dirty_ = false;
    if (spec_->init) {
        running_scope running(registration_.entry());
        spec_->init(state_, info);
        dirty_ = true;
    }
    uncommitted_messages_ = 0;
    if (spec_->commit.when == commit_policy::mode::interval) last_commit_at_ = runtime_.clock().now();
    last_committed_.reset();  // the init may have changed state_: the next commit reads the keeper's
}

template <class State, class Handler>
std::optional<restore_info> unit_core<State, Handler>::restore_for_start() {
    const std::uint64_t newest = keeper_->generation();
    const std::uint32_t steps = registration_.rollback_steps(name(), newest, spec_->rollback_after);
    if (steps == 0) return keeper_->restore_into(state_);
    const bool first_step = registration_.rolled_back_from() != newest;
    registration_.rolled_back(first_step ? keeper_->committed_record(newest) : std::optional<record>(), newest);
    std::optional<restore_info> found;
    for (std::uint64_t below = newest, step = 0; step < steps; ++step, below = found->generation)
        if (!(found = keeper_->restore_older_than(below, state_))) break;
    const std::string told = "crashed " + std::to_string(registration_.crashes_at(name(), newest)) +
                             " times in a row at start from generation " + std::to_string(newest) + " (kept as ks:s/" +
                             name() + "): started from " +
                             (found ? "generation " + std::to_string(found->generation) : "the initial state");
    publish(event_kind::rolled_back, exit_kind::crashed, told);
    detail::report(report_kind::crash, [&](report_line& line) { line << "unit '" << name() << "' " << told; });
    return found;
}

template <class State, class Handler>
void unit_core<State, Handler>::check_registry_at_start() {
    std::optional<std::string> refused = registration_.check_at_start(segment_to_use(), name(), policy(), [&] {
        if (!keeper_) attach_keeper();
        return keeper_->generation();
    });
    if (crash_notes_) crash_notes_->refused.reset();
    if (!refused) return;
    const std::string& kept = *(made_crash_notes().refused = std::move(*refused));
    publish(event_kind::permanently_crashed, exit_kind::crashed, kept);
    throw ignore_start(kept);
}

template <class State, class Handler>
bool unit_core<State, Handler>::note_crash(crash_kind kind, std::string_view what, bool restart_likely) {
    // At start: before the first message after a (re)start, where a state
    // that crashes its worker shows (what the rollback ladder counts).
    const crash_outcome outcome = registration_.note_crash(kind, what, generation_.load(std::memory_order_relaxed),
                                                           !served_since_start_, crash_threshold_of(*spec_),
                                                           restart_likely);
    if (outcome.breaker_opened) {
        publish_by(name(), event_kind::circuit_open, spec_->type, 0, exit_kind::crashed, what);
        detail::report(report_kind::crash, [&](report_line& line) {
            line << "unit type '" << spec_->type << "': circuit breaker open (new starts refused for a cooldown)";
        });
    }
    if (!outcome.poisoned) return false;
    publish(event_kind::permanently_crashed, exit_kind::crashed, what);
    detail::report(report_kind::give_up, [&](report_line& line) {
        line << "unit '" << name() << "' is permanently crashed; last crash: " << what;
    });
    return true;
}

template <class State, class Handler>
std::uint64_t unit_core<State, Handler>::commit_now() {
    const bool watched = state_changed_.any();
    if (watched && !last_committed_) last_committed_ = std::make_unique<State>(committed_state());
    const std::uint64_t generation = keeper_->commit(state_);
    dirty_ = false;
    uncommitted_messages_ = 0;
    bump(commits_);
    generation_.store(generation, std::memory_order_relaxed);
    if (spec_->commit.when == commit_policy::mode::interval) last_commit_at_ = runtime_.clock().now();
    if (watched) {
        state_changed_.notify(*last_committed_, state_);
        *last_committed_ = state_;
    } else {
        last_committed_.reset();  // stale by the time a listener comes
    }
    return generation;
}

template <class State, class Handler>
void unit_core<State, Handler>::after_message(bool read_only) {
    bump(messages_);
    served_since_start_ = true;
    if (read_only) return;
    dirty_ = true;
    ++uncommitted_messages_;
    switch (spec_->commit.when) {
    case commit_policy::mode::every_message: commit_now(); break;
    case commit_policy::mode::every_n:
        if (uncommitted_messages_ >= spec_->commit.n) commit_now();
        break;
    case commit_policy::mode::interval:
        if (runtime_.clock().now() - last_commit_at_ >= spec_->commit.period) commit_now();
        break;
    case commit_policy::mode::manual: break;
    }
}

template <class State, class Handler>
typename unit_core<State, Handler>::served unit_core<State, Handler>::serve_mailbox() {
    auto stop_or_end = [&] { return ended_in_turn() || (context_stop_requested() && !mailbox_.lent()); };
    for (;;) {
        if (ended_in_turn()) return served::ended_in_turn;
        if (mailbox_.pop(*inflight_)) {
            if (!serve_inflight()) return served::crashed;
            finish_inflight();
            if (context_stop_requested()) return served::stopped;
            continue;
        }
        if (context_stop_requested() && !mailbox_.lent()) return served::stopped;
        mailbox_.wait_until(runtime_.clock(), forever, stop_or_end, spec_->direct_calls);
    }
}

template <class State, class Handler>
std::optional<exit_reason> unit_core<State, Handler>::on_crash(std::string_view what, crash_kind kind) {
    bump(crashes_);
    // Decided first, so the caller of the crashing call is told whether
    // the unit restarts.
    const bool stopping = context_stop_requested();
    const bool poisoned = note_crash(kind, what, !stopping);
    const bool gives_up = !stopping && (poisoned || !log_.allow(runtime_.clock().now(), spec_->intensity));
    crash_inflight(what, !stopping && !gives_up);
    dirty_ = false;
    if (terminated_.any()) terminated_.notify(exit_reason{exit_kind::crashed, std::string(what)}, state_);
    publish(event_kind::exited, exit_kind::crashed, what);
    detail::report(report_kind::crash, [&](report_line& line) {
        line << "unit '" << name() << "' crashed (restarts so far: " << restarts_.load(std::memory_order_relaxed)
             << "): " << what;
    });
    if (stopping) return exit_reason{exit_kind::shutdown, "stopped while restarting"};
    if (poisoned || gives_up) registration_.restart_not_taken();
    if (poisoned) {
        registration_.set_status(unit_status::permanently_crashed);
        return exit_reason{exit_kind::crashed, "permanently crashed; last crash: " + std::string(what)};
    }
    if (gives_up) {
        publish(event_kind::gave_up, exit_kind::crashed, what);
        detail::report(report_kind::give_up, [&](report_line& line) {
            line << "unit '" << name() << "' gave up: more than " << std::uint64_t{spec_->intensity.max_restarts}
                 << " restarts in " << spec_->intensity.period << "; last crash: " << what;
        });
        return exit_reason{exit_kind::crashed, "gave up after " + std::to_string(spec_->intensity.max_restarts) +
                                                   " restarts within the period; last crash: " + std::string(what)};
    }
    ++restarts_this_instance_;
    bump(restarts_);
    publish(event_kind::restarted, exit_kind::crashed, what);
    return std::nullopt;
}

template <class State, class Handler>
exit_reason unit_core<State, Handler>::run_instance(std::uint64_t number) {
    restarts_this_instance_ = 0;
    log_.clear();
    // The start's deep calls on a side stack, the first two in one go: the
    // worker's own stack keeps only the pages serving touches
    // (detail/side_stack.hpp). A refusal of the registry's leaves here; a
    // throw of the first hand-over is met below as any start's.
    bool handed_over = false;
    std::exception_ptr hand_over_failed;
    on_side_stack(runtime_.side_stacks(), [&] {
        check_registry_at_start();
        try {
            hand_over_state(number);
            handed_over = true;
        } catch (...) {
            hand_over_failed = std::current_exception();
        }
    });
    for (;;) {
        std::optional<exit_reason> ended;
        try {
            if (hand_over_failed) std::rethrow_exception(std::exchange(hand_over_failed, nullptr));
            if (!std::exchange(handed_over, false))
                on_side_stack(runtime_.side_stacks(), [&] { hand_over_state(number); });
            if (!started()) report_started();
            switch (run_body()) {
            case served::crashed: ended = on_crash(crash_reason()); break;
            case served::ended_in_turn:
                ended = std::move(crash_notes_->ended_in_turn);
                crash_notes_->ended_in_turn.reset();
                break;
            case served::stopped: ended = stop_reason(); break;
            }
        } catch (const forced_stop&) {
            fail_inflight(not_running_failure());
            ended = exit_reason{exit_kind::killed, "forced to stop after its shutdown timeout"};
        } catch (const ignore_start& declined) {
            if (!started()) throw;  // the start itself is declined
            ended = exit_reason{exit_kind::normal, declined.reason()};
        } catch (const std::exception& thrown) {
            if (!started()) {
                note_crash(crash_kind::start_failed, thrown.what());  // the rollback ladder and thresholds see it
                throw;
            }
            ended = on_crash(thrown.what());
        } catch (...) {
            if (!started()) throw;
            ended = on_crash("an exception not derived from std::exception");
        }
        if (ended) {
            finish_instance(*ended);
            return std::move(*ended);
        }
    }
}

template <class State, class Handler>
void unit_core<State, Handler>::finish_instance(const exit_reason& reason) {
    if (reason.is_normal() && dirty_) {
        try {
            commit_now();
        } catch (const std::exception& failure) {
            log(spdlog::level::err, [&] {
                return "unit '" + name() + "': the commit at stop failed: " + failure.what();
            });
        }
    }
    if (reason.kind != exit_kind::crashed && terminated_.any()) terminated_.notify(reason, state_);
}

} // namespace detail
} // namespace keepsake
