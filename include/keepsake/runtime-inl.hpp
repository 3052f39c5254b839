// keepsake/runtime-inl.hpp: the runtime's code. Included by runtime.hpp in
// header-only mode; compiled once by src/keepsake.cpp in the compiled mode.
#pragma once

#ifndef KEEPSAKE_HEADER_ONLY
#include "keepsake/runtime.hpp"
#endif

namespace keepsake {

KEEPSAKE_INLINE runtime::runtime(runtime_options options)
    : options_(std::move(options)), time_(options_.time ? options_.time : std::make_shared<steady_clock>()) {
    if (options_.stack_size < 16 * 1024)
        throw error(errc::invalid_argument, "runtime_options::stack_size must be at least 16 KiB");
    if (options_.pooled_stacks > 0) {
        stacks_ = std::make_shared<detail::stack_pool>(options_.stack_size, options_.guard_pages, options_.pooled_stacks);
        // A few: one is taken only while a start runs on it (or is suspended there).
        side_stacks_ = std::make_unique<detail::stack_pool>(options_.stack_size, options_.guard_pages, 4);
    }
    if (options_.threads == 0) {
        install_scheduler();
        owner_threads_.push_back(std::this_thread::get_id());
        spawn_launcher();
    } else {
        start_threads();
    }
    committer_id_ = detail::committers::instance().add([this](const void* segment) { stop_units_in(segment); });
}

KEEPSAKE_INLINE runtime::~runtime() {
    detail::committers::instance().remove(committer_id_);
    shutdown();
}

KEEPSAKE_INLINE std::size_t runtime::poll() {
    check_pumping_thread("poll");
    const std::size_t ready = ready_workers_->load(std::memory_order_relaxed);
    boost::this_fiber::yield();
    return ready;
}

KEEPSAKE_INLINE std::size_t runtime::run_for(duration budget) {
    check_pumping_thread("run_for");
    const auto until = std::chrono::steady_clock::now() + budget;
    budget_->pump = boost::fibers::context::active();
    budget_->until = until;
    std::size_t rounds = 0;
    do {
        boost::this_fiber::yield();
        ++rounds;
    } while (ready_workers_->load(std::memory_order_relaxed) != 0 && std::chrono::steady_clock::now() < until);
    budget_->pump = nullptr;
    return rounds;
}

KEEPSAKE_INLINE bool runtime::on_runtime_thread() const {
    const auto self = std::this_thread::get_id();
    return std::find(owner_threads_.begin(), owner_threads_.end(), self) != owner_threads_.end();
}

KEEPSAKE_INLINE void runtime::spawn(std::function<void()> body, std::size_t stack_size) {
    if (stack_size == 0) stack_size = options_.stack_size;
    live_fibers_.fetch_add(1, std::memory_order_relaxed);
    if (launchers_.size() == 1 && on_runtime_thread()) {
        launch(std::move(body), stack_size);
        return;
    }
    launcher& target = *launchers_[next_launcher_.fetch_add(1, std::memory_order_relaxed) % launchers_.size()];
    {
        auto lock = target.wake.lock();
        target.queue.emplace_back(std::move(body), stack_size);
    }
    target.wake.notify_all();
}

KEEPSAKE_INLINE void runtime::register_name(const std::string& name, std::type_index type, std::string (*describe)(),
                                            std::weak_ptr<detail::named_process> who) {
    std::lock_guard<std::mutex> lock(registry_mutex_);
    for (const auto& [prefix, owner] : key_spaces_)
        if (name.compare(0, prefix.size(), prefix) == 0) refuse_in_key_space(name, prefix);
    // One lookup: a new name is inserted by it; a name held before is taken
    // over only if its holder is gone.
    auto [found, added] = registry_.try_emplace(name, registered{type, describe, who});
    if (added) return;
    if (auto holder = found->second.who.lock()) refuse_name(name, *holder);
    found->second = registered{type, describe, std::move(who)};
}

KEEPSAKE_INLINE void runtime::reserve_names(std::size_t more) {
    std::lock_guard<std::mutex> lock(registry_mutex_);
    registry_.reserve(registry_.size() + more);
}

KEEPSAKE_INLINE void runtime::reserve_key_space(const std::string& prefix, const void* owner) {
    std::lock_guard<std::mutex> lock(registry_mutex_);
    for (const auto& [held, by] : key_spaces_)
        if (held.compare(0, prefix.size(), prefix) == 0 || prefix.compare(0, held.size(), held) == 0)
            throw error(errc::already_started, "an object directory of the keys '" + held +
                                                   "...' is already open in this runtime; open each "
                                                   "directory once, under a name no other directory's begins with");
    for (const auto& [name, holder] : registry_)
        if (name.compare(0, prefix.size(), prefix) == 0 && !holder.who.expired()) refuse_in_key_space(name, prefix);
    key_spaces_.emplace_back(prefix, owner);
}

KEEPSAKE_INLINE void runtime::release_key_space(const void* owner) noexcept {
    std::lock_guard<std::mutex> lock(registry_mutex_);
    key_spaces_.erase(std::remove_if(key_spaces_.begin(), key_spaces_.end(),
                                     [&](const auto& held) { return held.second == owner; }),
                      key_spaces_.end());
}

KEEPSAKE_INLINE void runtime::unregister_name(const std::string& name, const detail::named_process* who) {
    std::lock_guard<std::mutex> lock(registry_mutex_);
    auto found = registry_.find(name);
    if (found == registry_.end()) return;
    auto held = found->second.who.lock();
    if (!held || held.get() == who) {
        registry_.erase(found);
        detail::rehash_if_sparse(registry_);
    }
}

KEEPSAKE_INLINE void runtime::note_segment(const void* segment) {
    std::lock_guard<std::mutex> lock(registry_mutex_);
    if (std::find(segments_.begin(), segments_.end(), segment) == segments_.end()) segments_.push_back(segment);
}

KEEPSAKE_INLINE std::vector<detail::metered_counters> runtime::sample_meters() const {
    std::vector<detail::metered_counters> sampled;
    // Released after the lock: the last owner's destructor takes it.
    std::vector<std::shared_ptr<detail::named_process>> held_while_sampled;
    {
        std::lock_guard<std::mutex> lock(registry_mutex_);
        sampled.reserve(registry_.size());
        held_while_sampled.reserve(registry_.size());
        for (const auto& [name, holder] : registry_) {
            std::shared_ptr<detail::named_process> held = holder.who.lock();
            if (!held) continue;
            // Kept before it is read: if reading throws, the last owner
            // must not go (its destructor takes this lock) before the lock.
            held_while_sampled.push_back(std::move(held));
            sampled.emplace_back();
            held_while_sampled.back()->fill_counters(sampled.back());
        }
    }
    std::sort(sampled.begin(), sampled.end(),
              [](const detail::metered_counters& a, const detail::metered_counters& b) { return a.name < b.name; });
    return sampled;
}

KEEPSAKE_INLINE void runtime::add_root(std::shared_ptr<detail::root_process> root) {
    std::lock_guard<std::mutex> lock(registry_mutex_);
    root->root_slot_ = roots_.size();
    roots_.push_back(std::move(root));
}

// Leaves a hole (roots stop newest first, so their order stays), found by
// the slot the root keeps: a program that starts and stops many roots
// (objects that hibernate) pays O(1) a stop, and the holes are squeezed out
// once they are half of the list.
// (`root` must be this runtime's: its slot is read under this runtime's lock.)
KEEPSAKE_INLINE void runtime::remove_root(const detail::root_process* root) {
    std::shared_ptr<detail::root_process> dropped;  // let go after the lock: its destructor may take it
    std::lock_guard<std::mutex> lock(registry_mutex_);
    const std::size_t slot = root->root_slot_;
    if (slot >= roots_.size() || roots_[slot].get() != root) return;
    dropped = std::move(roots_[slot]);
    dropped->root_slot_ = detail::root_process::unlisted;
    if (++root_holes_ <= roots_.size() / 2 + 16) return;
    roots_.erase(std::remove(roots_.begin(), roots_.end(), nullptr), roots_.end());
    detail::shrink_if_sparse(roots_);
    root_holes_ = 0;
    for (std::size_t index = 0; index < roots_.size(); ++index) roots_[index]->root_slot_ = index;
}

KEEPSAKE_INLINE void runtime::shutdown() {
    if (shut_down_.exchange(true)) return;
    stop_roots();
    fibers_done_.wait([&] { return live_fibers_.load(std::memory_order_acquire) == 0; });
    for (auto& each : launchers_) {
        {
            auto lock = each->wake.lock();
            each->stopping = true;
        }
        each->wake.notify_all();
    }
    if (pumped()) {
        // The launcher fiber ends at its next turn.
        while (!launchers_.front()->done.load(std::memory_order_acquire)) boost::this_fiber::yield();
    }
    for (auto& thread : threads_) thread.join();
    threads_.clear();
}

KEEPSAKE_INLINE exit_reason runtime::wait() {
    check_waiting_thread("wait");
    // On a pumped runtime this suspends the pumping thread's main fiber, so
    // the scheduler runs the others (and sleeps when none is ready), as
    // shutdown's wait for the fibers does.
    roots_changed_.wait([&] { return live_roots_ == 0; });
    auto lock = roots_changed_.lock();
    if (first_abnormal_) return *first_abnormal_;
    return exit_reason{exit_kind::normal, "every top-level unit and supervisor ended normally"};
}

KEEPSAKE_INLINE void runtime::root_began() {
    auto lock = roots_changed_.lock();
    ++live_roots_;
}

KEEPSAKE_INLINE void runtime::root_ended(const exit_reason* how) {
    {
        auto lock = roots_changed_.lock();
        --live_roots_;
        if (how != nullptr && !how->is_normal() && !first_abnormal_) first_abnormal_ = *how;
    }
    roots_changed_.notify_all();
}

KEEPSAKE_INLINE void runtime::check_waiting_thread(const char* what) const {
    if (pumped()) {
        if (owner_threads_.front() != std::this_thread::get_id())
            throw error(errc::invalid_argument,
                        std::string(what) + " was called on another thread than the one that pumps this runtime "
                                            "(threads = 0): nothing would run its fibers meanwhile; call it on "
                                            "that thread, or make the runtime with threads >= 1");
    } else if (on_runtime_thread()) {
        throw error(errc::invalid_argument,
                    std::string(what) + " was called on one of the runtime's own threads, from one of its "
                                        "fibers, which would wait for itself; call it from another thread "
                                        "(main, typically)");
    }
}

KEEPSAKE_INLINE void runtime::refuse_name(const std::string& name, const detail::named_process& holder) {
    if (holder.is_running())
        throw error(errc::already_started, "'" + name + "' is already running in this runtime; give each unit "
                                                        "and supervisor a unique name");
    throw error(errc::already_present,
                "the name '" + name + "' is still held by a unit or supervisor that is not running (its "
                "supervisor keeps its spec, or a handle to it is alive); restart that one (restart_child), or "
                "delete it (delete_child) and drop its handles, before starting another of that name");
}

KEEPSAKE_INLINE void runtime::refuse_in_key_space(const std::string& name, const std::string& prefix) {
    throw error(errc::already_started, "the name '" + name + "' lies in the key space of the object directory '" +
                                           prefix.substr(0, prefix.size() - 1) +
                                           "' in this runtime (its objects' names begin with '" + prefix +
                                           "'); give the unit or supervisor a name outside it, or the directory "
                                           "another name");
}

KEEPSAKE_INLINE void runtime::check_pumping_thread(const char* what) const {
    if (!pumped())
        throw error(errc::invalid_argument, std::string("runtime::") + what +
                                                " pumps a runtime made with threads = 0; this runtime runs "
                                                "its fibers on threads of its own, so there is nothing to pump");
    if (owner_threads_.front() != std::this_thread::get_id())
        throw error(errc::invalid_argument, std::string("runtime::") + what +
                                                " was called on another thread than the one that made this "
                                                "runtime (threads = 0), which is the only thread its fibers "
                                                "run on: call it there, or make the runtime with threads >= 1");
}

KEEPSAKE_INLINE void runtime::install_scheduler() {
    if (options_.share_work && options_.threads >= 2)
        boost::fibers::use_scheduling_algorithm<detail::sharing_algorithm>(shared_pool_);
    else
        boost::fibers::use_scheduling_algorithm<detail::counting_round_robin>(ready_workers_, budget_);
}

KEEPSAKE_INLINE void runtime::launch(std::function<void()> body, std::size_t stack_size) {
    auto guarded = [this, body = std::move(body)] {
        try {
            body();
        } catch (...) {
            // An exception escaping a fiber would call std::terminate.
            detail::log(spdlog::level::err, [] { return std::string("an exception escaped a keepsake fiber; ignored"); });
        }
        fiber_ended();
    };
    if (stacks_ && stack_size == options_.stack_size)
        boost::fibers::fiber(std::allocator_arg, detail::pooled_stack_allocator(stacks_), std::move(guarded)).detach();
    else if (options_.guard_pages)
        boost::fibers::fiber(std::allocator_arg, boost::fibers::protected_fixedsize_stack(stack_size), std::move(guarded))
            .detach();
    else
        boost::fibers::fiber(std::allocator_arg, boost::fibers::fixedsize_stack(stack_size), std::move(guarded)).detach();
}

KEEPSAKE_INLINE void runtime::fiber_ended() {
    if (live_fibers_.fetch_sub(1, std::memory_order_acq_rel) == 1) fibers_done_.notify_all();
}

KEEPSAKE_INLINE void runtime::launcher_loop(launcher& mine) {
    for (;;) {
        std::vector<std::pair<std::function<void()>, std::size_t>> batch;
        {
            auto lock = mine.wake.lock();
            while (mine.queue.empty() && !mine.stopping) mine.wake.wait(lock);
            if (mine.queue.empty() && mine.stopping) break;
            batch.swap(mine.queue);
        }
        for (auto& request : batch) launch(std::move(request.first), request.second);
    }
    mine.done.store(true, std::memory_order_release);
}

KEEPSAKE_INLINE void runtime::spawn_launcher() {
    launchers_.push_back(std::make_unique<launcher>());
    boost::fibers::fiber([this] { launcher_loop(*launchers_.front()); }).detach();
}

KEEPSAKE_INLINE void runtime::start_threads() {
    for (unsigned index = 0; index < options_.threads; ++index) launchers_.push_back(std::make_unique<launcher>());
    std::mutex ready_mutex;
    std::condition_variable ready_cv;
    std::size_t ready = 0;
    for (unsigned index = 0; index < options_.threads; ++index) {
        threads_.emplace_back([this, index, &ready_mutex, &ready_cv, &ready] {
            install_scheduler();
            {
                // Notified under the lock: the waiter owns the condition
                // variable and destroys it as soon as it sees the count.
                std::lock_guard<std::mutex> lock(ready_mutex);
                owner_threads_.push_back(std::this_thread::get_id());
                ++ready;
                ready_cv.notify_all();
            }
            launcher_loop(*launchers_[index]);
        });
    }
    std::unique_lock<std::mutex> lock(ready_mutex);
    ready_cv.wait(lock, [&] { return ready == options_.threads; });
}

KEEPSAKE_INLINE void runtime::stop_units_in(const void* segment) {
    {
        std::lock_guard<std::mutex> lock(registry_mutex_);
        if (std::find(segments_.begin(), segments_.end(), segment) == segments_.end()) return;
    }
    const bool allowed =
        pumped() ? on_runtime_thread() &&
                       boost::fibers::context::active()->is_context(boost::fibers::type::main_context)
                 : !on_runtime_thread();
    if (!allowed) {
        detail::log(spdlog::level::warn, [] {
            return std::string("an exporter went while units of its segment still run, and they cannot be "
                               "stopped from this thread: what they commit from now on is not exported");
        });
        return;
    }
    stop_roots();
}

KEEPSAKE_INLINE void runtime::stop_roots() {
    for (;;) {
        std::shared_ptr<detail::root_process> newest;
        {
            std::lock_guard<std::mutex> lock(registry_mutex_);
            if (roots_.empty()) break;
            newest = std::move(roots_.back());
            roots_.pop_back();
            if (!newest) {
                --root_holes_;
                continue;
            }
            newest->root_slot_ = detail::root_process::unlisted;
        }
        newest->stop_root();
    }
}

} // namespace keepsake
