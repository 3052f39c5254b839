// keepsake/exporter.hpp: a background thread that copies each key's newest
// committed generation from a segment to a store.
//
// It runs a pass every interval, on flush() and on stop(). A pass lists the
// segment's keys and, for each key whose newest committed generation is
// above the one it last exported, copies that generation straight out of
// the slots (detail/snapshot.hpp: no lock a committer takes, so a worker's
// commit never waits for it) into a batch for the store. So a key committed
// 1 000 times between two passes is written once, and its memory is one
// entry per key plus one batch, whatever the commit rate.
//
// A store failure (any exception) abandons the pass; the next one, after a
// backoff that doubles up to retry_max, copies what is newest then. Nothing
// is lost meanwhile: the shared-memory copy stays the source until the store
// holds that generation, and stores refuse a generation older than theirs.
// An exception of the pass itself (e.g. std::bad_alloc) is handled the same
// way (a pass_failed event), never by ending the program.
//
// A record the store refuses is not counted as exported, and is reported:
//   - stale_generation: the store holds an equal (but different) or higher
//     generation of the key, so the key's state is not what the store
//     keeps. That happens when a key is removed (segment::remove_key) and
//     created again while the store keeps the old key's record: delete keys
//     with exporter::forget() (keepsake::forget() with no exporter), or
//     call recover() on the re-created key to carry on from the store's
//     state;
//   - record_rejected: the store throws errc::invalid_argument for it (e.g.
//     a key too long for the file store's names). The batch is then put one
//     record at a time, so only that record is left out.
// Either stays refused until the key commits a generation the store takes,
// or is forgotten; meanwhile flush() and stop() return false (the store does
// not hold the key's state), promptly, without waiting for their timeout.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "keepsake/detail/config.hpp"
#include "keepsake/detail/registry_book.hpp"
#include "keepsake/detail/group_record.hpp"
#include "keepsake/error.hpp"
#include "keepsake/events.hpp"
#include "keepsake/segment.hpp"
#include "keepsake/store.hpp"

namespace keepsake {

enum class export_event_kind {
    exported,          // a batch reached the store
    store_failed,      // the store threw; the pass is retried after retry_in
    timed_out,         // stop() ran out of time with keys not yet exported
    stale_generation,  // the store holds an equal or newer generation of `key`: not exported
    record_rejected,   // the store refused `key`'s record (invalid_argument): not exported
    pass_failed,       // the pass itself threw (e.g. out of memory); retried after retry_in
};

inline const char* to_string(export_event_kind kind) noexcept {
    switch (kind) {
    case export_event_kind::exported: return "exported";
    case export_event_kind::store_failed: return "store_failed";
    case export_event_kind::timed_out: return "timed_out";
    case export_event_kind::stale_generation: return "stale_generation";
    case export_event_kind::record_rejected: return "record_rejected";
    case export_event_kind::pass_failed: return "pass_failed";
    }
    return "unknown";
}

struct export_event {
    export_event_kind kind = export_event_kind::exported;
    std::size_t records = 0;                // exported: in the batch; timed_out: keys left behind; refusals: 1
    std::uint32_t attempt = 0;              // store_failed, pass_failed: failures in a row, this one included
    std::chrono::milliseconds retry_in{0};  // store_failed, pass_failed: the wait before the next pass
    std::string key;                        // stale_generation, record_rejected: the segment key
    std::uint64_t generation = 0;           // stale_generation, record_rejected: the one not exported
    std::uint64_t store_generation = 0;     // stale_generation: the one the store holds
    std::string message;                    // the same in words (the store's error for store_failed)
};

struct exporter_options {
    std::chrono::milliseconds interval{1000};  // between passes when nobody asks for one; at least 1 ms
    std::string prefix;                        // store key = prefix + segment key
    std::size_t batch_size = 1024;             // records per store put (one transaction)
    std::chrono::milliseconds retry_min{10};   // first wait after a store failure
    std::chrono::milliseconds retry_max{5000}; // the wait doubles up to this
    std::chrono::milliseconds stop_timeout{10000};  // the destructor's stop()
    // Called on the exporter's thread; exceptions from it are logged and
    // ignored. Events are also logged (exported at debug, the rest at
    // warn/error).
    std::function<void(const export_event&)> on_event;
    // Also publish store failures and timeouts to this bus (a runtime's
    // events()), as event_kind::export_failed / export_timed_out; and, while
    // it has subscribers, each batch put (event_kind::export_batch: instance
    // the records in it, took the store's put_batch time) and each forget()
    // (event_kind::forgotten, from the thread calling it). Published from
    // the exporter's thread, stamped with the steady clock; the bus must
    // outlive the exporter.
    event_bus* events = nullptr;
};

struct exporter_stats {
    std::uint64_t passes = 0;    // passes that reached the end of the keys
    std::uint64_t batches = 0;   // puts that succeeded
    std::uint64_t records = 0;   // records in them
    std::uint64_t failures = 0;  // puts (and passes) that threw
    std::uint64_t refused = 0;   // records refused: stale_generation or record_rejected
    // When the last complete pass began (passes > 0): every commit made
    // before it is in the store (or refused). now - this is the export lag.
    std::chrono::steady_clock::time_point covered_until{};
};

class KEEPSAKE_API exporter {
public:
    // Starts the thread. The store must outlive the exporter; the segment
    // mapping is kept alive by the exporter itself.
    exporter(const segment& source, store& target, exporter_options options = {});
    ~exporter();

