// keepsake/unit.hpp: a supervised unit: a keeper (the committed state, in
// shared memory) paired with a restartable worker fiber and a mailbox.
//
// The worker runs the user's code against a live copy of the state and
// commits it to the keeper. When the worker crashes (an exception escapes),
// the unit restarts it in place on the same fiber, from the newest commit:
// the message that crashed is answered with worker_crashed, the messages
// queued behind it stay and are served by the restarted worker. Past its
// restart intensity (1000 restarts in 10 s by default) the unit gives up and
// its supervisor decides.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <boost/fiber/operations.hpp>

#include "keepsake/clock.hpp"
#include "keepsake/detail/child.hpp"
#include "keepsake/detail/signal.hpp"
#include "keepsake/error.hpp"
#include "keepsake/events.hpp"
#include "keepsake/keeper.hpp"
#include "keepsake/recovery.hpp"
#include "keepsake/restart_policy.hpp"
#include "keepsake/runtime.hpp"
#include "keepsake/segment.hpp"

namespace keepsake {

// When a message-driven unit commits the state its handlers changed. What a
// worker crash can lose: every_message nothing committed-before-reply; every
// N up to N-1 messages; interval up to that much time of changes; manual
// everything since the code last called commit(). A graceful stop commits.
struct commit_policy {
    enum class mode { every_message, every_n, interval, manual };
    mode when = mode::every_message;
    std::uint32_t n = 1;
    duration period{};

    static commit_policy every_message() { return {}; }
    static commit_policy every(std::uint32_t messages) { return {mode::every_n, messages, {}}; }
    static commit_policy every_interval(duration span) { return {mode::interval, 1, span}; }
    static commit_policy manual() { return {mode::manual, 1, {}}; }
};

// What the init hook is told on every (re)start of the worker.
struct start_info {
    std::uint64_t instance = 0;    // starts of the unit by its supervisor (1: first)
    std::uint64_t restarts = 0;    // worker restarts within this instance
    std::uint64_t generation = 0;  // the committed generation handed over (0: the initial state)
    bool restored = false;         // the state came from the keeper (or store), not from `initial`
    // Where the first start found it; restarts always take shared memory.
    recovery_source source = recovery_source::initial;
};

struct unit_stats {
    std::uint64_t instance = 0;
    std::uint64_t restarts = 0;     // worker restarts inside the unit, all instances
    std::uint64_t messages = 0;     // messages served
    std::uint64_t commits = 0;
    std::uint64_t generation = 0;   // newest committed generation
    duration uptime{};              // since the current instance started (runtime clock)
    std::size_t queued = 0;
};

template <class State>
class unit_context;

// Marks a unit without typed-message handlers (callables only).
struct no_handler {};

template <class State, class Handler = no_handler>
struct unit_spec {
    std::string name;  // the key in the segment, the name for whereis, the child id
    State initial{};
    // Typed messages: handler(State&, const Msg&) (or with a trailing
    // unit_context<State>&); taking const State& marks it read-only.
    Handler handler{};
    // Set for a loop worker: runs on the worker fiber until it returns.
    std::function<void(unit_context<State>&)> loop;
    // Called on every (re)start with the state handed over; may adjust it.
    std::function<void(State&, const start_info&)> init;
    const segment* where = nullptr;  // null: the runtime's default segment
    // A durable store (the one an exporter writes): the first start takes
    // the newest of shared memory and this store's record under
    // store_prefix + name (recover()), so the state survives a reboot.
    // Null: shared memory only.
    store* recover_from = nullptr;
    std::string store_prefix;  // as exporter_options::prefix
    keeper_options<State> keeper{};
    commit_policy commit{};
    restart_intensity intensity{1000, std::chrono::seconds(10)};
    restart_type restart = restart_type::permanent;
    shutdown_spec shutdown{};
    bool significant = false;
    duration call_timeout = std::chrono::seconds(5);
    std::size_t stack_size = 0;  // 0: the runtime's
    // A call from the worker's own thread, made while the worker sleeps on
    // an empty mailbox, runs on the caller's fiber: no queueing and no
    // context switch, with the same ordering, commit and crash handling (a
    // throw restarts the worker). Messages that take a unit_context always
    // run on the worker. false: every message runs on the worker fiber.
    bool direct_calls = true;
};

namespace detail {

// Thrown at a suspension point of a worker whose shutdown timed out. Not a
// std::exception, so `catch (const std::exception&)` lets it through.
struct forced_stop {};

// Thrown by unit_context::crash().
class crash_request : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

template <class F, class = void>
struct has_plain_call_operator : std::false_type {};
template <class F>
struct has_plain_call_operator<F, std::void_t<decltype(&F::operator())>> : std::true_type {};

// Does `f` take the state read-only? Generic lambdas count as writers (their
// bodies are not instantiated just to ask).
template <class F, class State, class Context>
constexpr bool reads_only() {
    if constexpr (std::is_pointer_v<F> || has_plain_call_operator<F>::value)
        return std::is_invocable_v<F&, const State&> || std::is_invocable_v<F&, const State&, Context&>;
    else
        return false;
}

template <class F, class State, class Context>
constexpr bool is_state_callable() {
    return std::is_invocable_v<F&, State&> || std::is_invocable_v<F&, State&, Context&>;
}

template <class F, class State, class Context>
auto invoke_on_state(F& f, State& state, Context& context) -> decltype(auto) {
    if constexpr (std::is_invocable_v<F&, State&, Context&>) return f(state, context);
    else return f(state);
}

template <class F, class State, class Context>
using state_call_result = decltype(invoke_on_state(std::declval<F&>(), std::declval<State&>(), std::declval<Context&>()));

template <class Handler, class Message, class State, class Context>
auto invoke_handler(Handler& handler, const Message& message, State& state, Context& context) -> decltype(auto) {
    if constexpr (std::is_invocable_v<Handler&, State&, const Message&, Context&>) return handler(state, message, context);
    else return handler(state, message);
}

template <class State, class Handler>
class unit_core;

} // namespace detail

// What a worker's code sees: the live state, commit, and the suspension
// points (where queued messages are served and stop requests take effect).
template <class State>
class unit_context {
public:
    State& state() noexcept { return *state_; }
    const std::string& name() const noexcept { return host_->context_name(); }
    // Commits the state now; returns its generation.
    std::uint64_t commit() { return host_->context_commit(); }
    // Serves queued messages, lets other fibers run.
    void yield() { host_->context_yield(); }
    // Serves queued messages, then sleeps on the runtime's clock (ends early
    // when a stop is requested).
    void sleep_for(duration span) { host_->context_sleep(span); }
    bool stop_requested() const noexcept { return host_->context_stop_requested(); }
    // Crashes the worker on purpose: it restarts from the last commit.
    [[noreturn]] void crash(const std::string& reason) { throw detail::crash_request(reason); }

