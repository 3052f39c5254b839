// keepsake/exporter-inl.hpp: the exporter's code. Included by exporter.hpp
// in header-only mode; compiled once by src/keepsake.cpp in compiled mode.
#pragma once

#ifndef KEEPSAKE_HEADER_ONLY
#include "keepsake/exporter.hpp"
#endif

#include <unordered_map>

#include "keepsake/crash_reports.hpp"
#include "keepsake/detail/committers.hpp"
#include "keepsake/detail/snapshot.hpp"
#include "keepsake/log.hpp"

namespace keepsake {
namespace detail {

// `from + wait`, saturating at the clock's end instead of overflowing (a
// timeout of milliseconds::max() means "no time limit"); a negative wait is
// `from`.
inline std::chrono::steady_clock::time_point deadline_after(std::chrono::steady_clock::time_point from,
                                                            std::chrono::milliseconds wait) noexcept {
    using clock = std::chrono::steady_clock;
    if (wait.count() <= 0) return from;
    // Compared in milliseconds: converting `wait` to the clock's
    // nanoseconds could itself overflow.
    const auto room = std::chrono::duration_cast<std::chrono::milliseconds>(clock::time_point::max() - from);
    return wait >= room ? clock::time_point::max() : from + wait;
}

} // namespace detail

KEEPSAKE_INLINE exporter::exporter(const segment& source, store& target, exporter_options options)
    : segment_(source.shared_impl()), store_(target), options_(std::move(options)) {
    if (options_.interval < std::chrono::milliseconds(1))
        throw error(errc::invalid_argument, "exporter_options::interval is " + std::to_string(options_.interval.count()) +
                                                " ms; it must be at least 1 ms (a shorter one would keep a core "
                                                "busy): use a long interval and flush() to export on demand");
    if (options_.batch_size == 0 || options_.retry_min.count() <= 0 || options_.retry_max < options_.retry_min)
        throw error(errc::invalid_argument,
                    "exporter_options: batch_size must be at least 1, and 0 < retry_min <= retry_max");
    thread_ = std::thread([this] { run_guarded(); });
    // A unit deleted while this exporter runs (key lifecycle,
    // terminate_and_delete) is forgotten here, so its store records go
    // too. Its registry record leaves the store first: a kill between the
    // two removals then leaves the segment's (which says `deleted`), never
    // the store's alone, which a resume after a reboot would bring back.
    book_ = detail::registry_book::of(segment_);
    forgetter_id_ = book_->set_forgetter([this](const std::string& key) {
        if (detail::has_prefix(key, detail::unit_record_prefix)) store_.remove(store_key(key));
        return forget(key);
    });
}

// Unless stop() was called, the units committing into the segment stop
// first (their runtime's stop), so their last commits are in the last pass,
// whether the runtime was declared before or after this exporter.
KEEPSAKE_INLINE exporter::~exporter() {
    book_->clear_forgetter(forgetter_id_);
    try {
        bool stop_called = false;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_called = stopping_;
        }
        if (!stop_called) detail::committers::instance().stop_units_in(segment_.get());
        stop(options_.stop_timeout);
    } catch (...) {
        // stop() only throws if the thread cannot be joined; nothing to add.
    }
}

KEEPSAKE_INLINE bool exporter::flush(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (stopping_ || stopped_)
        throw error(errc::not_running, "the exporter to " + store_.describe() +
                                           " is stopped; start a new one to export again");
    const std::uint64_t ticket = ++requested_;
    wake_.notify_all();
    done_.wait_until(lock, detail::deadline_after(std::chrono::steady_clock::now(), timeout),
                     [&] { return completed_ >= ticket || stopped_; });
    if (completed_ >= ticket && refused_keys_ == 0) return true;
    const std::size_t refused = refused_keys_;
    const bool ended = stopped_;
    detail::log(spdlog::level::warn, [&] {
        if (refused != 0 && !ended)
            return "exporter to " + store_.describe() + ": flush: the store refused the newest state of " +
                   std::to_string(refused) + " key(s), so it does not hold what was committed (see the "
                   "stale_generation / record_rejected events for which keys and what to do)";
        if (ended)
            return "exporter to " + store_.describe() + ": flush: the exporter thread has ended (see the error "
                   "logged); start a new exporter to export again";
        return "exporter to " + store_.describe() + ": flush ran out of time after " +
               std::to_string(timeout.count()) + " ms; the export goes on in the background";
    });
    return false;
}

