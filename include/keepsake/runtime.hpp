// keepsake/runtime.hpp: where units and supervisors run. A runtime owns the
// fiber scheduler and the clock, either on threads of its own or pumped by
// the host program (a game or control loop gives it a slice of each frame).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <typeindex>
#include <typeinfo>
#include <unordered_map>
#include <utility>
#include <vector>

#include <cxxabi.h>

#include <boost/fiber/fiber.hpp>
#include <boost/fiber/operations.hpp>
#include <boost/fiber/fixedsize_stack.hpp>
#include <boost/fiber/protected_fixedsize_stack.hpp>

#include "keepsake/clock.hpp"
#include "keepsake/detail/committers.hpp"
#include "keepsake/detail/config.hpp"
#include "keepsake/detail/metered.hpp"
#include "keepsake/detail/sparse.hpp"
#include "keepsake/detail/scheduling.hpp"
#include "keepsake/detail/signal.hpp"
#include "keepsake/detail/stack_pool.hpp"
#include "keepsake/error.hpp"
#include "keepsake/events.hpp"
#include "keepsake/log.hpp"

namespace keepsake {

class segment;
class runtime;

struct runtime_options {
    // 0: pumped by the thread that constructs the runtime (poll, run_for).
    // 1 or more: fibers run on that many threads of the runtime's own; new
    // units and supervisors are spread over them in turn.
    unsigned threads = 1;
    // The clock; null means the real monotonic clock.
    std::shared_ptr<keepsake::clock> time;
    // Stack per fiber (units and supervisors). Stacks are mapped lazily with
    // a guard page: an idle unit costs the pages it touched, and an overflow
    // is a segfault (which shared memory survives), not silent corruption.
    std::size_t stack_size = 128 * 1024;
    // The segment units keep their state in, unless their spec names one.
    const segment* default_segment = nullptr;
    // With threads >= 2: the threads share one ready queue, so a fiber runs
    // on whichever thread is free and moves between them (its code must not
    // rely on thread-local state). false: a fiber stays on the thread it
    // started on.
    bool share_work = false;
    // Each stack has a guard page (an overflow is a segfault, not silent
    // corruption), mapped on its own: two memory mappings a fiber, so
    // Linux's vm.max_map_count (65 530 by default) caps a process near 32 000
    // units (carving stacks from bigger mappings, as the pool does, does not
    // change that: a guarded stack is still two mappings). false: stacks
    // without guard pages, for programs of more units than that (the resume
    // bench's 100 000): from the pool's mappings (many stacks each), or
    // from the heap when pooled_stacks is 0.
    bool guard_pages = true;
    // Stacks of ended fibers the runtime keeps, to give to the next fibers
    // it starts (of the runtime's stack_size): a start then maps nothing and
    // takes no page fault on the pages the last fiber touched. Stacks are
    // carved from mappings of up to 4 MiB, with a guard page each when
    // guard_pages is true (still two memory mappings a guarded stack). A
    // kept stack keeps its dirty pages resident: at most this many times
    // stack_size, typically a few pages each. Stacks handed back past it
    // are unmapped. 0: no pool; each fiber maps (guard_pages) or allocates
    // its own stack, freed when it ends.
    std::size_t pooled_stacks = 256;
};

namespace detail {

// Something the runtime stops when it is destroyed (a top-level unit or
// supervisor), newest first.
class root_process {
public:
    virtual ~root_process() = default;
    virtual void stop_root() = 0;

private:
    friend class keepsake::runtime;
    static constexpr std::size_t unlisted = static_cast<std::size_t>(-1);
    // Where the runtime's list of roots holds it (under its registry
    // mutex): a stop finds it there without an index beside the list.
    std::size_t root_slot_ = unlisted;
};

// What the name registry asks of a unit or supervisor holding a name.
class named_process {
public:
    virtual bool is_running() const noexcept = 0;
    // Running, or stopped by its supervisor for a restart that follows:
    // calls to it are accepted (they queue).
    virtual bool accepts_calls() const noexcept = 0;
    // Its counters for keepsake/metrics.hpp, read from the stats it keeps
    // anyway (nothing is counted for metrics on a hot path).
    virtual void fill_counters(metered_counters& out) const = 0;

protected:
    ~named_process() = default;
};

// A type's name as written in C++, for messages.
inline std::string readable_type_name(const std::type_info& type) {
    int status = 0;
    std::unique_ptr<char, void (*)(void*)> readable(abi::__cxa_demangle(type.name(), nullptr, nullptr, &status),
                                                    std::free);
    return status == 0 && readable ? std::string(readable.get()) : std::string(type.name());
}

} // namespace detail

class KEEPSAKE_API runtime {
public:
    explicit runtime(runtime_options options = {});

