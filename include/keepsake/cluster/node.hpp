// keepsake/cluster/node.hpp: a process's place in a cluster of nodes that
// share objects through PostgreSQL (issue 14). Link keepsake::postgres.
//
// A node joins (membership.hpp), and guards the directories it serves: an
// object starts here only while this node holds its fencing token
// (ownership.hpp). Its background thread heartbeats, declares silent nodes
// dead, claims their objects (orphans) and starts them, and stops this
// node's objects when it is out:
//   - cannot reach the database for its ttl: its objects stop, it keeps its
//     tokens, and they start again once a heartbeat gets through (nobody can
//     have claimed them meanwhile unless they declared this node dead);
//   - declared dead (a partition, a pause longer than ttl) or superseded: its
//     objects stop for good here, their local copies go, and the node
//     refuses every start; the program should exit and join again.
//
// An object's durable copy is its record in the shared records table,
// written by the node's exporter through store() only under the object's
// token (cluster_store.hpp). A node that claims an object starts it from the
// newest of that record and its own segment's copy, and keeps the segment's
// copy only while this node id was the object's last owner (a restart under
// the same id resumes from shared memory, as without a cluster).
//
// Use:
//   keepsake::cluster::node here(run, segment, options);      // joins
//   spec.guard = &here;  spec.durable = &here.store();          // each directory
//   keepsake::object_directory<S, H> players(run, spec);
//   here.serve(players);                                         // failover, fencing
//   keepsake::exporter out(segment, here.store(), ...);         // after the node
//   ... here.stop() before the served directories go.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "keepsake/cluster/cluster_store.hpp"
#include "keepsake/cluster/membership.hpp"
#include "keepsake/cluster/ownership.hpp"
#include "keepsake/cluster/placement.hpp"
#include "keepsake/detail/snapshot.hpp"
#include "keepsake/detail/unit_record.hpp"
#include "keepsake/log.hpp"
#include "keepsake/objects/directory.hpp"
#include "keepsake/runtime.hpp"
#include "keepsake/segment.hpp"
#include "keepsake/unit_registry.hpp"

namespace keepsake::cluster {

struct cluster_options {
    std::string conninfo;                  // libpq's, the same for every node
    node_options self;                     // id, address, ttl, table prefix, capacity
    std::vector<std::string> directories;  // the names of the directories whose objects are shared
    std::string records_table = "keepsake_records";
    duration heartbeat_every = std::chrono::seconds(1);
    duration sweep_every = std::chrono::milliseconds(250);  // dead nodes, orphans
    std::size_t claims_per_sweep = 1000;
    placement place = placements::local_first();
    bool background = true;  // false: the program calls tick() (tests)
};

// A call for an object this node does not own: who does, or where it is
// placed, with the address that node registered (a gateway forwards there).
class not_owner_error : public error {
public:
    not_owner_error(const std::string& object, std::string node_id, std::string address)
        : error(errc::not_owner, "object '" + object + "' is " + (node_id.empty() ? "being moved" : "on node '" + node_id +
                                     "' (" + address + ")") + "; send the call there (owner_of says where)"),
          node_id_(std::move(node_id)), address_(std::move(address)) {}
    const std::string& node_id() const noexcept { return node_id_; }
    const std::string& address() const noexcept { return address_; }

private:
    std::string node_id_;
    std::string address_;
};

enum class node_standing {
    serving,  // its objects run
    paused,   // no heartbeat for its ttl: its objects wait (tokens kept)
    out,      // declared dead or superseded: nothing runs here any more
};

class node final : public activation_guard {
public:
    node(runtime& where, const segment& local, cluster_options options)
        : runtime_(where),
          local_(local),
          options_(std::move(options)),
          names_(options_.directories.begin(), options_.directories.end()),
          members_(options_.conninfo, options_.self),
          owners_(options_.conninfo, members_, options_.self.table_prefix, options_.records_table),
          store_(options_.conninfo, store_options(), members_, fences_, names_,
                 [this](const std::string& object) { fenced_out(object); }) {
        if (names_.empty()) throw error(errc::invalid_argument, "cluster_options::directories names no directory");
        keep_only_own_copies();
        crashes_ = runtime_.events().subscribe([this](const event& what) {
            if (what.kind != event_kind::permanently_crashed) return;
            std::lock_guard<std::mutex> lock(mutex_);
            crashed_.emplace_back(what.child);
        });
        if (options_.background) {
            // Heartbeats on their own thread: a sweep that starts thousands
            // of claimed objects must not make this node look silent.
            heartbeat_thread_ = std::thread([this] { every(options_.heartbeat_every / 4, [this] { beat(); }); });
            thread_ = std::thread([this] { every(options_.sweep_every, [this] { sweep_round(); }); });
        }
    }

