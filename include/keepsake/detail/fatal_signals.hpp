// keepsake/detail/fatal_signals.hpp: which unit was running when a fatal
// signal (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT) hit the process.
//
// Each thread notes the unit whose code it runs now (a thread-local
// pointer, set around a message, a start and a loop body). The handler
// marks that unit's registry record "died here" with plain stores (the
// record writer takes no lock and allocates nothing), then hands the signal
// to the handler that was there before, or to the default action, so the
// process still dies of it. The next run counts the crash against that unit
// alone: a poison state stops itself without taking the others with it.
#pragma once

#include <csignal>
#include <cstdlib>
#include <mutex>

#include <signal.h>

#include "keepsake/detail/unit_record.hpp"

namespace keepsake::detail {

using unit_record_slots = record_slots<persisted_unit>;

inline unit_record_slots*& running_unit() noexcept {
    static thread_local unit_record_slots* current = nullptr;
    return current;
}

// Notes `unit` as running on this thread for the scope's life.
class running_scope {
public:
    explicit running_scope(unit_record_slots* unit) noexcept : previous_(running_unit()) { running_unit() = unit; }
    ~running_scope() { running_unit() = previous_; }
    running_scope(const running_scope&) = delete;
    running_scope& operator=(const running_scope&) = delete;

private:
    unit_record_slots* previous_;
};

inline constexpr int fatal_signals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};

inline struct sigaction* previous_fatal_actions() noexcept {
    static struct sigaction saved[sizeof(fatal_signals) / sizeof(int)];
    return saved;
}

inline void mark_running_unit(int signal_number) noexcept {
    unit_record_slots* unit = running_unit();
    if (unit == nullptr || !unit->attached()) return;
    if (auto record = unit->read()) {
        record->flags |= unit_flag_died_here;
        record->died_signal = static_cast<std::uint32_t>(signal_number);
        unit->write(*record);
    }
}

extern "C" inline void keepsake_fatal_signal_handler(int signal_number, siginfo_t* info, void* context) {
    mark_running_unit(signal_number);
    for (std::size_t index = 0; index < sizeof(fatal_signals) / sizeof(int); ++index) {
        if (fatal_signals[index] != signal_number) continue;
        const struct sigaction& before = previous_fatal_actions()[index];
        if ((before.sa_flags & SA_SIGINFO) != 0 && before.sa_sigaction != nullptr) {
            before.sa_sigaction(signal_number, info, context);
            return;
        }
        if (before.sa_handler != SIG_DFL && before.sa_handler != SIG_IGN && before.sa_handler != nullptr) {
            before.sa_handler(signal_number);
            return;
        }
    }
    // The default action: a synchronous fault re-runs the faulting
    // instruction, which now kills the process; abort() and raise() go on
    // to the default action too.
    struct sigaction plain {};
    plain.sa_handler = SIG_DFL;
    sigemptyset(&plain.sa_mask);
    ::sigaction(signal_number, &plain, nullptr);
    ::raise(signal_number);
}

// Installs the handlers where they are not installed now (the unit
// registry of a segment calls it when this process opens it): a program or
// a test framework that replaced them since gets them back, chained in
// front of its own. KEEPSAKE_NO_SIGNAL_HANDLERS=1 in the environment skips it.
inline void install_fatal_signal_handlers() {
    static std::mutex* const guard = new std::mutex();
    const char* off = std::getenv("KEEPSAKE_NO_SIGNAL_HANDLERS");
    if (off != nullptr && off[0] == '1') return;
    std::lock_guard<std::mutex> lock(*guard);
    for (std::size_t index = 0; index < sizeof(fatal_signals) / sizeof(int); ++index) {
        struct sigaction now {};
        if (::sigaction(fatal_signals[index], nullptr, &now) != 0) continue;
        if ((now.sa_flags & SA_SIGINFO) != 0 && now.sa_sigaction == &keepsake_fatal_signal_handler) continue;
        struct sigaction mine {};
        mine.sa_sigaction = &keepsake_fatal_signal_handler;
        mine.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER | SA_RESETHAND;
        sigemptyset(&mine.sa_mask);
        ::sigaction(fatal_signals[index], &mine, &previous_fatal_actions()[index]);
    }
}

} // namespace keepsake::detail