KEEPSAKE_INLINE bool exporter::stop(std::chrono::milliseconds timeout) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!stopping_) {
            stopping_ = true;
            stop_ticket_ = ++requested_;  // only a pass that begins now counts
            stop_deadline_ = detail::deadline_after(std::chrono::steady_clock::now(), timeout);
        }
        wake_.notify_all();
    }
    {
        // A second caller waits here for the first one's join.
        std::lock_guard<std::mutex> join_guard(join_mutex_);
        if (thread_.joinable()) thread_.join();
    }
    std::lock_guard<std::mutex> lock(mutex_);
    return stop_result_;
}

KEEPSAKE_INLINE bool exporter::forget(const std::string& key) {
    const auto began = std::chrono::steady_clock::now();
    bool in_memory = false;
    bool in_store = false;
    {
        std::lock_guard<std::mutex> guard(pass_mutex_);
        if (const auto view = segment_->entry_view_of(key))
            if (view->index < exported_.size()) exported_[view->index] = exported_key{};
        in_memory = segment_->remove_key(key);
        in_store = store_.remove(store_key(key));
        count_refused_keys();
    }
    if (listened())
        detail::publish_forgotten(*options_.events, key, in_memory, in_store, detail::took_since(began),
                                  steady_clock().now());
    return in_memory || in_store;
}

KEEPSAKE_INLINE exporter_stats exporter::stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
}

KEEPSAKE_INLINE void exporter::run() {
    std::unique_lock<std::mutex> lock(mutex_);
    bool incomplete = false;
    bool clean = false;
    for (;;) {
        const bool was_stopping = stopping_;
        const bool backing_off = failures_in_row_ != 0 || incomplete;
        // A flush or stop starts a pass at once, unless a failing store is
        // being given its backoff.
        wake_.wait_until(lock, next_pass_time(incomplete), [&] {
            return stopping_ != was_stopping || (!backing_off && (stopping_ || requested_ > completed_));
        });
        if (stopping_ != was_stopping && backing_off) continue;  // the wait now ends at the deadline
        if (out_of_time()) break;
        const std::uint64_t ticket = requested_;
        const auto began = std::chrono::steady_clock::now();
        lock.unlock();
        const pass_result result = guarded_pass();
        lock.lock();
        incomplete = result == pass_result::incomplete;
        if (result != pass_result::complete) continue;
        failures_in_row_ = 0;
        completed_ = ticket;
        ++stats_.passes;
        stats_.covered_until = began;
        done_.notify_all();
        clean = stopping_ && completed_ >= stop_ticket_;
        if (clean) break;
    }
    if (!clean) {
        lock.unlock();
        report_timeout();
        lock.lock();
    } else if (refused_keys_ != 0) {
        const std::size_t refused = refused_keys_;
        detail::log(spdlog::level::err, [&] {
            return "exporter to " + store_.describe() + ": stopped with the newest state of " +
                   std::to_string(refused) + " key(s) refused by the store (see the stale_generation / "
                   "record_rejected events); it stays in shared memory";
        });
    }
    stop_result_ = clean && refused_keys_ == 0;
    stopped_ = true;
    done_.notify_all();
}

// The thread's body: nothing may escape a std::thread (it would end the
// program). run() handles a failing pass itself; this is the last resort.
KEEPSAKE_INLINE void exporter::run_guarded() noexcept {
    try {
        run();
        return;
    } catch (const std::exception& thrown) {
        try {
            detail::log(spdlog::level::err, [&] {
                return std::string("exporter: its thread ended on an exception: ") + thrown.what() +
                       "; what was not exported stays in shared memory";
            });
        } catch (...) {
        }
    } catch (...) {
    }
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_result_ = false;
        stopped_ = true;
    }
    done_.notify_all();
}

// A pass that throws (out of memory, a store's describe()...) is a failed
// pass: reported, and retried after a backoff, like a store failure.
KEEPSAKE_INLINE exporter::pass_result exporter::guarded_pass() noexcept {
    try {
        return run_pass();
    } catch (const std::exception& thrown) {
        note_pass_failure(thrown.what());
    } catch (...) {
        note_pass_failure("an exception that is not a std::exception");
    }
    return pass_result::failed;
}

