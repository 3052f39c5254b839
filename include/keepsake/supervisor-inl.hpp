// keepsake/supervisor-inl.hpp: the supervisors' code. Included by
// supervisor.hpp in header-only mode; compiled once by src/keepsake.cpp in
// the compiled mode.
#pragma once

#ifndef KEEPSAKE_HEADER_ONLY
#include "keepsake/supervisor.hpp"
#endif
#include "keepsake/unit_types.hpp"

namespace keepsake {
namespace detail {

KEEPSAKE_INLINE supervisor_core::supervisor_core(runtime& where, supervisor_spec spec)
    : supervised_actor(where, spec.name), spec_(std::move(spec)) {
    check_spec();
    for (const child_spec& each : spec_.children) add_record(make_record(each));
}

KEEPSAKE_INLINE supervisor_core::~supervisor_core() { forget(); }

KEEPSAKE_INLINE std::string supervisor_core::type_description() { return "a supervisor (whereis_supervisor)"; }

KEEPSAKE_INLINE void supervisor_core::forget() {
    for (auto& child : children_)
        if (child) child->process->forget();
    supervised_actor::forget();
}

KEEPSAKE_INLINE void supervisor_core::do_start_child(const child_spec& spec) {
    check_child(spec);
    if (record* found = find(spec.id))
        throw error(found->process && found->process->is_running() ? errc::already_started : errc::already_present,
                    "supervisor '" + name() + "': a child '" + spec.id + "' is already " +
                        (found->process && found->process->is_running() ? "running" : "present (not running)") +
                        "; use restart_child, or delete_child first");
    if (spec_.flags.dynamic && spec_.flags.max_children != 0 && children_.size() >= spec_.flags.max_children)
        throw error(errc::limit_reached, "supervisor '" + name() + "' already has max_children (" +
                                             std::to_string(spec_.flags.max_children) + ") children");
    record& added = add_record(make_record(spec));
    const std::shared_ptr<child_process> process = added.process;
    bool running = false;
    try {
        running = start_record(added);
    } catch (...) {
        if (find(process.get()) != nullptr) remove_record(added);
        throw;
    }
    // Asked for by name, a unit the registry declines is an error, not a
    // quiet ignore.
    if (!running)
        if (auto refused = process->refused_start()) throw error(errc::permanently_crashed, *refused);
}

KEEPSAKE_INLINE void supervisor_core::do_restart_child(const std::string& id) {
    record& found = require(id);
    if (found.process->is_running() || found.retry_pending)
        throw error(errc::child_running, "supervisor '" + name() + "': child '" + id +
                                             "' is running (or restarting); terminate_child it first");
    start_record(found);
}

KEEPSAKE_INLINE void supervisor_core::do_terminate_child(const std::string& id) {
    record& found = require(id);
    found.retry_pending = false;
    if (found.process->is_running()) stop_record(found, false);
    else found.process->discard();
    const bool dropped = found.spec.restart == restart_type::temporary || spec_.flags.dynamic;
    const exit_reason asked{exit_kind::shutdown, "terminated on request"};
    if (dropped) {
        retire_child(found, asked);
        remove_record(found);
    } else {
        found.process->retire(unit_status::stopped_graceful, false);
    }
}

KEEPSAKE_INLINE void supervisor_core::do_terminate_and_delete(const std::string& id) {
    record& found = require(id);
    found.retry_pending = false;
    if (found.process->is_running()) stop_record(found, false);
    else found.process->discard();
    retire_child(found, exit_reason{exit_kind::shutdown, "terminated and deleted on request"}, true);
    remove_record(found);
}

KEEPSAKE_INLINE void supervisor_core::do_terminate_all(bool delete_keys) {
    while (!children_.empty()) {
        const std::string id = children_.back()->spec.id;
        if (delete_keys) do_terminate_and_delete(id);
        else if (spec_.flags.dynamic) do_terminate_child(id);
        else {
            do_terminate_child(id);
            if (find(id) != nullptr) remove_record(*find(id));
        }
    }
}

KEEPSAKE_INLINE void supervisor_core::retire_child(record& which, const exit_reason& why, bool delete_keys) {
    key_lifecycle lifecycle = which.spec.lifecycle;
    if (lifecycle == key_lifecycle::automatic)
        lifecycle = which.spec.restart == restart_type::temporary ? key_lifecycle::remove_on_normal_exit
                                                                   : key_lifecycle::keep;
    const bool remove = delete_keys || lifecycle == key_lifecycle::remove ||
                        (lifecycle == key_lifecycle::remove_on_normal_exit && why.is_normal());
    const unit_status status = !why.is_normal()                    ? unit_status::crashed
                               : why.kind == exit_kind::shutdown    ? unit_status::stopped_graceful
                                                                    : unit_status::stopped_permanent;
    try {
        which.process->retire(status, remove);
    } catch (const std::exception& failure) {
        detail::report(report_kind::store_failure, [&](report_line& line) {
            line << "supervisor '" << name() << "': could not update or delete the keys of child '"
                 << which.spec.id << "': " << failure.what();
        });
    }
}

KEEPSAKE_INLINE void supervisor_core::do_delete_child(const std::string& id) {
    record& found = require(id);
    if (found.process->is_running() || found.retry_pending)
        throw error(errc::child_running, "supervisor '" + name() + "': child '" + id +
                                             "' is running; terminate_child it before delete_child");
    remove_record(found);
}

KEEPSAKE_INLINE std::vector<child_info> supervisor_core::do_which_children() const {
    std::vector<child_info> listed;
    for (auto each = children_.rbegin(); each != children_.rend(); ++each) {
        const record& child = **each;
        child_info info;
        info.id = child.spec.id;
        info.kind = child.spec.kind;
        info.instance = child.process->instance();
        info.state = child.process->is_running() ? child_state::running
                     : child.retry_pending       ? child_state::restarting
                                                 : child_state::not_running;
        listed.push_back(std::move(info));
    }
    return listed;
}

KEEPSAKE_INLINE child_counts supervisor_core::do_count_children() const {
    child_counts counts;
    for (const auto& child : children_) {
        ++counts.specs;
        if (child->process->is_running()) ++counts.active;
        if (child->spec.kind == child_kind::worker) ++counts.workers;
        else ++counts.supervisors;
    }
    return counts;
}

KEEPSAKE_INLINE supervisor_stats supervisor_core::stats() const {
    supervisor_stats out;
    out.instance = instance();
    out.restarts = restarts_.load(std::memory_order_relaxed);
    out.uptime = uptime();
    return out;
}

KEEPSAKE_INLINE void supervisor_core::fill_counters(metered_counters& out) const {
    const supervisor_stats now = stats();
    out.supervisor = true;
    out.name = name();
    out.state = to_string(state());
    out.instance = now.instance;
    out.restarts = now.restarts;
    out.queued = queued();
    out.uptime_seconds = std::chrono::duration<double>(now.uptime).count();
}

KEEPSAKE_INLINE std::shared_ptr<supervised_actor> supervisor_core::self_pointer() { return shared_from_this(); }

KEEPSAKE_INLINE void supervisor_core::check_spec() const {
    const auto owner = [this] { return "supervisor '" + name() + "'"; };
    check_intensity(spec_.flags.intensity, owner);
    check_shutdown(spec_.shutdown, owner);
    if (spec_.flags.dynamic && spec_.flags.strategy != strategy::one_for_one)
        throw error(errc::invalid_argument, "supervisor '" + name() + "': a dynamic supervisor is one_for_one");
    if (spec_.flags.dynamic && !spec_.children.empty())
        throw error(errc::invalid_argument, "supervisor '" + name() +
                                                "': a dynamic supervisor has no static children; add them "
                                                "with start_child");
    if (!spec_.flags.dynamic && spec_.flags.max_children != 0)
        throw error(errc::invalid_argument, "supervisor '" + name() + "': max_children is for dynamic supervisors");
    if (spec_.significant && spec_.restart == restart_type::permanent)
        throw error(errc::invalid_argument, "supervisor '" + name() + "': a permanent child cannot be significant");
    std::set<std::string> ids;
    for (const child_spec& each : spec_.children) {
        check_child(each);
        if (!ids.insert(each.id).second)
            throw error(errc::invalid_argument, "supervisor '" + name() + "': duplicate child id '" + each.id + "'");
    }
}

KEEPSAKE_INLINE void supervisor_core::check_child(const child_spec& spec) const {
    if (spec.id.empty() || !spec.make)
        throw error(errc::invalid_argument, "supervisor '" + name() + "': a child spec needs an id and a maker "
                                                                      "(use keepsake::child(spec))");
    check_shutdown(spec.shutdown, [&] { return "supervisor '" + name() + "': child '" + spec.id + "'"; });
    if (spec.significant && spec.restart == restart_type::permanent)
        throw error(errc::invalid_argument, "supervisor '" + name() + "': child '" + spec.id +
                                                "' is permanent and cannot be significant");
    if (spec.significant && spec_.flags.auto_shutdown == auto_shutdown::never)
        throw error(errc::invalid_argument, "supervisor '" + name() + "': child '" + spec.id +
                                                "' is significant but auto_shutdown is never");
}

KEEPSAKE_INLINE std::unique_ptr<supervisor_core::record> supervisor_core::make_record(const child_spec& spec) {
    auto made = std::make_unique<record>();
    made->spec = spec;
    made->process = spec.make(runtime_);
    return made;
}

KEEPSAKE_INLINE supervisor_core::record* supervisor_core::find(const std::string& id) const {
    auto found = by_id_.find(id);
    return found == by_id_.end() ? nullptr : found->second;
}

KEEPSAKE_INLINE supervisor_core::record& supervisor_core::add_record(std::unique_ptr<record> made) {
    made->order = spec_.flags.dynamic ? next_order_++ : children_.size();
    record& added = *made;
    by_id_[added.spec.id] = &added;
    children_.push_back(std::move(made));
    return added;
}

KEEPSAKE_INLINE supervisor_core::record* supervisor_core::find(const child_process* process) const {
    for (const auto& child : children_)
        if (child->process.get() == process) return child.get();
    return nullptr;
}

KEEPSAKE_INLINE supervisor_core::record& supervisor_core::require(const std::string& id) const {
    record* found = find(id);
    if (found == nullptr)
        throw error(errc::not_found, "supervisor '" + name() + "' has no child '" + id + "'");
    return *found;
}

KEEPSAKE_INLINE std::size_t supervisor_core::index_of(const record& which) const {
    for (std::size_t index = 0; index < children_.size(); ++index)
        if (children_[index].get() == &which) return index;
    return children_.size();
}

KEEPSAKE_INLINE void supervisor_core::remove_record(record& which) {
    which.process->forget();
    auto indexed = by_id_.find(which.spec.id);
    if (indexed != by_id_.end() && indexed->second == &which) by_id_.erase(indexed);
    const std::size_t index = index_of(which);
    if (index < children_.size()) children_.erase(children_.begin() + static_cast<std::ptrdiff_t>(index));
}

KEEPSAKE_INLINE void supervisor_core::publish(event_kind kind, const record& child, exit_kind reason_kind,
                                              std::string_view reason) const {
    supervised_actor::publish(kind, child.spec.id, child.process->instance(), reason_kind, reason);
}

// A child's instance ended by itself (on the child's fiber): handled in this
// supervisor's mailbox, in order with everything else it does.
KEEPSAKE_INLINE void supervisor_core::on_child_exit(child_process* which, std::uint64_t number, const exit_reason& why) {
    try {
        post([which, number, why](void* target, reply_cell*) {
            static_cast<supervisor_core*>(static_cast<actor*>(target))->child_exited(which, number, why);
        });
    } catch (const error&) {
        // The supervisor is stopping: nobody to restart it.
    }
}

KEEPSAKE_INLINE bool supervisor_core::start_record(record& child) {
    child.process->place(placement{&name(), spec_.flags.dynamic, child.order});
    bool running = false;
    try {
        running = child.process->start(std::weak_ptr<exit_listener>(shared_from_this()));
    } catch (const error& failure) {
        publish(event_kind::start_failed, child, exit_kind::crashed, failure.what());
        throw error(errc::start_failed, "supervisor '" + name() + "': child '" + child.spec.id +
                                            "' failed to start: " + failure.what());
    }
    child.instance = child.process->instance();
    child.expect_exit = running;
    child.retry_pending = false;
    if (!running) {
        if (child.spec.restart == restart_type::temporary || spec_.flags.dynamic) remove_record(child);
        return false;
    }
    publish(event_kind::started, child);
    return true;
}

KEEPSAKE_INLINE void supervisor_core::stop_record(record& child, bool restart_follows) {
    child.expect_exit = false;
    const shutdown_spec how = forced() ? shutdown_spec::brutal_kill() : child.spec.shutdown;
    child.process->stop(how, restart_follows);
    publish(event_kind::stopped, child, exit_kind::shutdown, "stopped by its supervisor");
}

KEEPSAKE_INLINE void supervisor_core::stop_group(const std::vector<record*>& group, bool restart_follows) {
    for (auto each = group.rbegin(); each != group.rend(); ++each) {
        record& child = **each;
        child.retry_pending = false;
        if (child.process->is_running()) stop_record(child, restart_follows);
        else if (!restart_follows) child.process->discard();
        if (child.spec.restart != restart_type::temporary) continue;
        // A group restart ends a temporary child for good: its keys go as
        // its lifecycle says. A shutdown leaves them (it resumes).
        if (restart_follows) retire_child(child, exit_reason{exit_kind::shutdown, "stopped for a group restart"});
        remove_record(child);
    }
}

KEEPSAKE_INLINE std::vector<supervisor_core::record*> supervisor_core::children_from(std::size_t first) const {
    std::vector<record*> group;
    for (std::size_t index = first; index < children_.size(); ++index) group.push_back(children_[index].get());
    return group;
}

KEEPSAKE_INLINE exit_reason supervisor_core::run_instance(std::uint64_t) {
    log_.clear();
    leaving_.reset();
    gave_up_ = false;
    reset_to_static_children();
    start_static_children();
    // Every instance: a dynamic supervisor restarted by its parent gets its
    // children back too (the registry still says they run).
    if (spec_.flags.dynamic && spec_.resume) resume_children();
    report_started();
    while (!leaving_ && !stop_requested()) {
        if (serve_queued(1) == 0) mailbox_.wait_until(runtime_.clock(), forever, [&] { return stop_requested(); });
    }
    stop_group(children_from(0), false);
    exit_reason reason = leaving_ ? *leaving_
                                  : exit_reason{stopped_by_parent() ? exit_kind::shutdown : exit_kind::normal,
                                                "stopped on request"};
    publish_stopped(reason);
    return reason;
}

KEEPSAKE_INLINE void supervisor_core::publish_stopped(const exit_reason& reason) const {
    supervised_actor::publish(event_kind::stopped, name(), instance(), reason.kind, reason.what);
}

KEEPSAKE_INLINE void supervisor_core::reset_to_static_children() {
    std::vector<std::unique_ptr<record>> kept;
    for (const child_spec& each : spec_.children) {
        record* existing = find(each.id);
        if (existing != nullptr) {
            const std::size_t index = index_of(*existing);
            kept.push_back(std::move(children_[index]));
        } else {
            kept.push_back(make_record(each));
        }
    }
    for (auto& left : children_)
        if (left) left->process->forget();
    children_ = std::move(kept);
    by_id_.clear();
    for (std::size_t index = 0; index < children_.size(); ++index) {
        children_[index]->order = index;
        by_id_[children_[index]->spec.id] = children_[index].get();
    }
}

KEEPSAKE_INLINE void supervisor_core::start_static_children() {
    std::vector<record*> started;
    for (record* child : children_from(0)) {  // a copy: an ignored temporary child leaves children_
        try {
            if (start_record(*child)) started.push_back(child);
        } catch (const error&) {
            stop_group(started, false);
            throw;
        }
    }
}

KEEPSAKE_INLINE void supervisor_core::child_exited(const child_process* process, std::uint64_t number,
                                                   const exit_reason& why) {
    record* child = find(process);
    if (child == nullptr || !child->expect_exit || child->instance != number) return;  // stale
    child->expect_exit = false;
    publish(event_kind::exited, *child, why.kind, why.what);
    const bool restart = child->spec.restart == restart_type::permanent ||
                         (child->spec.restart == restart_type::transient && !why.is_normal());
    if (restart) {
        restart_child_after_exit(*child, why);
        return;
    }
    const bool significant = child->spec.significant;
    retire_child(*child, why);
    if (child->spec.restart == restart_type::temporary) remove_record(*child);
    else child->process->discard();
    if (significant) check_auto_shutdown();
}

KEEPSAKE_INLINE void supervisor_core::check_auto_shutdown() {
    const auto rule = spec_.flags.auto_shutdown;
    if (rule == auto_shutdown::never) return;
    if (rule == auto_shutdown::all_significant) {
        for (const auto& child : children_)
            if (child->spec.significant && (child->process->is_running() || child->retry_pending)) return;
    }
    leaving_ = exit_reason{exit_kind::shutdown, "auto_shutdown: significant children ended"};
}

KEEPSAKE_INLINE void supervisor_core::restart_child_after_exit(record& child, const exit_reason& why) {
    if (stop_requested() || leaving_) return;  // no restart while stopping
    if (!log_.allow(runtime_.clock().now(), spec_.flags.intensity)) {
        give_up(child, why);
        return;
    }
    restarts_.fetch_add(1, std::memory_order_relaxed);
    switch (spec_.flags.strategy) {
    case strategy::one_for_one: restart_group({&child}); break;
    case strategy::one_for_all: restart_group(children_from(0)); break;
    case strategy::rest_for_one: restart_group(children_from(index_of(child))); break;
    }
}

KEEPSAKE_INLINE void supervisor_core::restart_group(std::vector<record*> group) {
    stop_group(group, true);
    group.erase(std::remove_if(group.begin(), group.end(), [&](record* member) { return index_of(*member) == children_.size(); }),
                group.end());
    for (record* member : group) {
        if (member->process->is_running()) continue;
        try {
            if (start_record(*member)) publish(event_kind::restarted, *member);
        } catch (const error& failure) {
            detail::report(report_kind::crash, [&](report_line& line) {
                line << "supervisor '" << name() << "': child '" << member->spec.id
                     << "' failed to restart (tried again): " << failure.what();
            });
            schedule_retry(*member, exit_reason{exit_kind::crashed, failure.what()});
            return;
        }
    }
}

KEEPSAKE_INLINE void supervisor_core::schedule_retry(record& child, exit_reason why) {
    child.retry_pending = true;
    const child_process* process = child.process.get();
    this->post([process, why = std::move(why)](void* target, reply_cell*) {
        auto& self = *static_cast<supervisor_core*>(static_cast<actor*>(target));
        record* again = self.find(process);
        if (again == nullptr || !again->retry_pending) return;
        self.restart_child_after_exit(*again, why);
    });
}

KEEPSAKE_INLINE void supervisor_core::give_up(const record& child, const exit_reason& why) {
    publish(event_kind::gave_up, child, exit_kind::shutdown, "restart intensity exceeded");
    detail::report(report_kind::give_up, [&](report_line& line) {
        line << "supervisor '" << name() << "' gave up: more than "
             << std::uint64_t{spec_.flags.intensity.max_restarts} << " restarts in " << spec_.flags.intensity.period
             << "; last exit: child '" << child.spec.id << "' (" << to_string(why.kind) << ": " << why.what << ")";
    });
    gave_up_ = true;
    leaving_ = exit_reason{exit_kind::shutdown, "supervisor '" + name() + "' gave up: more than " +
                                                    std::to_string(spec_.flags.intensity.max_restarts) +
                                                    " restarts within the period"};
}

KEEPSAKE_INLINE std::shared_ptr<supervisor_core> make_supervisor_core(runtime& where, supervisor_spec spec) {
    return make_registered<supervisor_core>(where, std::move(spec));
}

} // namespace detail

KEEPSAKE_INLINE child_spec child(supervisor_spec spec) {
    return detail::child_spec_of(std::make_shared<const supervisor_spec>(std::move(spec)), child_kind::supervisor,
                                 [](runtime& where, const auto& kept) { return detail::make_supervisor_core(where, *kept); });
}

KEEPSAKE_INLINE void supervisor::start_child(const child_spec& spec) {
    core().manage([spec](detail::supervisor_core& self) { self.do_start_child(spec); });
}

KEEPSAKE_INLINE void supervisor::restart_child(const std::string& id) {
    core().manage([id](detail::supervisor_core& self) { self.do_restart_child(id); });
}

KEEPSAKE_INLINE void supervisor::terminate_child(const std::string& id) {
    core().manage([id](detail::supervisor_core& self) { self.do_terminate_child(id); });
}

KEEPSAKE_INLINE void supervisor::delete_child(const std::string& id) {
    core().manage([id](detail::supervisor_core& self) { self.do_delete_child(id); });
}

KEEPSAKE_INLINE void supervisor::start_child(const std::string& type, const std::string& key) {
    start_child(child_of_type(type, key));
}

KEEPSAKE_INLINE void supervisor::terminate_and_delete(const std::string& id) {
    core().manage([id](detail::supervisor_core& self) { self.do_terminate_and_delete(id); });
}

KEEPSAKE_INLINE void supervisor::terminate_all(bool delete_keys) {
    core().manage([delete_keys](detail::supervisor_core& self) { self.do_terminate_all(delete_keys); });
}

KEEPSAKE_INLINE std::vector<child_info> supervisor::which_children() {
    return core().manage([](detail::supervisor_core& self) { return self.do_which_children(); });
}

KEEPSAKE_INLINE child_counts supervisor::count_children() {
    return core().manage([](detail::supervisor_core& self) { return self.do_count_children(); });
}

KEEPSAKE_INLINE supervisor start_supervisor(runtime& where, supervisor_spec spec) {
    auto core = detail::make_supervisor_core(where, std::move(spec));
    core->start_as_root();
    return supervisor(core);
}

KEEPSAKE_INLINE void stop_supervisor(runtime& where, supervisor& which) {
    if (!which) return;
    which.shared_core()->stop_root();
    where.remove_root(which.shared_core().get());
}

KEEPSAKE_INLINE std::optional<supervisor> whereis_supervisor(const runtime& where, const std::string& name) {
    auto core = where.find_registered<detail::supervisor_core>(name);
    if (!core || !core->accepts_calls()) return std::nullopt;
    return supervisor(std::move(core));
}

} // namespace keepsake

#include "keepsake/detail/resume-inl.hpp"
