// keepsake/detail/exporter_batches-inl.hpp: the exporter's batches put to
// the store: timed, retried one record at a time when the batch fails, and
// what the store skipped or refused settled key by key. Included by
// exporter-inl.hpp, so compiled with it: in header-only mode by
// exporter.hpp, once by src/keepsake.cpp in compiled mode.
#pragma once

#ifndef KEEPSAKE_HEADER_ONLY
#include "keepsake/exporter.hpp"
#endif

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "keepsake/crash_reports.hpp"
#include "keepsake/log.hpp"

namespace keepsake {

// Puts the batch; on success the store holds each record's generation (or a
// newer one), which is what the next pass compares with, except for the
// records it refused (reported one by one).
KEEPSAKE_INLINE bool exporter::put_batch() {
    std::string failure;
    std::size_t exported = 0;
    const std::size_t records = batch_.size();
    store_time_ = {};
    try {
        exported = put_records();
    } catch (const std::exception& thrown) {
        failure = thrown.what();
    } catch (...) {
        failure = "an exception that is not a std::exception";
    }
    recycle_batch();
    export_event event;
    event.records = exported;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (failure.empty()) {
            ++stats_.batches;
            stats_.records += exported;
        } else {
            ++stats_.failures;
            event.kind = export_event_kind::store_failed;
            event.attempt = ++failures_in_row_;
            event.retry_in = backoff(event.attempt);
        }
    }
    event.message = failure.empty() ? std::to_string(exported) + " record(s) to " + store_.describe()
                                    : store_.describe() + " failed (attempt " + std::to_string(event.attempt) +
                                          ", retrying in " + std::to_string(event.retry_in.count()) +
                                          " ms): " + failure;
    report(event);
    if (failure.empty() && listened()) publish_batch(records, exported);
    return failure.empty();
}

// The batch is in the store: a failure to tell of it (out of memory) is
// logged, never a failed pass.
KEEPSAKE_INLINE void exporter::publish_batch(std::size_t records, std::size_t exported) const noexcept {
    try {
        const std::string target = store_.describe();
        const std::string skipped =
            exported == records ? std::string() : "skipped " + std::to_string(records - exported);
        publish_on_bus(keepsake::event{event_kind::export_batch, "exporter", target, records, exit_kind::normal,
                                       skipped, {}, std::chrono::duration_cast<duration>(store_time_)});
    } catch (...) {
        try {
            detail::log(spdlog::level::err, [] { return std::string("exporter: an export_batch event was lost"); });
        } catch (...) {
        }
    }
}

// The store's put_batch, its time added to store_time_ (a call that throws too).
KEEPSAKE_INLINE std::vector<std::size_t> exporter::timed_put(const std::vector<record>& records) {
    class stopwatch {
    public:
        explicit stopwatch(std::chrono::steady_clock::duration& total) : total_(total) {}
        ~stopwatch() { total_ += std::chrono::steady_clock::now() - began_; }
        stopwatch(const stopwatch&) = delete;
        stopwatch& operator=(const stopwatch&) = delete;

    private:
        std::chrono::steady_clock::duration& total_;
        std::chrono::steady_clock::time_point began_ = std::chrono::steady_clock::now();
    } timing(store_time_);
    return store_.put_batch(records);
}

// Puts batch_ and settles every record; returns how many the store now
// holds. A batch the store rejects as invalid goes again one record at a
// time, so one bad record cannot hold up the others. Throws what the store
// throws otherwise.
KEEPSAKE_INLINE std::size_t exporter::put_records() {
    std::vector<std::size_t> skipped;
    try {
        skipped = timed_put(batch_);
    } catch (const error& thrown) {
        if (thrown.code() != errc::invalid_argument) throw;
        return put_one_at_a_time();
    }
    std::sort(skipped.begin(), skipped.end());  // a store's answer is checked, not trusted
    std::size_t exported = 0;
    for (std::size_t i = 0; i < batch_.size(); ++i) {
        std::uint64_t store_generation = 0;
        std::string why;
        const put_outcome outcome = std::binary_search(skipped.begin(), skipped.end(), i)
                                        ? judge_skipped(batch_[i], store_generation, why)
                                        : put_outcome::exported;
        exported += settle(i, outcome, store_generation, why);
    }
    return exported;
}

