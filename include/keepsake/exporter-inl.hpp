// keepsake/exporter-inl.hpp: the exporter's code. Included by exporter.hpp
// in header-only mode; compiled once by src/keepsake.cpp in compiled mode.
#pragma once

#ifndef KEEPSAKE_HEADER_ONLY
#include "keepsake/exporter.hpp"
#endif

#include "keepsake/detail/snapshot.hpp"
#include "keepsake/log.hpp"

namespace keepsake {

KEEPSAKE_INLINE exporter::exporter(const segment& source, store& target, exporter_options options)
    : segment_(source.shared_impl()), store_(target), options_(std::move(options)) {
    if (options_.batch_size == 0 || options_.interval.count() < 0 || options_.retry_min.count() <= 0 ||
        options_.retry_max < options_.retry_min)
        throw error(errc::invalid_argument, "exporter_options: batch_size must be at least 1, interval at least 0, "
                                            "and 0 < retry_min <= retry_max");
    thread_ = std::thread([this] { run(); });
}

KEEPSAKE_INLINE exporter::~exporter() {
    try {
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
    done_.wait_for(lock, timeout, [&] { return completed_ >= ticket || stopped_; });
    if (completed_ >= ticket) return true;
    detail::log(spdlog::level::warn, [&] {
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
            stop_deadline_ = std::chrono::steady_clock::now() + timeout;
        }
        wake_.notify_all();
    }
    if (thread_.joinable()) thread_.join();
    std::lock_guard<std::mutex> lock(mutex_);
    return stop_result_;
}

KEEPSAKE_INLINE bool exporter::forget(const std::string& key) {
    std::lock_guard<std::mutex> guard(pass_mutex_);
    const bool in_memory = segment_->remove_key(key);
    const bool in_store = store_.remove(store_key(key));
    exported_.erase(key);
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
        lock.unlock();
        const pass_result result = run_pass();
        lock.lock();
        incomplete = result == pass_result::incomplete;
        if (result != pass_result::complete) continue;
        failures_in_row_ = 0;
        completed_ = ticket;
        ++stats_.passes;
        done_.notify_all();
        clean = stopping_ && completed_ >= stop_ticket_;
        if (clean) break;
    }
    if (!clean) {
        lock.unlock();
        report_timeout();
        lock.lock();
    }
    stop_result_ = clean;
    stopped_ = true;
    done_.notify_all();
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
    for (std::uint32_t i = 1; i < attempt && wait < options_.retry_max; ++i) wait *= 2;
    return std::min(wait, options_.retry_max);
}

KEEPSAKE_INLINE std::chrono::steady_clock::time_point exporter::next_pass_time(bool incomplete) const {
    // A key whose commits kept outrunning its copy is tried again soon.
    const std::chrono::milliseconds wait = failures_in_row_ != 0 ? backoff(failures_in_row_)
                                           : incomplete          ? std::chrono::milliseconds(1)
                                                                 : options_.interval;
    const auto due = std::chrono::steady_clock::now() + wait;
    return stopping_ ? std::min(due, stop_deadline_) : due;
}

KEEPSAKE_INLINE bool exporter::out_of_time() const {
    return stopping_ && std::chrono::steady_clock::now() >= stop_deadline_;
}

KEEPSAKE_INLINE exporter::pass_result exporter::run_pass() {
    std::lock_guard<std::mutex> guard(pass_mutex_);
    ++pass_number_;
    const std::vector<detail::segment_impl::entry_view> views = segment_->entry_views();
    pass_result result = pass_result::complete;
    for (const auto& view : views) {
        const pass_result key_result = export_key(view);
        if (key_result == pass_result::failed || key_result == pass_result::abandoned) return key_result;
        if (key_result == pass_result::incomplete) result = key_result;
    }
    if (!batch_.empty() && !put_batch()) return pass_result::failed;
    // Keys gone from the segment are forgotten: memory follows the key count.
    for (auto it = exported_.begin(); it != exported_.end();)
        it = it->second.seen_in_pass == pass_number_ ? std::next(it) : exported_.erase(it);
    return result;
}

KEEPSAKE_INLINE exporter::pass_result exporter::export_key(const detail::segment_impl::entry_view& view) {
    exported_key& known = exported_[view.key];
    if (known.area != view.area.first) known = exported_key{view.area.first, 0, 0};
    known.seen_in_pass = pass_number_;
    batch_.push_back(take_spare());
    const detail::snapshot_status status = detail::snapshot_newest(view.area, known.generation, batch_.back());
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

// Puts the batch; on success the store holds each record's generation (or a
// newer one), which is what the next pass compares with.
KEEPSAKE_INLINE bool exporter::put_batch() {
    std::string failure;
    try {
        store_.put_batch(batch_);
    } catch (const std::exception& thrown) {
        failure = thrown.what();
    } catch (...) {
        failure = "an exception that is not a std::exception";
    }
    const std::size_t count = batch_.size();
    if (failure.empty())
        for (std::size_t i = 0; i < count; ++i) batch_owners_[i]->generation = batch_[i].generation;
    recycle_batch();
    export_event event;
    event.records = count;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (failure.empty()) {
            ++stats_.batches;
            stats_.records += count;
        } else {
            ++stats_.failures;
            event.kind = export_event_kind::store_failed;
            event.attempt = ++failures_in_row_;
            event.retry_in = backoff(event.attempt);
        }
    }
    event.message = failure.empty() ? std::to_string(count) + " record(s) to " + store_.describe()
                                    : store_.describe() + " failed (attempt " + std::to_string(event.attempt) +
                                          ", retrying in " + std::to_string(event.retry_in.count()) +
                                          " ms): " + failure;
    report(event);
    return failure.empty();
}

KEEPSAKE_INLINE std::size_t exporter::pending_keys() {
    std::lock_guard<std::mutex> guard(pass_mutex_);
    std::size_t pending = 0;
    for (const auto& view : segment_->entry_views()) {
        detail::slot_snapshot newest;
        if (!detail::newest_published_below(view.area, ~std::uint64_t{0}, newest)) continue;
        const auto known = exported_.find(view.key);
        const bool exported = known != exported_.end() && known->second.area == view.area.first &&
                              known->second.generation >= newest.generation;
        if (!exported) ++pending;
    }
    return pending;
}

KEEPSAKE_INLINE void exporter::publish_on_bus(const export_event& happened) const {
    const std::string target = store_.describe();
    keepsake::event what;
    what.kind = happened.kind == export_event_kind::store_failed ? event_kind::export_failed
                                                                 : event_kind::export_timed_out;
    what.supervisor = "exporter";
    what.child = target;
    what.instance = happened.attempt;
    what.reason = happened.message;
    what.at = std::chrono::duration_cast<duration>(std::chrono::steady_clock::now().time_since_epoch());
    try {
        options_.events->publish(what);
    } catch (const std::exception& thrown) {
        detail::log(spdlog::level::err,
                    [&] { return std::string("exporter: an event bus subscriber threw: ") + thrown.what(); });
    }
}

KEEPSAKE_INLINE void exporter::report(const export_event& event) const {
    const auto level = event.kind == export_event_kind::exported       ? spdlog::level::debug
                       : event.kind == export_event_kind::store_failed ? spdlog::level::warn
                                                                       : spdlog::level::err;
    detail::log(level, [&] { return std::string("exporter: ") + to_string(event.kind) + ": " + event.message; });
    if (options_.events != nullptr && event.kind != export_event_kind::exported) publish_on_bus(event);
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