KEEPSAKE_INLINE void exporter::note_pass_failure(const char* what) noexcept {
    export_event event;
    event.kind = export_event_kind::pass_failed;
    {
        // First, so the next pass waits for its backoff even if reporting fails too.
        std::lock_guard<std::mutex> lock(mutex_);
        ++stats_.failures;
        event.attempt = ++failures_in_row_;
        event.retry_in = backoff(event.attempt);
    }
    try {
        {
            std::lock_guard<std::mutex> guard(pass_mutex_);
            batch_.clear();  // not recycled: that may allocate
            batch_owners_.clear();
        }
        event.message = std::string("an export pass failed: ") + what + " (attempt " +
                        std::to_string(event.attempt) + ", retrying in " + std::to_string(event.retry_in.count()) +
                        " ms); what it did not export stays in shared memory";
        report(event);
    } catch (...) {
        // Out of memory even for the report: the failure is counted, and
        // the pass is retried after its backoff all the same.
    }
}

KEEPSAKE_INLINE void exporter::report_timeout() {
    export_event event;
    event.kind = export_event_kind::timed_out;
    event.records = pending_keys();
    event.message = "stop ran out of time with " + std::to_string(event.records) +
                    " key(s) not exported to " + store_.describe() +
                    "; their newest state stays in shared memory and is exported by the next run";
    report(event);
}

KEEPSAKE_INLINE std::chrono::milliseconds exporter::backoff(std::uint32_t attempt) const {
    std::chrono::milliseconds wait = options_.retry_min;
    for (std::uint32_t i = 1; i < attempt && wait < options_.retry_max; ++i)
        wait = wait > options_.retry_max / 2 ? options_.retry_max : wait * 2;  // never overflows
    return std::min(wait, options_.retry_max);
}

KEEPSAKE_INLINE std::chrono::steady_clock::time_point exporter::next_pass_time(bool incomplete) const {
    // A key whose commits kept outrunning its copy is tried again soon.
    const std::chrono::milliseconds wait = failures_in_row_ != 0 ? backoff(failures_in_row_)
                                           : incomplete          ? std::chrono::milliseconds(1)
                                                                 : options_.interval;
    const auto due = detail::deadline_after(std::chrono::steady_clock::now(), wait);
    return stopping_ ? std::min(due, stop_deadline_) : due;
}

KEEPSAKE_INLINE bool exporter::out_of_time() const {
    return stopping_ && std::chrono::steady_clock::now() >= stop_deadline_;
}

KEEPSAKE_INLINE exporter::pass_result exporter::run_pass() {
    std::lock_guard<std::mutex> guard(pass_mutex_);
    ++pass_number_;
    const std::vector<detail::segment_impl::entry_view> views = segment_->entry_views();
    // Sized before any batch_owners_ pointer into it is taken.
    for (const auto& view : views)
        if (view.index >= exported_.size()) exported_.resize(view.index + 1);
    // Side tables go out with their keeper's state ('<key>::<name>'), as one record.
    std::unordered_map<std::string, std::vector<detail::table_area>> tables_of;
    for (const auto& view : views) {
        if (view.kind != detail::entry_kind::table) continue;
        const std::size_t split = view.key.rfind("::");
        if (split != std::string::npos)
            tables_of[view.key.substr(0, split)].push_back(
                detail::table_area{view.key.substr(split + 2), view.area, view.index, view.nonce});
    }
    pass_result result = pass_result::complete;
    for (const auto& view : views) {
        if (view.kind != detail::entry_kind::state) continue;
        auto tables = tables_of.find(view.key);
        const pass_result key_result = export_key(view, tables == tables_of.end() ? nullptr : &tables->second);
        if (key_result == pass_result::failed || key_result == pass_result::abandoned) return key_result;
        if (key_result == pass_result::incomplete) result = key_result;
    }
    if (!batch_.empty() && !put_batch()) return pass_result::failed;
    // Keys gone from the segment are forgotten (memory follows the directory).
    for (exported_key& known : exported_)
        if (known.seen_in_pass != pass_number_) known = exported_key{};
    count_refused_keys();
    return result;
}