    // The worker side of a unit (implemented by the unit).
    class host {
    public:
        virtual const std::string& context_name() const noexcept = 0;
        virtual std::uint64_t context_commit() = 0;
        virtual void context_yield() = 0;
        virtual void context_sleep(duration span) = 0;
        virtual bool context_stop_requested() const noexcept = 0;

    protected:
        ~host() = default;
    };

    unit_context(host& owner, State& state) : host_(&owner), state_(&state) {}

private:
    host* host_;
    State* state_;
};

namespace detail {

template <class State, class Handler>
class unit_core final : public supervised_actor,
                        public unit_context<State>::host,
                        public std::enable_shared_from_this<unit_core<State, Handler>> {
public:
    using spec_type = unit_spec<State, Handler>;
    using context_type = unit_context<State>;

    unit_core(runtime& where, spec_type spec)
        : supervised_actor(where, spec.name, spec.shutdown, spec.stack_size), spec_(std::move(spec)),
          state_(spec_.initial),
          log_(spec_.intensity), context_(*this, state_) {
        check_spec();
    }

    ~unit_core() override { runtime_.unregister_name(name(), this); }

    // --- callers' side ---------------------------------------------------
    template <class Message>
    auto call(Message&& message, duration timeout) {
        using M = std::decay_t<Message>;
        if constexpr (is_state_callable<M, State, context_type>()) {
            using R = state_call_result<M, State, context_type>;
            constexpr bool on_worker = std::is_invocable_v<M&, State&, context_type&>;
            if constexpr (!on_worker)
                if (borrow_turn() && serve_backlog_in_turn())
                    return serve_borrowed<R>([&]() -> decltype(auto) { return invoke_on_state(message, state_, context_); },
                                             reads_only<M, State, context_type>());
            return this->template request<R>(callable_job<R, M>{std::forward<Message>(message)}, timeout, on_worker);
        } else {
            using R = handler_result<M>;
            constexpr bool on_worker = handler_takes_context<M>();
            if constexpr (!on_worker)
                if (borrow_turn() && serve_backlog_in_turn())
                    return serve_borrowed<R>(
                        [&]() -> decltype(auto) { return invoke_handler(spec_.handler, message, state_, context_); },
                        handler_reads_only<M>());
            return this->template request<R>(handler_job<R, M>{std::forward<Message>(message)}, timeout, on_worker);
        }
    }

    template <class Message>
    void cast(Message&& message) {
        using M = std::decay_t<Message>;
        if constexpr (is_state_callable<M, State, context_type>()) {
            using R = state_call_result<M, State, context_type>;
            this->post(callable_job<R, M>{std::forward<Message>(message)}, std::is_invocable_v<M&, State&, context_type&>);
        } else {
            this->post(handler_job<handler_result<M>, M>{std::forward<Message>(message)}, handler_takes_context<M>());
        }
    }

    duration call_timeout() const noexcept { return spec_.call_timeout; }

    unit_stats stats() const {
        unit_stats out;
        out.instance = instance();
        out.restarts = restarts_.load(std::memory_order_relaxed);
        out.messages = messages_.load(std::memory_order_relaxed);
        out.commits = commits_.load(std::memory_order_relaxed);
        out.generation = generation_.load(std::memory_order_relaxed);
        out.uptime = uptime();
        out.queued = queued();
        return out;
    }

    std::uint64_t add_state_listener(std::function<void(const State&, const State&)> on_change) {
        return state_changed_.add(std::move(on_change));
    }
    std::uint64_t add_terminate_listener(std::function<void(const exit_reason&, const State&)> on_end) {
        return terminated_.add(std::move(on_end));
    }
    void remove_listener(std::uint64_t id) {
        state_changed_.remove(id);
        terminated_.remove(id);
    }

    child_kind kind() const noexcept override { return child_kind::worker; }

    void forget() override {
        supervised_actor::forget();
        keeper_.reset();  // the key is free for a new unit of that name
    }

    // --- the worker side (called from jobs and the context) --------------
    template <class R, class F>
    void serve_callable(F& callable, reply_cell* reply) {
        serve<R>([&]() -> decltype(auto) { return invoke_on_state(callable, state_, context_); },
                 reads_only<F, State, context_type>(), reply);
    }

    template <class R, class M>
    void serve_message(const M& message, reply_cell* reply) {
        serve<R>([&]() -> decltype(auto) { return invoke_handler(spec_.handler, message, state_, context_); },
                 handler_reads_only<M>(), reply);
    }

    const std::string& context_name() const noexcept override { return name(); }
    std::uint64_t context_commit() override { return commit_now(); }
    bool context_stop_requested() const noexcept override { return stop_requested(); }

    void context_yield() override {
        check_forced();
        serve_queued(serve_batch);
        boost::this_fiber::yield();
        check_forced();
    }

    // Messages that arrive during the sleep are served at once; the sleep
    // then goes on to its deadline.
    void context_sleep(duration span) override {
        const duration deadline = runtime_.clock().now() + span;
        for (;;) {
            check_forced();
            serve_queued(serve_batch);
            if (context_stop_requested()) return;
            if (!mailbox_.wait_until(runtime_.clock(), deadline, [&] { return context_stop_requested(); })) break;
        }
        check_forced();
    }

private:
    static constexpr std::size_t serve_batch = 64;

    // Runs one message, commits per the policy, then answers: the reply is
    // never sent before the commit that makes it true.
    template <class R, class Invoke>
    void serve(Invoke&& invoke, bool read_only, reply_cell* reply) {
        if constexpr (std::is_void_v<R>) {
            invoke();
            after_message(read_only);
            answer_value<R>(reply, std::monostate{});
        } else {
            R result = invoke();
            after_message(read_only);
            answer_value<R>(reply, std::move(result));
        }
    }

    template <class M>
    static constexpr bool handler_reads_only() {
        return std::is_invocable_v<Handler&, const State&, const M&> ||
               std::is_invocable_v<Handler&, const State&, const M&, context_type&>;
    }

    template <class M>
    static constexpr bool handler_takes_context() {
        return std::is_invocable_v<Handler&, State&, const M&, context_type&> ||
               std::is_invocable_v<Handler&, const State&, const M&, context_type&>;
    }

    // Takes the idle worker's turn for a call from its own thread (see
    // unit_spec::direct_calls). The fiber running the messages stands in as
    // the server, so a message that calls its own unit is still refused.
    bool borrow_turn() {
        if (!spec_.direct_calls) return false;
        boost::fibers::context* caller = boost::fibers::context::active();
        if (caller->get_scheduler() != server_scheduler_.load(std::memory_order_relaxed)) return false;
        if (caller == server_.load(std::memory_order_relaxed)) return false;
        if (state() != child_state::running || stop_requested() || ended_in_turn_ || !mailbox_.try_borrow())
            return false;
        lender_ = server_.exchange(caller, std::memory_order_relaxed);
        return true;
    }

    void return_turn() {
        server_.store(lender_, std::memory_order_relaxed);
        mailbox_.give_back(ended_in_turn_.has_value() || stop_requested());
    }

    // In a borrowed turn, first serves what was queued before the call (it
    // is older), restarting in place after a crash as the worker would.
    // False if the turn went back to the worker (the unit is ending): the
    // call then queues, as it would have.
    bool serve_backlog_in_turn() {
        while (mailbox_.pop(inflight_, true)) {
            if (serve_inflight()) {
                finish_inflight();
            } else if (!restart_in_turn()) {
                return false;
            }
            if (stop_requested()) {
                return_turn();
                return false;
            }
        }
        return true;
    }

    // A crash in a borrowed turn (reason in crash_reason_): the restart is
    // done here, from the last commit, unless the unit gives up or is
    // stopping; then the worker ends the instance, and the turn goes back.
    bool restart_in_turn() {
        for (;;) {
            if (std::optional<exit_reason> ended = on_crash(crash_reason_)) {
                ended_in_turn_ = std::move(*ended);
                return_turn();
                // As a queued call's caller would, go on once the worker took it.
                while (ended_in_turn_) boost::this_fiber::yield();
                return false;
            }
            // A restart that throws (the init hook) is another crash, as on the worker.
            try {
                hand_over_state(instance());
                return true;
            } catch (const std::exception& thrown) {
                crash_reason_ = thrown.what();
            } catch (...) {
                crash_reason_ = "an exception not derived from std::exception";
            }
        }
    }

    // Runs the caller's own message in the borrowed turn. A throw is the
    // worker's crash: restarted from the last commit, and the caller gets
    // worker_crashed.
    template <class R, class Invoke>
    R serve_borrowed(Invoke&& invoke, bool read_only) {
        try {
            if constexpr (std::is_void_v<R>) {
                invoke();
                after_message(read_only);
                return_turn();
                return;
            } else {
                R result = invoke();
                after_message(read_only);
                return_turn();
                return result;
            }
        } catch (const std::exception& thrown) {
            crash_reason_ = thrown.what();
        } catch (...) {
            crash_reason_ = "an exception not derived from std::exception";
        }
        worker_crashed failure(name(), crash_reason_);
        if (restart_in_turn()) return_turn();
        throw failure;
    }

    template <class M>
    using handler_result = decltype(invoke_handler(std::declval<Handler&>(), std::declval<const M&>(),
                                                   std::declval<State&>(), std::declval<context_type&>()));

    template <class R, class F>
    struct callable_job {
        F callable;
        void operator()(void* target, reply_cell* reply) {
            static_cast<unit_core*>(static_cast<actor*>(target))->template serve_callable<R>(callable, reply);
        }
    };

    template <class R, class M>
    struct handler_job {
        M message;
        void operator()(void* target, reply_cell* reply) {
            static_cast<unit_core*>(static_cast<actor*>(target))->template serve_message<R>(message, reply);
        }
    };

    spec_type spec_;
    State state_;
    std::optional<keeper<State>> keeper_;
    std::optional<State> last_committed_;  // for on_state_changed(old, new)
    restart_log log_;
    context_type context_;
    std::atomic<std::uint64_t> restarts_{0};
    std::atomic<std::uint64_t> messages_{0};
    std::atomic<std::uint64_t> commits_{0};
    std::atomic<std::uint64_t> generation_{0};
    std::uint64_t restarts_this_instance_ = 0;
    std::uint32_t uncommitted_messages_ = 0;
    duration last_commit_at_{};
    bool dirty_ = false;
    // The last crash's reason, and how an instance ended in a borrowed turn
    // (the worker finishes it). Touched on the worker's thread only
    // (borrowers run there).
    std::string crash_reason_;
    std::optional<exit_reason> ended_in_turn_;
    boost::fibers::context* lender_ = nullptr;  // the worker, while its turn is lent
    listener_list<const State&, const State&> state_changed_;
    listener_list<const exit_reason&, const State&> terminated_;

    void check_spec() const {
        if (spec_.commit.when == commit_policy::mode::every_n && spec_.commit.n == 0)
            throw error(errc::invalid_argument, "unit '" + name() + "': commit_policy::every(n) needs n >= 1");
        if (spec_.commit.when == commit_policy::mode::interval && spec_.commit.period <= duration::zero())
            throw error(errc::invalid_argument, "unit '" + name() + "': commit_policy::every_interval needs a positive period");
        check_intensity(spec_.intensity, "unit '" + name() + "'");
        if (spec_.call_timeout <= duration::zero())
            throw error(errc::invalid_argument, "unit '" + name() + "': call_timeout must be positive");
    }

    const segment& segment_to_use() const {
        const segment* chosen = spec_.where != nullptr ? spec_.where : runtime_.options().default_segment;
        if (chosen == nullptr)
            throw error(errc::invalid_argument, "unit '" + name() +
                                                    "' has no segment: set unit_spec::where or "
                                                    "runtime_options::default_segment");
        return *chosen;
    }

    std::shared_ptr<supervised_actor> self_pointer() override { return this->shared_from_this(); }

    void check_forced() const {
        if (forced()) throw forced_stop{};
    }

    // Newest commit (on the first start, of shared memory and the store),
    // else the initial state; then the init hook, whose changes count as
    // uncommitted changes.
    void hand_over_state(std::uint64_t number) {
        const bool first = !keeper_;
        if (first) keeper_.emplace(segment_to_use(), name(), spec_.keeper);
        start_info info;
        info.instance = number;
        info.restarts = restarts_this_instance_;
        if (first && spec_.recover_from != nullptr) {
            recovered<State> found = recover(*keeper_, *spec_.recover_from, spec_.initial, spec_.store_prefix);
            state_ = std::move(found.value);
            info.source = found.source;
            info.generation = found.generation;
            info.restored = found.source != recovery_source::initial;
        } else if (auto found = keeper_->restore_into(state_)) {
            info.generation = found->generation;
            info.restored = true;
            info.source = recovery_source::shared_memory;
        } else {
            state_ = spec_.initial;
        }
        generation_.store(keeper_->generation(), std::memory_order_relaxed);
        dirty_ = false;
        if (spec_.init) {
            spec_.init(state_, info);
            dirty_ = true;
        }
        uncommitted_messages_ = 0;
        if (spec_.commit.when == commit_policy::mode::interval) last_commit_at_ = runtime_.clock().now();
        if (state_changed_.any()) last_committed_ = state_;
    }

    std::uint64_t commit_now() {
        const std::uint64_t generation = keeper_->commit(state_);
        dirty_ = false;
        uncommitted_messages_ = 0;
        bump(commits_);
        generation_.store(generation, std::memory_order_relaxed);
        if (spec_.commit.when == commit_policy::mode::interval) last_commit_at_ = runtime_.clock().now();
        if (state_changed_.any()) {
            if (last_committed_) state_changed_.notify(*last_committed_, state_);
            last_committed_ = state_;
        }
        return generation;
    }

    // Counters written by the worker only: no locked instruction needed.
    static void bump(std::atomic<std::uint64_t>& counter) noexcept {
        counter.store(counter.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }

    void after_message(bool read_only) {
        bump(messages_);
        if (read_only) return;
        dirty_ = true;
        ++uncommitted_messages_;
        switch (spec_.commit.when) {
        case commit_policy::mode::every_message: commit_now(); break;
        case commit_policy::mode::every_n:
            if (uncommitted_messages_ >= spec_.commit.n) commit_now();
            break;
        case commit_policy::mode::interval:
            if (runtime_.clock().now() - last_commit_at_ >= spec_.commit.period) commit_now();
            break;
        case commit_policy::mode::manual: break;
        }
    }

    enum class served { stopped, crashed, ended_in_turn };

    // Serves messages until a stop is requested, a message crashes (the
    // reason is in crash_reason_), or a borrowed turn ended the instance.
    served serve_mailbox() {
        auto stop_or_end = [&] { return ended_in_turn_ || (context_stop_requested() && !mailbox_.lent()); };
        for (;;) {
            if (ended_in_turn_) return served::ended_in_turn;
            if (mailbox_.pop(inflight_)) {
                if (!serve_inflight()) return served::crashed;
                finish_inflight();
                if (context_stop_requested()) return served::stopped;
                continue;
            }
            if (context_stop_requested() && !mailbox_.lent()) return served::stopped;
            mailbox_.wait_until(runtime_.clock(), forever, stop_or_end, spec_.direct_calls);
        }
    }

    // Caught here, next to the throw, rather than at the top of the
    // instance: a crash then unwinds a few frames, not the whole worker.
    bool serve_inflight() {
        try {
            inflight_.run(static_cast<actor*>(this));
            return true;
        } catch (const std::exception& thrown) {  // first: the common case matches at once
            crash_reason_ = thrown.what();
        } catch (const forced_stop&) {
            throw;
        } catch (...) {
            crash_reason_ = "an exception not derived from std::exception";
        }
        return false;
    }

    served run_body() {
        if (spec_.loop) {
            spec_.loop(context_);
            return served::stopped;
        }
        return serve_mailbox();
    }

    // Events about this unit's own worker.
    void publish(event_kind kind, exit_kind reason_kind, std::string_view reason) const {
        supervised_actor::publish(kind, name(), instance(), reason_kind, reason);
    }

    // A crash inside the instance: answer the call that crashed, forget the
    // uncommitted changes, and restart in place unless that is too often.
    // Returns the exit reason when the unit gives up (or is stopping).
    std::optional<exit_reason> on_crash(std::string_view what) {
        if (inflight_.reply() != nullptr)
            fail_inflight(std::make_exception_ptr(worker_crashed(name(), std::string(what))));
        else
            finish_inflight();
        dirty_ = false;
        if (terminated_.any()) terminated_.notify(exit_reason{exit_kind::crashed, std::string(what)}, state_);
        publish(event_kind::exited, exit_kind::crashed, what);
        if (context_stop_requested()) return exit_reason{exit_kind::shutdown, "stopped while restarting"};
        if (!log_.allow(runtime_.clock().now())) {
            publish(event_kind::gave_up, exit_kind::crashed, what);
            return exit_reason{exit_kind::crashed, "gave up after " + std::to_string(spec_.intensity.max_restarts) +
                                                       " restarts within the period; last crash: " + std::string(what)};
        }
        ++restarts_this_instance_;
        bump(restarts_);
        publish(event_kind::restarted, exit_kind::crashed, what);
        return std::nullopt;
    }

    // The worker's life in one instance: restarted in place after each
    // crash until it stops or gives up.
    exit_reason run_instance(std::uint64_t number) override {
        restarts_this_instance_ = 0;
        log_.clear();
        for (;;) {
            std::optional<exit_reason> ended;
            try {
                hand_over_state(number);
                if (!started()) report_started();
                switch (run_body()) {
                case served::crashed: ended = on_crash(crash_reason_); break;
                case served::ended_in_turn:
                    ended = std::move(ended_in_turn_);
                    ended_in_turn_.reset();
                    break;
                case served::stopped:
                    ended = exit_reason{stopped_by_parent() ? exit_kind::shutdown : exit_kind::normal,
                                        stop_requested() ? "stopped on request" : "the worker returned"};
                    break;
                }
            } catch (const forced_stop&) {
                fail_inflight(not_running_failure());
                ended = exit_reason{exit_kind::killed, "forced to stop after its shutdown timeout"};
            } catch (const std::exception& thrown) {
                if (!started()) throw;
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

    void finish_instance(const exit_reason& reason) {
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
};

} // namespace detail

// A handle to a unit; cheap to copy, safe to use from any thread.
template <class State, class Handler = no_handler>
class unit {
public:
    using core_type = detail::unit_core<State, Handler>;

    unit() = default;
    explicit unit(std::shared_ptr<core_type> core) : core_(std::move(core)) {}

    // Runs a message on the worker and returns its result: a callable
    // (State&) / (const State&) / (State&, unit_context<State>&), or a typed
    // message for the unit's handler. Throws worker_crashed if the worker
    // crashed serving it, error(not_running) if the unit is stopped,
    // error(timeout) after the spec's call_timeout.
    template <class Message>
    auto call(Message&& message) {
        return core().call(std::forward<Message>(message), core().call_timeout());
    }

    template <class Message>
    auto call_for(Message&& message, duration timeout) {
        return core().call(std::forward<Message>(message), timeout);
    }

    // Queues a message and returns at once.
    template <class Message>
    void cast(Message&& message) {
        core().cast(std::forward<Message>(message));
    }

    const std::string& name() const { return core().name(); }
    child_state state() const { return core().state(); }
    unit_stats stats() const { return core().stats(); }

    // Called on the worker after each commit with the previous and the new
    // committed state, in commit order.
    std::uint64_t on_state_changed(std::function<void(const State&, const State&)> listener) {
        return core().add_state_listener(std::move(listener));
    }
    // Called on the worker each time it ends (crash or stop), with the
    // reason and the worker's state at that moment.
    std::uint64_t on_terminate(std::function<void(const exit_reason&, const State&)> listener) {
        return core().add_terminate_listener(std::move(listener));
    }
    void remove_listener(std::uint64_t id) { core().remove_listener(id); }

    explicit operator bool() const noexcept { return static_cast<bool>(core_); }
    const std::shared_ptr<core_type>& shared_core() const noexcept { return core_; }

private:
    std::shared_ptr<core_type> core_;

    core_type& core() const {
        if (!core_) throw error(errc::not_found, "empty keepsake::unit handle");
        return *core_;
    }
};

namespace detail {

// Creates a unit's core and registers its name (a supervisor does this for
// its children; start_unit for a unit of its own).
template <class State, class Handler>
std::shared_ptr<unit_core<State, Handler>> make_unit_core(runtime& where, unit_spec<State, Handler> spec) {
    return make_registered<unit_core<State, Handler>>(where, std::move(spec));
}

} // namespace detail

// Starts a unit with no supervisor above it. When it gives up it stops, and
// calls to it fail with not_running. The runtime stops it when it goes.
template <class State, class Handler>
unit<State, Handler> start_unit(runtime& where, unit_spec<State, Handler> spec) {
    auto core = detail::make_unit_core(where, std::move(spec));
    std::weak_ptr<detail::unit_core<State, Handler>> weak = core;
    core->start([weak](std::uint64_t, const exit_reason&) {
        if (auto alive = weak.lock()) alive->discard();
    });
    where.add_root(core);
    return unit<State, Handler>(core);
}

// Stops a unit started with start_unit (by its shutdown spec).
template <class State, class Handler>
void stop_unit(runtime& where, unit<State, Handler>& which) {
    if (!which) return;
    which.shared_core()->stop_root();
    where.remove_root(which.shared_core().get());
}

// The unit registered under `name` with this state and handler type.
template <class State, class Handler = no_handler>
std::optional<unit<State, Handler>> whereis(const runtime& where, const std::string& name) {
    auto core = where.find_registered<detail::unit_core<State, Handler>>(name);
    if (!core) return std::nullopt;
    return unit<State, Handler>(std::move(core));
}

} // namespace keepsake
