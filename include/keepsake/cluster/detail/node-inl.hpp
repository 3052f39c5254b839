// keepsake/cluster/detail/node-inl.hpp: cluster::node's rounds, guard and
// moves (included by cluster/node.hpp).
#pragma once

#include <algorithm>
#include <string>
#include <vector>

namespace keepsake::cluster {

inline void node::keep_only_own_copies() {
    std::vector<std::string> mine = owners_.owned_by(id());
    std::sort(mine.begin(), mine.end());
    for (const auto& view : local_.shared_impl()->entry_views()) {
        const std::optional<std::string> object = object_of(view.key, names_);
        if (object && !std::binary_search(mine.begin(), mine.end(), *object))
            local_.shared_impl()->remove_key(view.key);
    }
}

inline void node::beat() {
    if (standing() == node_standing::out) return;
    heartbeat_if_due();
    if (standing() == node_standing::out) return;
    if (members_.fenced()) pause();
    else if (standing() == node_standing::paused) resume();
}

inline void node::sweep_round() {
    if (standing() != node_standing::serving) return;
    settle_fenced_out();
    mark_crashed();
    members_.sweep();
    claim_orphans();
}

inline void node::heartbeat_if_due() {
    const auto now = std::chrono::steady_clock::now().time_since_epoch();
    if (last_heartbeat_ != duration::zero() && now - last_heartbeat_ < options_.heartbeat_every) return;
    try {
        if (!members_.heartbeat()) {
            go_out("it was declared dead, or the same node id joined again");
            return;
        }
        last_heartbeat_ = std::chrono::duration_cast<duration>(now);
    } catch (const error& failure) {
        detail::log(spdlog::level::warn, [&] { return "cluster node '" + id() + "' cannot heartbeat: " + failure.what(); });
    }
}

// No heartbeat for its ttl: others may soon declare it dead, so its objects
// stop now (they commit here); it keeps their tokens.
inline void node::pause() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (standing_ != node_standing::serving) return;
        standing_ = node_standing::paused;
    }
    detail::log(spdlog::level::err, [&] {
        return "cluster node '" + id() + "' has not reached the database for its ttl: its objects stop until it does";
    });
    std::vector<std::string> stopped;
    for (const std::string& object : active_objects())
        if (stop_object(object)) stopped.push_back(object);
    std::lock_guard<std::mutex> lock(mutex_);
    paused_keys_ = std::move(stopped);
}

inline void node::resume() {
    std::vector<std::string> again;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        standing_ = node_standing::serving;
        again.swap(paused_keys_);
    }
    detail::log(spdlog::level::warn, [&] { return "cluster node '" + id() + "' reaches the database again"; });
    for (const std::string& object : again) {
        if (!fences_.fence_of(object)) continue;
        try {
            start_object(object);
        } catch (const std::exception& failure) {
            detail::log(spdlog::level::err, [&] { return "object '" + object + "' did not start again: " + failure.what(); });
        }
    }
}

// Out for good: its objects may run elsewhere now.
inline void node::go_out(const std::string& why) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (standing_ == node_standing::out) return;
        standing_ = node_standing::out;
    }
    detail::log(spdlog::level::err, [&] {
        return "cluster node '" + id() + "' is out of the cluster (" + why +
               "): its objects stop here; restart the process to join again";
    });
    for (const std::string& object : active_objects()) stop_object(object);
    for (const auto& [object, fence] : fences_.all()) {
        fences_.drop(object);
        drop_local_copy(object);
    }
}

// Objects whose token the store found gone (another node claimed them).
inline void node::settle_fenced_out() {
    std::vector<std::string> objects;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        objects.swap(fenced_out_);
    }
    for (const std::string& object : objects) {
        const std::optional<std::uint64_t> fence = fences_.fence_of(object);
        if (!fence) continue;
        const std::optional<owner_info> owner = owners_.owner_of(object);
        if (owner && owner->node_id == id() && owner->fence == *fence && owner->owner_alive) continue;
        detail::log(spdlog::level::err, [&] {
            return "cluster node '" + id() + "' lost object '" + object + "' to another node: it stops here";
        });
        fences_.drop(object);
        stop_object(object);
        drop_local_copy(object);
    }
}