KEEPSAKE_INLINE std::size_t exporter::put_one_at_a_time() {
    std::size_t exported = 0;
    std::vector<record> one(1);
    for (std::size_t i = 0; i < batch_.size(); ++i) {
        one[0] = batch_[i];
        std::uint64_t store_generation = 0;
        put_outcome outcome = put_outcome::exported;
        std::string why;
        try {
            if (!timed_put(one).empty()) outcome = judge_skipped(one[0], store_generation, why);
        } catch (const error& thrown) {
            if (thrown.code() != errc::invalid_argument) throw;
            outcome = put_outcome::rejected;
            why = thrown.what();
        }
        exported += settle(i, outcome, store_generation, why);
    }
    return exported;
}

// A record the store skipped as not newer: the same record (a retry of a
// batch that failed after writing part of it) is exported; anything else
// means the store keeps another state for the key than the key's own. A
// damaged record in its way is stale too (recover() removes it), rather
// than a store failure that would hold up every other key.
KEEPSAKE_INLINE exporter::put_outcome exporter::judge_skipped(const record& r, std::uint64_t& store_generation,
                                                              std::string& why) {
    std::optional<record> held;
    try {
        held = store_.get(r.key);
    } catch (const error& failure) {
        if (failure.code() != errc::record_corrupt) throw;
        why = failure.what();
        return put_outcome::stale;
    }
    if (!held || held->generation < r.generation)
        throw error(errc::store_failed, store_.describe() + " skipped the record of '" + r.key + "' (generation " +
                                            std::to_string(r.generation) +
                                            ") as not newer, but does not hold a newer one; retrying");
    store_generation = held->generation;
    const bool same = held->generation == r.generation && detail::record_checksum(*held) == detail::record_checksum(r);
    return same ? put_outcome::exported : put_outcome::stale;
}

// Records what the store did with batch_[index]; 1 if it holds it.
KEEPSAKE_INLINE std::size_t exporter::settle(std::size_t index, put_outcome outcome, std::uint64_t store_generation,
                                             const std::string& why) {
    exported_key& owner = *batch_owners_[index];
    const record& r = batch_[index];
    if (outcome == put_outcome::exported) {
        owner.generation = r.generation;
        owner.refused = 0;
        return 1;
    }
    owner.refused = r.generation;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        ++stats_.refused;
    }
    export_event event;
    event.records = 1;
    event.key = r.key.substr(std::min(options_.prefix.size(), r.key.size()));
    event.generation = r.generation;
    const std::string which = "key '" + event.key + "' (generation " + std::to_string(r.generation) + ")";
    if (outcome == put_outcome::stale) {
        event.kind = export_event_kind::stale_generation;
        event.store_generation = store_generation;
        const std::string held = !why.empty() ? "a damaged record at an equal or higher generation (" + why + ")"
                                 : store_generation == r.generation
                                     ? "another state at the same generation"
                                     : "generation " + std::to_string(store_generation);
        event.message =
            which + " was not exported: " + store_.describe() + " holds " + held + " for '" + r.key +
            "', and never takes an older or equal one. The key was probably removed (segment::remove_key) and "
            "created again while the store kept the old record, which a reboot would restore. Call recover() on "
            "the key to carry on from the store's state, or delete the key with exporter::forget() "
            "(keepsake::forget() when no exporter runs) before creating it again";
    } else {
        event.kind = export_event_kind::record_rejected;
        event.message = which + " was not exported: " + store_.describe() + " rejected it: " + why +
                        "; the other keys are exported. Rename the key (or shorten the prefix), or delete it "
                        "with exporter::forget()";
    }
    report(event);
    return 0;
}

KEEPSAKE_INLINE void exporter::count_refused_keys() {
    std::size_t refused = 0;
    for (const exported_key& known : exported_) refused += known.refused != 0 ? 1 : 0;
    std::lock_guard<std::mutex> lock(mutex_);
    refused_keys_ = refused;
}

} // namespace keepsake
