// keepsake/detail/unit_core.hpp: the unit's machinery behind the handle in
// keepsake/unit.hpp: the worker's life (restart in place from the newest
// commit, give-up past the intensity), serving messages, direct calls.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <boost/fiber/operations.hpp>

#include "keepsake/clock.hpp"
#include "keepsake/crash_reports.hpp"
#include "keepsake/detail/child.hpp"
#include "keepsake/detail/listeners.hpp"
#include "keepsake/detail/parking.hpp"
#include "keepsake/detail/signal.hpp"
#include "keepsake/detail/type_breaker.hpp"
#include "keepsake/detail/unit_registration.hpp"
#include "keepsake/error.hpp"
#include "keepsake/events.hpp"
#include "keepsake/keeper.hpp"
#include "keepsake/recovery.hpp"
#include "keepsake/restart_policy.hpp"
#include "keepsake/runtime.hpp"
#include "keepsake/segment.hpp"
#include "keepsake/unit_context.hpp"
#include "keepsake/unit_spec.hpp"

namespace keepsake {
namespace detail {

template <class State, class Handler>
class unit_core final : public supervised_actor,
                        public unit_context<State>::host,
                        public std::enable_shared_from_this<unit_core<State, Handler>> {
public:
    using spec_type = unit_spec<State, Handler>;
    using context_type = unit_context<State>;

private:
    struct own_spec {
        Handler handler;
        std::shared_ptr<const spec_type> spec;
        std::string name;
    };
    // A spec of the unit's own: its handler moved out first, so a handler
    // that cannot be copied works (start_unit).
    static own_spec take(spec_type&& spec) {
        Handler handler = std::move(spec.handler);
        std::string name = spec.name;
        return {std::move(handler), std::make_shared<const spec_type>(std::move(spec)), std::move(name)};
    }
    unit_core(runtime& where, own_spec parts)
        : unit_core(where, std::move(parts.spec), std::move(parts.name), std::move(parts.handler)) {}

public:
    unit_core(runtime& where, spec_type spec) : unit_core(where, take(std::move(spec))) {}

    // A spec shared with others (a supervisor's child spec, a directory's
    // objects): a unit keeps a pointer to it, not a copy, and a copy of its
    // handler; `name` is its own. The spec's other callables (loop, init,
    // initial_for, keeper.upgrade) are shared: units of one spec on several
    // threads may call them at once.
    unit_core(runtime& where, std::shared_ptr<const spec_type> spec) : unit_core(where, spec, spec->name) {}
    unit_core(runtime& where, std::shared_ptr<const spec_type> spec, std::string name)
        : unit_core(where, spec, std::move(name), Handler(spec->handler)) {}
    unit_core(runtime& where, std::shared_ptr<const spec_type> spec, std::string name, Handler handler)
        : supervised_actor(where, std::move(name)), spec_(std::move(spec)),
          handler_(std::move(handler)), state_(spec_->initial_for ? State{} : spec_->initial),
          context_(*this, state_), dirty_(false), handed_over_once_(false), reason_lost_(false),
          served_since_start_(false), registration_(breaker_of(*spec_)) {
        check_spec();
    }

    ~unit_core() override {
        runtime_.unregister_name(name(), this);
    }

    void fill_counters(metered_counters& out) const override {  // keepsake/metrics.hpp
        const unit_stats now = stats();
        out.name = name();
        out.state = to_string(state());
        out.instance = now.instance;
        out.restarts = now.restarts;
        out.crashes = now.crashes;
        out.messages = now.messages;
        out.commits = now.commits;
        out.generation = now.generation;
        out.queued = now.queued;
        out.uptime_seconds = std::chrono::duration<double>(now.uptime).count();
    }

    // --- callers' side ---------------------------------------------------
    template <class Message>
    auto call(Message&& message, duration timeout) {
        return call_as<false>(std::forward<Message>(message), timeout);
    }

    // The same, returning a call_result: a crash, a stopped unit or a
    // timeout is reported without an exception.
    template <class Message>
    auto try_call(Message&& message, duration timeout) {
        return call_as<true>(std::forward<Message>(message), timeout);
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

    duration call_timeout() const noexcept { return spec_->call_timeout; }

    unit_stats stats() const {
        unit_stats out;
        out.instance = instance();
        out.restarts = restarts_.load(std::memory_order_relaxed);
        out.messages = messages_.load(std::memory_order_relaxed);
        out.commits = commits_.load(std::memory_order_relaxed);
        out.crashes = crashes_.load(std::memory_order_relaxed);
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

    // For the name registry's errors: the types whereis must be given.
    static std::string type_description() {
        return "a unit of State " + readable_type_name(typeid(State)) + " and Handler " +
               readable_type_name(typeid(Handler));
    }

    void forget() override {
        supervised_actor::forget();
        keeper_.reset();  // the key is free for a new unit of that name
        registration_.detach();
    }

    void place(const placement& where) override {
        if (placement_) *placement_ = where;
        else placement_ = std::make_unique<placement>(where);
    }

    void retire(unit_status status, bool remove_key) override {
        if (!registration_.attached()) return;
        if (!remove_key) return registration_.set_status(status);
        keeper_.reset();
        registration_.remove_all(name());
    }

    std::optional<std::string> refused_start() const override {
        if (!crash_notes_) return std::nullopt;
        return crash_notes_->refused;
    }

    // --- the worker side (called from jobs and the context) --------------
    template <class R, class F>
    void serve_callable(F& callable, reply_cell* reply) {
        serve<R>([&]() -> decltype(auto) { return invoke_on_state(callable, state_, context_); },
                 reads_only<F, State, context_type>(), reply);
    }

    template <class R, class M>
    void serve_message(const M& message, reply_cell* reply) {
        serve<R>([&]() -> decltype(auto) { return invoke_handler(handler_, message, state_, context_); },
                 handler_reads_only<M>(), reply);
    }

    const std::string& context_name() const noexcept override { return name(); }
    std::uint64_t context_commit() override { return commit_now(); }
    bool context_stop_requested() const noexcept override {
        return stop_requested() || stopping_itself_.load(std::memory_order_relaxed);
    }
    void context_stop_self() noexcept override { stopping_itself_.store(true, std::memory_order_relaxed); }
    keeper<State>& context_keeper() override { return *keeper_; }

    void context_yield() override {
        check_forced();
        serve_during_handler(serve_batch);
        boost::this_fiber::yield();
        check_forced();
    }

    // Messages that arrive during the sleep are served at once; the sleep
    // then goes on to its deadline.
    void context_sleep(duration span) override {
        const duration deadline = runtime_.clock().now() + span;
        for (;;) {
            check_forced();
            serve_during_handler(serve_batch);
            if (context_stop_requested()) return;
            if (!mailbox_.wait_until(runtime_.clock(), deadline, [&] { return context_stop_requested(); })) break;
        }
        check_forced();
    }

private:
    static constexpr std::size_t serve_batch = 64;

    // Serves queued messages from a yield or a sleep. In a loop nothing is
    // in flight; in a message's handler that message is, and the handler
    // still reads it, so the others are served beside it, never over it.
    // One that throws is answered worker_crashed and its exception goes on
    // into the handler that yielded (crashing the worker, unless it
    // catches it).
    std::size_t serve_during_handler(std::size_t limit) {
        if (inflight_->empty()) return serve_queued(limit);
        message nested;
        std::size_t served = 0;
        while (served < limit && mailbox_.pop(nested)) {
            try {
                nested.run(static_cast<actor*>(this));
            } catch (const forced_stop&) {
                fail(nested, not_running_failure());
                throw;
            } catch (const std::exception& thrown) {
                crash(nested, thrown.what(), !context_stop_requested());
                throw;
            } catch (...) {
                crash(nested, "an exception not derived from std::exception", !context_stop_requested());
                throw;
            }
            finish(nested);
            ++served;
        }
        return served;
    }

    // A call, answered with R (errors thrown), or with call_result<R> (Try).
    template <bool Try, class Message>
    auto call_as(Message&& message, duration timeout) {
        using M = std::decay_t<Message>;
        if constexpr (is_state_callable<M, State, context_type>()) {
            using R = state_call_result<M, State, context_type>;
            constexpr bool on_worker = std::is_invocable_v<M&, State&, context_type&>;
            if constexpr (!on_worker)
                if (borrow_turn() && serve_backlog_in_turn())
                    return serve_borrowed<Try, R>(
                        [&]() -> decltype(auto) { return invoke_on_state(message, state_, context_); },
                        reads_only<M, State, context_type>());
            return request_as<Try, R>(callable_job<R, M>{std::forward<Message>(message)}, timeout, on_worker);
        } else {
            using R = handler_result<M>;
            constexpr bool on_worker = handler_takes_context<M>();
            if constexpr (!on_worker)
                if (borrow_turn() && serve_backlog_in_turn())
                    return serve_borrowed<Try, R>(
                        [&]() -> decltype(auto) { return invoke_handler(handler_, message, state_, context_); },
                        handler_reads_only<M>());
            return request_as<Try, R>(handler_job<R, M>{std::forward<Message>(message)}, timeout, on_worker);
        }
    }

    template <bool Try, class R, class Job>
    auto request_as(Job&& job, duration timeout, bool on_worker) {
        if constexpr (Try) return this->template try_request<R>(std::forward<Job>(job), timeout, on_worker);
        else return this->template request<R>(std::forward<Job>(job), timeout, on_worker);
    }

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

    // --- the borrowed turn (detail/unit_turn.hpp) -----------------------
    // Takes the idle worker's turn for a call from its own thread (see
    // unit_spec::direct_calls). The fiber running the messages stands in as
    // the server, so a message that calls its own unit is still refused.
    bool borrow_turn();
    void return_turn();
    // In a borrowed turn, first serves what was queued before the call (it
    // is older), restarting in place after a crash as the worker would.
    // False if the turn went back to the worker (the unit is ending, or a
    // queued message must run on the worker): the call then queues, as it
    // would have.
    bool serve_backlog_in_turn();
    // A crash in a borrowed turn (reason in crash_reason()): the restart is
    // done here, from the last commit, unless the unit gives up or is
    // stopping; then the worker ends the instance, and the turn goes back.
    bool restart_in_turn();
    // Hands the end of the instance to the worker, with the turn.
    void end_instance_in_turn(exit_reason ended);
    // Runs the caller's own message in the borrowed turn. A throw is the
    // worker's crash: restarted from the last commit, and the caller gets
    // worker_crashed: thrown, or (Try) in the call_result returned, which
    // costs no second exception.
    template <bool Try, class R, class Invoke>
    std::conditional_t<Try, call_result<R>, R> serve_borrowed(Invoke&& invoke, bool read_only);
    // After a crash in a borrowed call: restarts in place (or ends the
    // instance) and gives the turn back, then swaps the crash's reason into
    // `reason`.
    bool restart_after_call(std::string& reason);

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

    std::shared_ptr<const spec_type> spec_;  // shared with the units of one spec
    Handler handler_;  // its own copy: a handler may keep state of its own
    State state_;
    std::optional<keeper<State>> keeper_;
    // For on_state_changed(old, new); on the heap, and only while watched:
    // an idle unit nobody watches carries one copy of its state fewer.
    std::unique_ptr<State> last_committed_;
    restart_log log_;
    context_type context_;
    std::atomic<std::uint64_t> restarts_{0};
    std::atomic<std::uint64_t> messages_{0};
    std::atomic<std::uint64_t> commits_{0};
    std::atomic<std::uint64_t> crashes_{0};
    std::atomic<std::uint64_t> generation_{0};
    std::uint64_t restarts_this_instance_ = 0;
    duration last_commit_at_{};
    // The small members side by side, in one word (every idle unit holds
    // them). The bit-fields are the worker's thread's only (borrowers run
    // there), set in the constructor (C++17 gives them no initializers).
    std::uint32_t uncommitted_messages_ = 0;
    std::atomic<bool> stopping_itself_{false};  // stop_self() was called in this (re)start
    bool dirty_ : 1;
    bool handed_over_once_ : 1;
    bool reason_lost_ : 1;         // out of memory when the last crash's reason was to be kept
    bool served_since_start_ : 1;  // a message was served since the last (re)start
    // The last crash's reason, how an instance ended in a borrowed turn
    // (the worker finishes it), and why the registry declined its last
    // start: made by the first that needs them and kept (most units never
    // crash; an idle one carries a pointer, not the notes). Written on the
    // worker's thread only (borrowers run there); a refusal is read by the
    // starter once the start has ended.
    struct crash_notes {
        std::string reason;
        std::optional<exit_reason> ended_in_turn;
        std::optional<std::string> refused;
    };
    std::unique_ptr<crash_notes> crash_notes_;
    boost::fibers::context* lender_ = nullptr;  // the worker, while its turn is lent
    listener_list<const State&, const State&> state_changed_;
    listener_list<const exit_reason&, const State&> terminated_;
    unit_registration registration_;  // its record in the segment's unit registry
    // Where a supervisor placed it; null for a unit started on its own and
    // for every object (a pointer in each, not the 24-byte placement).
    std::unique_ptr<placement> placement_;

    void check_spec() const {
        if (spec_->commit.when == commit_policy::mode::every_n && spec_->commit.n == 0)
            throw error(errc::invalid_argument, "unit '" + name() + "': commit_policy::every(n) needs n >= 1");
        if (spec_->commit.when == commit_policy::mode::interval && spec_->commit.period <= duration::zero())
            throw error(errc::invalid_argument, "unit '" + name() + "': commit_policy::every_interval needs a positive period");
        const auto owner = [this] { return "unit '" + name() + "'"; };
        check_intensity(spec_->intensity, owner);
        check_shutdown(spec_->shutdown, owner);
        if (spec_->threshold && spec_->threshold->crashes > crash_history_size)
            throw error(errc::invalid_argument, "unit '" + name() + "': crash_threshold::crashes is at most " +
                                                    std::to_string(crash_history_size) +
                                                    " (the crash history the registry keeps)");
        if (spec_->call_timeout <= duration::zero())
            throw error(errc::invalid_argument, "unit '" + name() + "': call_timeout must be positive");
    }

    const segment& segment_to_use() const {
        const segment* chosen = spec_->where != nullptr ? spec_->where : runtime_.options().default_segment;
        if (chosen == nullptr)
            throw error(errc::invalid_argument, "unit '" + name() +
                                                    "' has no segment: set unit_spec::where or "
                                                    "runtime_options::default_segment");
        return *chosen;
    }

    std::shared_ptr<supervised_actor> self_pointer() override { return this->shared_from_this(); }
    shutdown_spec own_shutdown() const noexcept override { return spec_->shutdown; }
    std::size_t fiber_stack_size() const noexcept override { return spec_->stack_size; }

    void check_forced() const {
        if (forced()) throw forced_stop{};
    }

    // Newest commit (on the first start, of shared memory and the store),
    // else the initial state; then the init hook, whose changes count as
    // uncommitted changes.
    void hand_over_state(std::uint64_t number);

    // The newest commit, unless the rollback ladder says the state keeps
    // crashing the worker: then an older one, or none (the initial state).
    std::optional<restore_info> restore_for_start();

    State initial_state() const { return spec_->initial_for ? spec_->initial_for(name()) : spec_->initial; }

    key_lifecycle lifecycle() const noexcept {
        if (spec_->lifecycle != key_lifecycle::automatic) return spec_->lifecycle;
        return spec_->restart == restart_type::temporary ? key_lifecycle::remove_on_normal_exit : key_lifecycle::keep;
    }

    unit_policy policy() const {
        unit_policy policy;
        policy.threshold = crash_threshold_of(*spec_);
        policy.rollback_after = spec_->rollback_after;
        policy.recover_from = spec_->recover_from;
        policy.store_prefix = spec_->store_prefix;
        return policy;
    }
    static crash_threshold crash_threshold_of(const spec_type& spec) {
        return spec.threshold.value_or(spec.type.empty() ? crash_threshold::off() : crash_threshold{});
    }
    static std::shared_ptr<type_breaker> breaker_of(const spec_type& spec) {
        return spec.type.empty() ? nullptr : type_breakers::instance().find(spec.type);
    }

    // Before each instance: a unit past its crash threshold is declined
    // (its supervisor keeps it not running).
    void check_registry_at_start();

    void attach_keeper() {
        keeper_.emplace(shared_options, segment_to_use(), name(),
                        std::shared_ptr<const keeper_options<State>>(spec_, &spec_->keeper));
        runtime_.note_segment(segment_to_use().shared_impl().get());
    }

    // Records a crash in the registry; true if it makes the unit
    // permanently crashed (then it is not restarted in place).
    bool note_crash(crash_kind kind, std::string_view what, bool restart_likely = false);

    // on_state_changed's "before" is the committed state, which the keeper
    // holds: it is read from there for the first commit a listener sees (no
    // copy is kept while nobody listens), then kept up to date.
    std::uint64_t commit_now();

    State committed_state() {
        State committed = initial_state();
        keeper_->restore_into(committed);
        return committed;
    }

    crash_notes& made_crash_notes() {
        if (!crash_notes_) crash_notes_ = std::make_unique<crash_notes>();
        return *crash_notes_;
    }
    // Never throws: it runs in a catch handler, maybe with a turn lent
    // (out of memory, the reason reads so).
    void set_crash_reason(const char* what) noexcept {
        try {
            made_crash_notes().reason = what;
            reason_lost_ = false;
        } catch (...) {
            reason_lost_ = true;
        }
    }
    std::string_view crash_reason() const noexcept {
        if (reason_lost_ || !crash_notes_) return "its reason was lost: out of memory while it was kept";
        return crash_notes_->reason;
    }
    bool ended_in_turn() const noexcept { return crash_notes_ != nullptr && crash_notes_->ended_in_turn.has_value(); }

    // Counters written by the worker only: no locked instruction needed.
    static void bump(std::atomic<std::uint64_t>& counter) noexcept {
        counter.store(counter.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }

    void after_message(bool read_only);

    enum class served { stopped, crashed, ended_in_turn };

    // Serves messages until a stop is requested, a message crashes (the
    // reason is in crash_reason()), or a borrowed turn ended the instance.
    served serve_mailbox();

    // Caught here, next to the throw, rather than at the top of the
    // instance: a crash then unwinds a few frames, not the whole worker.
    bool serve_inflight() {
        running_scope running(registration_.entry());
        try {
            inflight_->run(static_cast<actor*>(this));
            return true;
        } catch (const std::exception& thrown) {  // first: the common case matches at once
            set_crash_reason(thrown.what());
        } catch (const forced_stop&) {
            throw;
        } catch (...) {
            set_crash_reason("an exception not derived from std::exception");
        }
        return false;
    }

    served run_body() {
        if (spec_->loop) {
            running_scope running(registration_.entry());
            spec_->loop(context_);
            return served::stopped;
        }
        return serve_mailbox();
    }

    // Events about this unit's own worker.
    void publish(event_kind kind, exit_kind reason_kind, std::string_view reason) const {
        supervised_actor::publish(kind, name(), instance(), reason_kind, reason);
    }

    // The first start's recover(), published as a recovered event stamped
    // with the runtime's clock (took: real time).
    recovered<State> recover_and_publish() {
        const auto began = std::chrono::steady_clock::now();
        recovered<State> found = recover(*keeper_, *spec_->recover_from, initial_state(), spec_->store_prefix);
        if (runtime_.events().any())
            detail::publish_recovered(runtime_.events(), name(), to_string(found.source), found.generation,
                                      detail::took_since(began), runtime_.clock().now());
        return found;
    }

    // A crash inside the instance: answer the call that crashed, forget the
    // uncommitted changes, and restart in place unless that is too often.
    // Returns the exit reason when the unit gives up (or is stopping).
    std::optional<exit_reason> on_crash(std::string_view what, crash_kind kind = crash_kind::exception);

    // The worker's life in one instance: restarted in place after each
    // crash until it stops or gives up.
    exit_reason run_instance(std::uint64_t number) override;

    // Why the body ended without a crash: asked to, by itself, or it returned.
    exit_reason stop_reason() const {
        if (stopping_itself_.load(std::memory_order_relaxed) && !stop_requested())
            return exit_reason{exit_kind::shutdown, "the worker stopped itself (stop_self)"};
        return exit_reason{stopped_by_parent() ? exit_kind::shutdown : exit_kind::normal,
                           stop_requested() ? "stopped on request" : "the worker returned"};
    }

    void finish_instance(const exit_reason& reason);
};

} // namespace detail
} // namespace keepsake

#include "keepsake/detail/unit_worker.hpp"
#include "keepsake/detail/unit_turn.hpp"