// Objects that went past their crash threshold here are never claimed by
// any node again (until cleared).
inline void node::mark_crashed() {
    std::vector<std::string> names;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        names.swap(crashed_);
    }
    for (const std::string& name : names) {
        const std::optional<std::string> object = object_of(name, names_);
        if (!object) continue;
        if (const auto fence = fences_.fence_of(*object)) owners_.mark_permanently_crashed(*object, *fence);
    }
}

inline void node::claim_orphans() {
    std::vector<std::string> directories;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        for (const auto& [name, which] : served_) directories.push_back(name);
    }
    if (directories.empty()) return;
    std::size_t limit = options_.claims_per_sweep;
    if (options_.self.capacity != 0) {
        const std::size_t held = fences_.size();
        if (held >= options_.self.capacity) return;
        limit = std::min(limit, options_.self.capacity - held);
    }
    // Batch after batch while they come full: each batch is started before
    // the next is claimed, so nodes sweeping at once share the orphans.
    for (;;) {
        const std::vector<claimed> taken = owners_.claim_orphans(limit, directories);
        if (!taken.empty()) start_claimed(taken);
        if (taken.size() < limit || standing() != node_standing::serving) return;
        if (options_.self.capacity != 0) {
            const std::size_t held = fences_.size();
            if (held >= options_.self.capacity) return;
            limit = std::min(limit, options_.self.capacity - held);
        }
    }
}

// Claimed objects start at once (their alarms are due, their callers wait):
// their records read in one statement first.
inline void node::start_claimed(const std::vector<claimed>& taken) {
    std::vector<std::string> objects;
    for (const claimed& each : taken) {
        if (each.previous_owner != id()) drop_local_copy(each.key);
        objects.push_back(each.key);
    }
    // Read before the tokens are held: a call that starts one of them meanwhile
    // waits for its token (before_start), and never reads the database from
    // the runtime's thread.
    store_.prefetch(objects);
    for (const claimed& each : taken) fences_.hold(each.key, each.fence);
    std::map<std::string, std::vector<std::string>> by_directory;
    for (const claimed& each : taken) {
        auto [directory, key] = split(each.key);
        by_directory[directory].push_back(key);
    }
    for (const auto& [directory, keys] : by_directory) {
        served* which = served_for(directory);
        if (which == nullptr) continue;
        for (const start_failure& failed : which->start_all(keys)) {
            const std::string object = directory + "/" + failed.key;
            if (failed.code == errc::permanently_crashed)
                if (const auto fence = fences_.fence_of(object)) owners_.mark_permanently_crashed(object, *fence);
            detail::log(spdlog::level::err, [&] {
                return "cluster node '" + id() + "' claimed object '" + object + "' but it did not start: " + failed.why;
            });
        }
    }
    store_.drop_prefetched();
    detail::log(spdlog::level::info, [&] {
        return "cluster node '" + id() + "' claimed " + std::to_string(taken.size()) + " object(s) of nodes that are out";
    });
}

inline void node::before_start(const std::string& directory, const std::string& key) {
    const std::string object = directory + "/" + key;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (standing_ == node_standing::out)
            throw error(errc::not_running, "cluster node '" + id() +
                                               "' is out of the cluster (declared dead, or its id joined again): its "
                                               "objects run elsewhere; restart the process to join again");
        if (standing_ == node_standing::paused)
            throw error(errc::not_running, "cluster node '" + id() +
                                               "' has not reached the database for its ttl; its objects start again "
                                               "when it does");
        if (moving_.count(object) != 0) throw not_owner_error(object, "", "");
    }
    if (fences_.fence_of(object)) return;
    const std::optional<owner_info> owner = owners_.owner_of(object);
    if (owner && owner->owner_alive && owner->node_id == id() && owner->incarnation == members_.incarnation()) {
        // Claimed by this node's sweep, its token not handed over yet.
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (!fences_.fence_of(object) && std::chrono::steady_clock::now() < deadline)
            boost::this_fiber::sleep_for(std::chrono::milliseconds(1));
        if (fences_.fence_of(object)) return;
    }
    if (owner && owner->permanently_crashed) refuse_not_owned(object);
    if (owner && owner->owner_alive && owner->node_id != id())
        throw not_owner_error(object, owner->node_id, owner->address);
    if (!owner || owner->placed_on.empty()) {
        const std::string target = choose_node(object);
        if (target != id()) {
            owners_.place(object, target);
            refuse_not_owned(object);
        }
    }
    const std::optional<claimed> got = owners_.claim(object);
    if (!got) refuse_not_owned(object);
    if (got->previous_owner != id()) drop_local_copy(object);
    if (got->fence == 1) store_.expect_absent(object);  // never owned: nothing was ever written under it
    else store_.forget_cached(object);
    fences_.hold(object, got->fence);
}