    node(const node&) = delete;
    node& operator=(const node&) = delete;
    ~node() {
        stop();
        runtime_.events().unsubscribe(crashes_);
    }

    // Ends the background thread (objects stay as they are). Before the
    // served directories go.
    void stop() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_all();
        if (thread_.joinable()) thread_.join();
        if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
    }

    // The store of this node's directories (spec.durable) and exporter.
    cluster_store& store() noexcept { return store_; }
    membership& members() noexcept { return members_; }
    ownership& owners() noexcept { return owners_; }
    const std::string& id() const noexcept { return members_.node_id(); }
    node_standing standing() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return standing_;
    }
    // How many objects this node holds the token of, and which.
    std::size_t owned() const { return fences_.size(); }
    std::vector<std::string> owned_objects() const {
        std::vector<std::string> objects;
        for (const auto& [object, fence] : fences_.all()) objects.push_back(object);
        std::sort(objects.begin(), objects.end());
        return objects;
    }

    // Serves `directory` (made with spec.guard = this node and spec.durable
    // = &store()): the objects this node claims start in it, and stop when
    // the node is out.
    template <class State, class Handler>
    void serve(object_directory<State, Handler>& directory) {
        if (directory.guard() != this || directory.durable() != &store_ || &directory.in_segment() != &local_ ||
            names_.count(directory.name()) == 0)
            throw error(errc::invalid_argument, "node '" + id() + "' cannot serve directory '" + directory.name() +
                                                    "': make it with spec.guard = &node, spec.durable = &node.store(),"
                                                    " on the node's segment, and name it in cluster_options::directories");
        served one;
        one.start = [&directory](const std::string& key) { directory.ensure_started(key); };
        // Many at once, on a fiber of the directory's runtime: no thread
        // hand-off an object. Returns the errors by key.
        one.start_all = [&directory](const std::vector<std::string>& keys) {
            auto failures = std::make_shared<std::vector<start_failure>>();
            auto done = std::make_shared<std::promise<void>>();
            std::future<void> finished = done->get_future();
            directory.where().spawn([&directory, &keys, failures, done] {
                for (const std::string& key : keys) {
                    try {
                        directory.ensure_started(key);
                    } catch (const error& failure) {
                        failures->push_back({key, failure.code(), failure.what()});
                    } catch (const std::exception& failure) {
                        failures->push_back({key, errc::start_failed, failure.what()});
                    }
                }
                done->set_value();
            });
            finished.wait();
            return std::move(*failures);
        };
        one.stop = [&directory](const std::string& key) { return directory.terminate(key); };
        one.active = [&directory] { return directory.active_keys(); };
        std::lock_guard<std::mutex> lock(mutex_);
        served_[directory.name()] = std::move(one);
    }

    // Who owns `key` of `directory` (the database's answer).
    std::optional<owner_info> owner_of(const std::string& directory, const std::string& key) {
        return owners_.owner_of(directory + "/" + key);
    }

    // Moves an object this node owns to `target` (a live node id): stops it
    // here (it commits), writes its final state, and gives it up for
    // `target`, which claims it at its next sweep (or at its first call).
    void rehome(const std::string& directory, const std::string& key, const std::string& target);

    // Takes an object out of permanently_crashed, in the cluster and in its
    // registry record (its crash history cleared): claims it here (or
    // throws not_owner_error naming where it is placed), so its next call
    // starts it here.
    void clear_crashed(const std::string& directory, const std::string& key);

    // One round of the background threads: a heartbeat when due and the
    // node's standing (beat), then dead nodes declared, orphans claimed and
    // started (sweep_round).
    void tick() {
        beat();
        sweep_round();
    }
    void beat();
    void sweep_round();

    // activation_guard: an object starts here only under this node's token;
    // an object nobody owns is placed (options.place), and claimed if it is
    // placed here. Otherwise not_owner_error names where it is.
    void before_start(const std::string& directory, const std::string& key) override;
    bool serves(const std::string& directory, const std::string& key) const override {
        return fences_.fence_of(directory + "/" + key).has_value();
    }