    exporter(const exporter&) = delete;
    exporter& operator=(const exporter&) = delete;

    // Returns true once the store durably holds every generation committed
    // before the call (or a newer one); false if `timeout` ran out first
    // (the export goes on in the background), or at once after a pass if
    // the store refuses a key's state (a stale_generation or
    // record_rejected event said which). Any timeout works, up to
    // milliseconds::max(). Throws errc::not_running after stop().
    bool flush(std::chrono::milliseconds timeout = std::chrono::seconds(10));

    // Exports everything committed, then ends the thread. Returns false, and
    // reports a timed_out event, if `timeout` ran out first: what was not
    // exported stays in shared memory; false too if the store refuses a
    // key's state. A store call in progress is not interrupted, so stop()
    // may return one store call after the timeout. Several threads may
    // call it at once; each returns once the thread has ended.
    bool stop(std::chrono::milliseconds timeout = std::chrono::seconds(10));

    // Terminate-and-delete: removes `key` from the segment and from the
    // store, between two passes so no export can bring it back. Throws
    // errc::key_in_use while a keeper holds it. False if it was in neither.
    // Publishes a forgotten event (took: the call's time, a pass it waited
    // for included) when options.events has subscribers.
    bool forget(const std::string& key);

    std::string store_key(const std::string& key) const { return options_.prefix + key; }
    exporter_stats stats() const;

private:
    struct exported_key {
        std::uint64_t nonce = 0;          // a key removed and added again gets a new nonce
        std::uint64_t generation = 0;     // the newest generation the store holds
        std::uint64_t refused = 0;        // a newer generation the store refused; 0 if none
        std::uint64_t seen_in_pass = 0;
    };
    enum class put_outcome { exported, stale, rejected };
    enum class pass_result { complete, incomplete, failed, abandoned };

    std::shared_ptr<detail::segment_impl> segment_;
    std::shared_ptr<detail::registry_book> book_;  // the unit registry's deletes come through forget()
    std::uint64_t forgetter_id_ = 0;
    store& store_;
    exporter_options options_;

    mutable std::mutex mutex_;      // the fields below, up to pass_mutex_
    std::condition_variable wake_;  // the thread waits for work
    std::condition_variable done_;  // flush() waits for a pass
    std::uint64_t requested_ = 0;   // flush tickets asked for
    std::uint64_t completed_ = 0;   // highest ticket a complete pass began after
    bool stopping_ = false;
    std::uint64_t stop_ticket_ = 0;
    bool stopped_ = false;
    bool stop_result_ = true;
    std::chrono::steady_clock::time_point stop_deadline_{};
    exporter_stats stats_;
    std::uint32_t failures_in_row_ = 0;  // store failures since the last complete pass
    std::size_t refused_keys_ = 0;       // keys whose newest state the store refused
    std::mutex join_mutex_;              // stop(): one thread joins, the others wait for it

    std::mutex pass_mutex_;  // a pass and forget() exclude each other
    // By directory entry, not by name: no hashing per key per pass. The
    // thread's (and forget's, under pass_mutex_); sized at a pass's start.
    std::vector<exported_key> exported_;
    std::vector<record> batch_;
    std::vector<record> spare_;  // buffers of earlier batches, reused
    std::vector<exported_key*> batch_owners_;
    detail::group_image group_scratch_;  // buffers for keys with side tables, reused
    std::chrono::steady_clock::duration store_time_{};  // in the store's put_batch, this batch
    std::uint64_t pass_number_ = 0;
    std::thread thread_;

    void run();
    void run_guarded() noexcept;
    pass_result guarded_pass() noexcept;
    void report_timeout();
    std::chrono::milliseconds backoff(std::uint32_t attempt) const;
    std::chrono::steady_clock::time_point next_pass_time(bool incomplete) const;
    bool out_of_time() const;
    pass_result run_pass();
    pass_result export_key(const detail::segment_impl::entry_view& view, std::vector<detail::table_area>* tables);
    bool abandoning();
    record take_spare();
    void recycle_batch();
    bool put_batch();
    std::vector<std::size_t> timed_put(const std::vector<record>& records);
    std::size_t put_records();
    std::size_t put_one_at_a_time();
    put_outcome judge_skipped(const record& r, std::uint64_t& store_generation, std::string& why);
    std::size_t settle(std::size_t index, put_outcome outcome, std::uint64_t store_generation,
                       const std::string& why);
    void note_pass_failure(const char* what) noexcept;
    void count_refused_keys();
    std::size_t pending_keys();
    void report(const export_event& event) const;
    bool listened() const noexcept;
    void publish_on_bus(event what) const;
    void publish_batch(std::size_t records, std::size_t exported) const noexcept;
    void publish_failure(const export_event& happened) const;
};

} // namespace keepsake

#ifdef KEEPSAKE_HEADER_ONLY
#include "keepsake/exporter-inl.hpp"
#endif