inline void node::clear_crashed(const std::string& directory, const std::string& key) {
    const std::string object = directory + "/" + key;
    owners_.clear_permanently_crashed(object);
    before_start(directory, key);
    keepsake::detail::registry_book::of(local_.shared_impl())->import_unit_from(store_, "", object);
    keepsake::clear_crashed(local_, object);
}

inline std::string node::choose_node(const std::string& object) {
    std::vector<node_load> room;
    for (node_load& each : recent_loads()) {
        if (each.node_id == id()) each.objects = fences_.size();  // its own, exact
        if (each.capacity == 0 || each.objects < each.capacity) room.push_back(std::move(each));
    }
    if (room.empty())
        throw error(errc::limit_reached, "no live node has room for object '" + object +
                                             "' (every node is at its capacity); raise node_options::capacity or add a node");
    const std::string chosen = options_.place(placement_request{object, id(), room});
    for (const node_load& each : room)
        if (each.node_id == chosen) return chosen;
    throw error(errc::not_found, "the placement chose node '" + chosen + "' for object '" + object +
                                     "', which is not alive or has no room");
}

// The nodes' loads, read again at most every sweep_every (each read counts
// the ownership table): placement may use a slightly stale view.
inline std::vector<node_load> node::recent_loads() {
    const auto now = std::chrono::steady_clock::now();
    std::lock_guard<std::mutex> lock(loads_lock_);
    if (loads_read_ == std::chrono::steady_clock::time_point{} || now - loads_read_ >= options_.sweep_every) {
        loads_ = owners_.loads();
        loads_read_ = now;
    }
    return loads_;
}

inline void node::refuse_not_owned(const std::string& object) {
    const std::optional<owner_info> owner = owners_.owner_of(object);
    if (owner && owner->permanently_crashed)
        throw error(errc::permanently_crashed, "object '" + object +
                                                   "' is permanently crashed in the cluster; clear it with "
                                                   "node.owners().clear_permanently_crashed(\"" + object + "\")");
    if (owner && owner->owner_alive) throw not_owner_error(object, owner->node_id, owner->address);
    if (owner && !owner->placed_on.empty()) throw not_owner_error(object, owner->placed_on, owner->placed_address);
    throw error(errc::timeout, "object '" + object + "' changed hands while node '" + id() + "' claimed it; retry");
}

inline void node::rehome(const std::string& directory, const std::string& key, const std::string& target) {
    const std::string object = directory + "/" + key;
    const std::optional<std::uint64_t> fence = fences_.fence_of(object);
    if (!fence)
        throw error(errc::not_owner, "node '" + id() + "' does not own '" + object + "': rehome it on its owner (owner_of)");
    if (target == id()) return;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        moving_.insert(object);
    }
    struct unmark {
        node& self;
        const std::string& object;
        ~unmark() {
            std::lock_guard<std::mutex> lock(self.mutex_);
            self.moving_.erase(object);
        }
    } moved{*this, object};
    stop_object(object);
    std::vector<record> finals;
    for (const std::string& each : keys_of(object)) {
        const auto view = local_.shared_impl()->entry_view_of(each);
        if (!view) continue;
        record copied;
        if (detail::snapshot_newest(view->area, 0, copied) != detail::snapshot_status::copied) continue;
        copied.key = each;
        finals.push_back(std::move(copied));
    }
    if (!finals.empty()) store_.put_batch(finals);  // skipped ones: the store holds them already
    if (!owners_.release(object, *fence, target))
        throw error(errc::not_owner, "node '" + id() + "' lost '" + object + "' while moving it to '" + target + "'");
    fences_.drop(object);
    drop_local_copy(object);
}

} // namespace keepsake::cluster