    runtime(const runtime&) = delete;
    runtime& operator=(const runtime&) = delete;

    // Stops every top-level unit and supervisor (newest first, each by its
    // shutdown rules), waits for every fiber to end, then for the threads.
    ~runtime();

    bool pumped() const noexcept { return options_.threads == 0; }
    const keepsake::clock& clock() const noexcept { return *time_; }
    const runtime_options& options() const noexcept { return options_; }
    event_bus& events() noexcept { return events_; }

    // Pumped runtimes: runs every fiber that is ready once. Returns how many
    // were ready. Must be called on the thread that constructed the runtime.
    std::size_t poll();

    // Pumped runtimes: runs fibers until none is ready or `budget` (real
    // time) is spent. Returns the number of polls. Once the budget is spent
    // the caller is resumed after the fiber running now suspends, ahead of
    // the others still ready (fibers cannot be pre-empted).
    std::size_t run_for(duration budget);

    // Is the calling thread one the runtime's fibers run on?
    bool on_runtime_thread() const;

    // Starts `body` on a new fiber of this runtime (from any thread).
    void spawn(std::function<void()> body, std::size_t stack_size = 0);

    // Fibers waiting on `signal` until `ready()` or `deadline` on this clock.
    template <class Predicate>
    bool wait_until(detail::signal& on, duration deadline, Predicate ready) const {
        return on.wait_until(*time_, deadline, ready);
    }

    // --- name registry (whereis) --------------------------------------
    // Units and supervisors register under their name; a name is held by one
    // of them at a time, as long as it lives (a handle keeps it) and its
    // supervisor keeps its spec. `describe` names the registered type, for
    // the error of a lookup with another.
    void register_name(const std::string& name, std::type_index type, std::string (*describe)(),
                       std::weak_ptr<detail::named_process> who);

    void unregister_name(const std::string& name, const detail::named_process* who);

    // Room for `more` names (a supervisor resuming that many children).
    void reserve_names(std::size_t more);

    // An object directory's key space: the names that begin with `prefix`
    // ("players/") are its objects', which the runtime does not hold by
    // name (the directory finds them: a million objects are not a million
    // names here, nor a million metric series). No unit, supervisor or other
    // directory may take one while `owner` holds it: register_name and
    // reserve_key_space throw already_started.
    void reserve_key_space(const std::string& prefix, const void* owner);
    void release_key_space(const void* owner) noexcept;

    // The registered object of that name, or null. Throws type_mismatch,
    // naming the registered type, if the name holds another type than Core.
    template <class Core>
    std::shared_ptr<Core> find_registered(const std::string& name) const {
        std::lock_guard<std::mutex> lock(registry_mutex_);
        auto found = registry_.find(name);
        if (found == registry_.end()) return nullptr;
        auto held = found->second.who.lock();
        if (!held) return nullptr;
        if (found->second.type != std::type_index(typeid(Core)))
            throw error(errc::type_mismatch, "'" + name + "' is registered in this runtime as " +
                                                 found->second.describe() + ", not as " + Core::type_description() +
                                                 "; look it up with the types it was started with");
        return std::static_pointer_cast<Core>(std::move(held));
    }

    // A unit keeps its state in this segment (a segment_impl): an exporter
    // of it stops this runtime's units before its last pass.
    void note_segment(const void* segment);

    // --- metrics (keepsake/metrics.hpp) --------------------------------
    // The counters of every unit and supervisor that holds a name here
    // (not one its supervisor deleted), by name: read through the name
    // table, so a unit keeps nothing else in the runtime for metrics.
    std::vector<detail::metered_counters> sample_meters() const;

    // Top-level processes, stopped newest first when the runtime goes.
    void add_root(std::shared_ptr<detail::root_process> root);

    void remove_root(const detail::root_process* root);

    // Stops everything (as the destructor does); idempotent.
    void shutdown();

