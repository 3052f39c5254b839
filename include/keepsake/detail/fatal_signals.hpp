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
#include <cstddef>
#include <cstdlib>
#include <mutex>

#include <signal.h>

#include <sys/mman.h>

#include "keepsake/detail/blame.hpp"
#include "keepsake/detail/unit_record.hpp"

namespace keepsake::detail {

// Notes `unit` as running on this thread for the scope's life; after it,
// nobody (not the unit that ran before: it may be another fiber's, which
// a switch in between already unmarked).
class running_scope {
public:
    explicit running_scope(unit_record_slots* unit) noexcept { running_unit() = unit; }
    ~running_scope() { running_unit() = nullptr; }
    running_scope(const running_scope&) = delete;
    running_scope& operator=(const running_scope&) = delete;
};

// An alternate signal stack for the calling thread, once: a fiber's stack
// overflow runs the handler there, not on the stack that overflowed.
inline void ensure_signal_stack() noexcept {
    static thread_local bool done = false;
    if (done) return;
    done = true;
    stack_t current{};
    if (::sigaltstack(nullptr, &current) == 0 && (current.ss_flags & SS_DISABLE) == 0) return;  // the program's own
    constexpr std::size_t size = 64 * 1024;
    void* memory = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) return;
    stack_t mine{};
    mine.ss_sp = memory;
    mine.ss_size = size;
    if (::sigaltstack(&mine, nullptr) != 0) ::munmap(memory, size);
}

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

inline volatile std::sig_atomic_t& in_fatal_handler() noexcept {
    static volatile std::sig_atomic_t depth = 0;
    return depth;
}

// Marks the unit, puts back the handler that was there before ours (the
// program's, or the default action) and raises the signal again, so the
// process ends as it would have without keepsake. Entered again (a handler
// of the program that calls ours back): straight to the default action.
extern "C" inline void keepsake_fatal_signal_handler(int signal_number, siginfo_t*, void*) {
    struct sigaction restore {};
    restore.sa_handler = SIG_DFL;
    sigemptyset(&restore.sa_mask);
    if (in_fatal_handler() == 0) {
        in_fatal_handler() = 1;
        mark_running_unit(signal_number);
        for (std::size_t index = 0; index < sizeof(fatal_signals) / sizeof(int); ++index)
            if (fatal_signals[index] == signal_number) restore = previous_fatal_actions()[index];
    }
    ::sigaction(signal_number, &restore, nullptr);
    ::raise(signal_number);  // SA_NODEFER: delivered now, to the handler put back
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
        mine.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&mine.sa_mask);
        ::sigaction(fatal_signals[index], &mine, &previous_fatal_actions()[index]);
    }
}

} // namespace keepsake::detail