KEEPSAKE_INLINE exporter::pass_result exporter::export_key(const detail::segment_impl::entry_view& view,
                                                           std::vector<detail::table_area>* tables) {
    exported_key& known = exported_[view.index];
    if (known.nonce != view.nonce) known = exported_key{view.nonce, 0, 0, 0};
    known.seen_in_pass = pass_number_;
    batch_.push_back(take_spare());
    // A generation the store refused is not copied again; a newer one is.
    const std::uint64_t newer_than = std::max(known.generation, known.refused);
    const detail::snapshot_status status =
        tables ? detail::snapshot_group(view.area, *tables, newer_than, batch_.back(), group_scratch_,
                                        [&](std::uint32_t index, std::uint64_t nonce) {
                                            return segment_->current_area(index, nonce);
                                        })
               : detail::snapshot_newest(view.area, newer_than, batch_.back());
    if (status != detail::snapshot_status::copied) {
        spare_.push_back(std::move(batch_.back()));
        batch_.pop_back();
        return status == detail::snapshot_status::busy ? pass_result::incomplete : pass_result::complete;
    }
    batch_.back().key.assign(options_.prefix).append(view.key);
    batch_owners_.push_back(&known);
    if (batch_.size() < options_.batch_size) return pass_result::complete;
    if (abandoning()) return pass_result::abandoned;
    return put_batch() ? pass_result::complete : pass_result::failed;
}

KEEPSAKE_INLINE bool exporter::abandoning() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!out_of_time()) return false;
    recycle_batch();
    return true;
}

// Records go back to a spare pool (at most one batch), so their key and
// byte buffers are reused rather than allocated per record.
KEEPSAKE_INLINE record exporter::take_spare() {
    if (spare_.empty()) return record{};
    record reused = std::move(spare_.back());
    spare_.pop_back();
    return reused;
}

KEEPSAKE_INLINE void exporter::recycle_batch() {
    for (record& r : batch_) spare_.push_back(std::move(r));
    batch_.clear();
    batch_owners_.clear();
}

KEEPSAKE_INLINE std::size_t exporter::pending_keys() {
    std::lock_guard<std::mutex> guard(pass_mutex_);
    std::size_t pending = 0;
    for (const auto& view : segment_->entry_views()) {
        if (view.kind != detail::entry_kind::state) continue;
        detail::slot_snapshot newest;
        if (!detail::newest_published(view.area, newest)) continue;
        const exported_key* known = view.index < exported_.size() ? &exported_[view.index] : nullptr;
        const bool exported = known != nullptr && known->nonce == view.nonce &&
                              known->generation >= newest.generation;
        if (!exported) ++pending;
    }
    return pending;
}

KEEPSAKE_INLINE bool exporter::listened() const noexcept {
    return options_.events != nullptr && options_.events->any();
}

// Stamped with the steady clock: an exporter has no runtime.
KEEPSAKE_INLINE void exporter::publish_on_bus(keepsake::event what) const {
    what.at = steady_clock().now();
    try {
        options_.events->publish(what);
    } catch (const std::exception& thrown) {
        detail::log(spdlog::level::err,
                    [&] { return std::string("exporter: an event bus subscriber threw: ") + thrown.what(); });
    }
}

KEEPSAKE_INLINE void exporter::publish_failure(const export_event& happened) const {
    const std::string target = store_.describe();
    keepsake::event what;
    what.kind = happened.kind == export_event_kind::timed_out ? event_kind::export_timed_out
                                                              : event_kind::export_failed;
    what.supervisor = "exporter";
    what.child = target;
    what.instance = happened.attempt;
    what.reason = happened.message;
    publish_on_bus(what);
}

KEEPSAKE_INLINE void exporter::report(const export_event& event) const {
    const auto level = event.kind == export_event_kind::exported ? spdlog::level::debug
                       : event.kind == export_event_kind::store_failed || event.kind == export_event_kind::pass_failed
                           ? spdlog::level::warn
                           : spdlog::level::err;
    detail::log(level, [&] { return std::string("exporter: ") + to_string(event.kind) + ": " + event.message; });
    if (event.kind != export_event_kind::exported)
        detail::report(report_kind::store_failure, [&](detail::report_line& line) {
            line << "exporter: " << to_string(event.kind) << ": " << event.message;
        });
    if (listened() && event.kind != export_event_kind::exported) publish_failure(event);
    if (!options_.on_event) return;
    try {
        options_.on_event(event);
    } catch (const std::exception& thrown) {
        detail::log(spdlog::level::err,
                    [&] { return std::string("exporter: the on_event callback threw: ") + thrown.what(); });
    } catch (...) {
        detail::log(spdlog::level::err, [] { return std::string("exporter: the on_event callback threw"); });
    }
}

} // namespace keepsake

#include "keepsake/detail/exporter_batches-inl.hpp"