    // Blocks until every top-level unit and supervisor (start_unit,
    // start_supervisor: the runtime's roots) has ended, by itself (a root
    // supervisor that gave up, a unit past its intensity, one that stopped
    // itself) or stopped (stop_unit, stop_supervisor, shutdown). Returns the
    // reason of the first root that ended abnormally, for as long as this
    // runtime lives (a root supervisor that gave up counts as crashed, with
    // its message), else a normal reason; at once if no root runs. A pumped
    // runtime runs its fibers meanwhile: call it on its pumping thread. A
    // threaded one: from any thread but its own. Stopped roots count as
    // normal. `return keepsake::exit_code(rt.wait());` ends main with 0 or 1.
    exit_reason wait();

    // Kept by units and supervisors started as roots, for wait(): one began,
    // one ended (with how, or null for a start that did not happen).
    void root_began();
    void root_ended(const exit_reason* how);

    // Refuses (error invalid_argument) a wait from a thread where it would
    // never end: another thread than a pumped runtime's, or one of a
    // threaded runtime's own.
    void check_waiting_thread(const char* what) const;

    // What the stack pool did (all zero without one: pooled_stacks == 0).
    detail::stack_pool_stats stack_stats() const { return stacks_ ? stacks_->stats() : detail::stack_pool_stats{}; }
    // The stacks a worker's start runs on (detail/side_stack.hpp); null
    // without a stack pool.
    detail::stack_pool* side_stacks() const noexcept { return side_stacks_.get(); }

private:
    struct registered {
        std::type_index type;
        std::string (*describe)();
        std::weak_ptr<detail::named_process> who;
    };

    runtime_options options_;
    std::shared_ptr<keepsake::clock> time_;
    event_bus events_;
    std::shared_ptr<detail::stack_pool> stacks_;  // null when pooled_stacks == 0
    std::unique_ptr<detail::stack_pool> side_stacks_;  // null when pooled_stacks == 0
    std::shared_ptr<std::atomic<std::size_t>> ready_workers_ = std::make_shared<std::atomic<std::size_t>>(0);
    std::shared_ptr<detail::pump_budget> budget_ = std::make_shared<detail::pump_budget>();
    std::shared_ptr<detail::shared_ready_pool> shared_pool_ = std::make_shared<detail::shared_ready_pool>();
    std::atomic<std::size_t> live_fibers_{0};
    std::atomic<bool> shut_down_{false};
    detail::signal fibers_done_;
    // Each runtime thread launches the fibers other threads ask it for.
    struct launcher {
        detail::signal wake;
        std::vector<std::pair<std::function<void()>, std::size_t>> queue;  // under wake
        bool stopping = false;                                             // under wake
        std::atomic<bool> done{false};
    };
    std::vector<std::unique_ptr<launcher>> launchers_;
    std::atomic<std::size_t> next_launcher_{0};
    std::vector<std::thread> threads_;
    std::vector<std::thread::id> owner_threads_;
    mutable std::mutex registry_mutex_;
    std::unordered_map<std::string, registered> registry_;
    std::vector<std::shared_ptr<detail::root_process>> roots_;  // oldest first; null: a hole
    std::size_t root_holes_ = 0;
    detail::signal roots_changed_;                // wait(): a root ended
    std::size_t live_roots_ = 0;                  // under roots_changed_
    std::optional<exit_reason> first_abnormal_;   // under roots_changed_
    std::vector<const void*> segments_;  // under registry_mutex_: where its units keep state
    std::vector<std::pair<std::string, const void*>> key_spaces_;  // under registry_mutex_: prefix, directory
    std::uint64_t committer_id_ = 0;

    // Only a running holder is "already started": one that is not running
    // (stopped, or kept by a live handle) is "present", as OTP says.
    [[noreturn]] static void refuse_name(const std::string& name, const detail::named_process& holder);
    [[noreturn]] static void refuse_in_key_space(const std::string& name, const std::string& prefix);

    void check_pumping_thread(const char* what) const;

    void install_scheduler();

    void launch(std::function<void()> body, std::size_t stack_size);

    void fiber_ended();

    // Launches the fibers other threads ask this thread for, until stop.
    void launcher_loop(launcher& mine);

    void spawn_launcher();

    void start_threads();

    // An exporter of `segment` is going: if units of this runtime commit
    // into it, they stop now (as the destructor would stop them), so what
    // they commit while stopping is in its last pass. Not from one of this
    // runtime's own fibers, which would wait for itself; a pumped runtime
    // only from its pumping thread (nobody else runs its fibers).
    void stop_units_in(const void* segment);

    void stop_roots();
};

} // namespace keepsake

#ifdef KEEPSAKE_HEADER_ONLY
#include "keepsake/runtime-inl.hpp"
#endif