private:
    struct start_failure {
        std::string key;
        errc code;
        std::string why;
    };
    struct served {
        std::function<void(const std::string&)> start;
        std::function<std::vector<start_failure>(const std::vector<std::string>&)> start_all;
        std::function<bool(const std::string&)> stop;
        std::function<std::vector<std::string>()> active;
    };

    runtime& runtime_;
    const segment& local_;
    cluster_options options_;
    const std::set<std::string> names_;
    membership members_;
    ownership owners_;
    fence_book fences_;
    cluster_store store_;
    mutable std::mutex mutex_;  // what follows
    std::condition_variable wake_;
    std::map<std::string, served> served_;
    node_standing standing_ = node_standing::serving;
    std::vector<std::string> paused_keys_;     // active when the node paused: started again after
    std::set<std::string> moving_;             // being rehomed
    std::vector<std::string> fenced_out_;      // the store found the token gone: stop them
    std::vector<std::string> crashed_;         // permanently crashed here: mark them cluster-wide
    duration last_heartbeat_{};
    bool stopping_ = false;
    std::uint64_t crashes_ = 0;
    std::mutex loads_lock_;
    std::vector<node_load> loads_;
    std::chrono::steady_clock::time_point loads_read_{};
    std::thread thread_;            // sweeps
    std::thread heartbeat_thread_;  // heartbeats, standing

    postgres_store_options store_options() const {
        postgres_store_options made;
        made.table = options_.records_table;
        made.fence_table = owners_.objects_table();
        return made;
    }

    template <class Round>
    void every(duration period, Round round) {
        std::unique_lock<std::mutex> lock(mutex_);
        while (!stopping_) {
            lock.unlock();
            try {
                round();
            } catch (const std::exception& failure) {
                detail::log(spdlog::level::warn, [&] { return "cluster node '" + id() + "': " + failure.what(); });
            }
            lock.lock();
            wake_.wait_for(lock, std::max(period, duration(std::chrono::milliseconds(1))), [this] { return stopping_; });
        }
    }

    static std::pair<std::string, std::string> split(const std::string& object) {
        const std::size_t slash = object.find('/');
        return {object.substr(0, slash), object.substr(slash + 1)};
    }

    // The object's keys in a segment: its state and its registry records.
    static std::vector<std::string> keys_of(const std::string& object) {
        return {object, detail::registry_key(detail::unit_record_prefix, object),
                detail::registry_key(detail::crash_record_prefix, object),
                detail::registry_key(detail::skipped_record_prefix, object)};
    }
    void drop_local_copy(const std::string& object) {
        for (const std::string& each : keys_of(object)) local_.shared_impl()->remove_key(each);
    }

    // At join: copies in the segment of objects whose last owner was
    // another node (or nobody) are stale; the others are this node's own,
    // newer than the store when the last export did not happen.
    void keep_only_own_copies();

    // The served directory of `object`, or null (entries are never erased).
    served* served_for(const std::string& directory) {
        std::lock_guard<std::mutex> lock(mutex_);
        auto found = served_.find(directory);
        return found != served_.end() ? &found->second : nullptr;
    }
    bool stop_object(const std::string& object) {
        auto [directory, key] = split(object);
        served* which = served_for(directory);
        return which != nullptr && which->stop(key);
    }
    void start_object(const std::string& object) {
        auto [directory, key] = split(object);
        if (served* which = served_for(directory)) which->start(key);
    }
    std::vector<std::string> active_objects() {
        std::vector<std::string> objects;
        std::lock_guard<std::mutex> lock(mutex_);
        for (auto& [name, which] : served_)
            for (const std::string& key : which.active()) objects.push_back(name + "/" + key);
        return objects;
    }

    void fenced_out(const std::string& object) {
        std::lock_guard<std::mutex> lock(mutex_);
        fenced_out_.push_back(object);
    }

    void heartbeat_if_due();
    void pause();
    void resume();
    void go_out(const std::string& why);
    void settle_fenced_out();
    void mark_crashed();
    void claim_orphans();
    void start_claimed(const std::vector<claimed>& taken);
    std::string choose_node(const std::string& object);
    std::vector<node_load> recent_loads();
    [[noreturn]] void refuse_not_owned(const std::string& object);
};

} // namespace keepsake::cluster

#include "keepsake/cluster/detail/node-inl.hpp"
