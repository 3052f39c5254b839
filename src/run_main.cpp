// keepsake-run: runs a program and starts it again when it dies abnormally
// (a non-zero exit, or killed by a signal), under OTP's restart intensity:
// at most --max-restarts restarts within --period seconds, counted by the
// same restart log a supervisor keeps (keepsake/restart_policy.hpp). Past
// that it gives up. A plain POSIX program: no Boost, no fibers.
//
// Signals: the launcher blocks the ones it cares about and takes them with
// sigwaitinfo, so nothing runs in a signal handler and no wait is lost to
// EINTR. SIGCHLD tells it the child died (it reaps every child it has, so
// none stays a zombie); SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 are
// forwarded to the child. After SIGTERM or SIGINT the child's end is not a
// crash: the launcher exits with the child's code (128 + signal if the
// signal killed it) and starts nothing again.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/prctl.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "keepsake/restart_policy.hpp"

namespace {

constexpr int exit_gave_up = 3;
constexpr int exit_usage = 2;
constexpr int exit_cannot_run = 127;

const char* const usage_text =
    "usage: keepsake-run [options] [--] program [args...]\n"
    "\n"
    "Runs program, and runs it again each time it dies abnormally (exits with a\n"
    "non-zero code, or is killed by a signal), at most N times within P seconds\n"
    "(Erlang/OTP's restart intensity: a restart is allowed if, counting it, no\n"
    "more than N restarts fall within the last P seconds). An exit with code 0\n"
    "ends keepsake-run with 0.\n"
    "\n"
    "options:\n"
    "  --max-restarts N   restarts allowed within the period (default 3; 0: never restart)\n"
    "  --period SECONDS   the period, > 0, fractions allowed (default 5)\n"
    "  --delay MS         wait before each restart, in milliseconds (default 100)\n"
    "  --quiet            no line on standard error for each restart\n"
    "  --help             this text\n"
    "\n"
    "The program sees KEEPSAKE_RUN_RESTARTS=<n> in its environment: how many\n"
    "times it was restarted so far (0 at the first start).\n"
    "\n"
    "SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 are forwarded to the program.\n"
    "After SIGTERM or SIGINT its end is not a crash: nothing is restarted.\n"
    "\n"
    "exit codes:\n"
    "  0      the program exited with 0\n"
    "  n      after a forwarded SIGTERM or SIGINT: the program's own exit code,\n"
    "         or 128 + the signal's number if that signal killed it\n"
    "  2      usage error\n"
    "  3      the program died more than N times within P seconds: gave up\n"
    "  127    the program could not be executed (not found, not executable)\n";

struct options {
    keepsake::restart_intensity intensity;  // 3 in 5 s, as a supervisor
    long delay_ms = 100;
    bool quiet = false;
    std::vector<char*> program;  // argv of the program, null-terminated
};

[[noreturn]] void usage_error(const std::string& what) {
    std::fprintf(stderr, "keepsake-run: %s\n(keepsake-run --help for the options)\n", what.c_str());
    std::exit(exit_usage);
}

// A whole number in [0, limit], or a usage error naming the option.
long parse_count(const char* option, const char* text, long limit) {
    char* end = nullptr;
    errno = 0;
    const long value = std::strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < 0 || value > limit)
        usage_error(std::string(option) + " wants a whole number from 0 to " + std::to_string(limit) + ", not '" +
                    text + "'");
    return value;
}

options parse(int argc, char** argv) {
    options chosen;
    int index = 1;
    auto value_of = [&](const char* option) -> const char* {
        if (index + 1 >= argc) usage_error(std::string(option) + " needs a value");
        return argv[++index];
    };
    for (; index < argc; ++index) {
        const std::string arg = argv[index];
        if (arg == "--") {
            ++index;
            break;
        }
        if (arg == "--help" || arg == "-h") {
            std::fputs(usage_text, stdout);
            std::exit(0);
        } else if (arg == "--quiet" || arg == "-q") {
            chosen.quiet = true;
        } else if (arg == "--max-restarts") {
            chosen.intensity.max_restarts =
                static_cast<std::uint32_t>(parse_count("--max-restarts", value_of("--max-restarts"),
                                                       keepsake::detail::max_restart_limit));
        } else if (arg == "--delay") {
            chosen.delay_ms = parse_count("--delay", value_of("--delay"), 24L * 3600 * 1000);
        } else if (arg == "--period") {
            const char* text = value_of("--period");
            char* end = nullptr;
            errno = 0;
            const double seconds = std::strtod(text, &end);
            if (errno != 0 || end == text || *end != '\0' || !(seconds > 0) || seconds > 1e9)
                usage_error(std::string("--period wants a number of seconds above 0, not '") + text + "'");
            chosen.intensity.period =
                std::chrono::duration_cast<keepsake::duration>(std::chrono::duration<double>(seconds));
            if (chosen.intensity.period <= keepsake::duration::zero())
                usage_error(std::string("--period ") + text + " is too short");
        } else if (arg.size() > 1 && arg[0] == '-') {
            usage_error("unknown option '" + arg + "'");
        } else {
            break;  // the program
        }
    }
    if (index >= argc) usage_error("no program to run");
    chosen.program.assign(argv + index, argv + argc);
    chosen.program.push_back(nullptr);
    return chosen;
}

const char* signal_name(int sig) {
    switch (sig) {
    case SIGHUP: return "SIGHUP";
    case SIGINT: return "SIGINT";
    case SIGQUIT: return "SIGQUIT";
    case SIGILL: return "SIGILL";
    case SIGTRAP: return "SIGTRAP";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGKILL: return "SIGKILL";
    case SIGUSR1: return "SIGUSR1";
    case SIGSEGV: return "SIGSEGV";
    case SIGUSR2: return "SIGUSR2";
    case SIGPIPE: return "SIGPIPE";
    case SIGALRM: return "SIGALRM";
    case SIGTERM: return "SIGTERM";
    case SIGXCPU: return "SIGXCPU";
    case SIGXFSZ: return "SIGXFSZ";
    case SIGSYS: return "SIGSYS";
    default: return nullptr;
    }
}

// "exited with code 7", "killed by SIGSEGV (core dumped)".
std::string describe(int status) {
    if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) {
        const int sig = WTERMSIG(status);
        const char* name = signal_name(sig);
        std::string text = "killed by " + (name != nullptr ? std::string(name) : "signal " + std::to_string(sig));
        if (WCOREDUMP(status)) text += " (core dumped)";
        return text;
    }
    return "ended with status " + std::to_string(status);
}

// The exit code that reports the child's end after a forwarded stop.
int passed_on(int status) {
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return 1;
}

std::string seconds_text(keepsake::duration period) {
    char text[32];
    std::snprintf(text, sizeof text, "%g", std::chrono::duration<double>(period).count());
    return text;
}

keepsake::duration now() {
    return std::chrono::duration_cast<keepsake::duration>(std::chrono::steady_clock::now().time_since_epoch());
}

const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2};

class launcher {
public:
    explicit launcher(options chosen)
        : options_(std::move(chosen)), program_(options_.program.front()) {}

    int run() {
        take_signals();
        for (std::uint64_t restarts = 0;; ++restarts) {
            const pid_t child = start(restarts);
            const int status = wait_for(child);
            if (stop_signal_ != 0) return passed_on(status);
            if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0;
            last_ = describe(status);
            if (!log_.allow(now(), options_.intensity)) {
                const std::uint32_t deaths = options_.intensity.max_restarts + 1;
                std::fprintf(stderr,
                             "keepsake-run: %s died %u time%s within %s s (more than --max-restarts %u; last: %s); "
                             "giving up\n",
                             program_, deaths, deaths == 1 ? "" : "s", seconds_text(options_.intensity.period).c_str(),
                             options_.intensity.max_restarts, last_.c_str());
                return exit_gave_up;
            }
            if (!options_.quiet)
                std::fprintf(stderr, "keepsake-run: %s %s; restart %llu of at most %u in %s s\n", program_,
                             last_.c_str(), static_cast<unsigned long long>(restarts + 1),
                             options_.intensity.max_restarts, seconds_text(options_.intensity.period).c_str());
            if (!pause_before_restart()) return 128 + stop_signal_;
        }
    }

private:
    options options_;
    keepsake::detail::restart_log log_;
    const char* program_;
    std::string last_;
    sigset_t taken_{};         // blocked here, taken with sigwaitinfo
    sigset_t original_mask_{};  // what the program gets back
    struct sigaction original_actions_[6]{};
    int stop_signal_ = 0;  // a forwarded SIGTERM or SIGINT: no restart after it

    static void note_signal(int) {}

    // Each signal gets a handler that does nothing (so none is discarded
    // while blocked, even one the launcher inherited as ignored), then is
    // blocked: it stays pending until sigwaitinfo takes it.
    void take_signals() {
        sigemptyset(&taken_);
        sigaddset(&taken_, SIGCHLD);
        for (int sig : forwarded) sigaddset(&taken_, sig);
        struct sigaction quiet {};
        quiet.sa_handler = note_signal;
        sigemptyset(&quiet.sa_mask);
        quiet.sa_flags = SA_RESTART;
        int slot = 0;
        for (int sig : forwarded) sigaction(sig, &quiet, &original_actions_[slot++]);
        sigaction(SIGCHLD, &quiet, &original_actions_[slot]);
        sigprocmask(SIG_BLOCK, &taken_, &original_mask_);
    }

    void restore_signals_in_child() {
        int slot = 0;
        for (int sig : forwarded) sigaction(sig, &original_actions_[slot++], nullptr);
        sigaction(SIGCHLD, &original_actions_[slot], nullptr);
        sigprocmask(SIG_SETMASK, &original_mask_, nullptr);
    }

    // Forks and executes the program. A failed exec is told through a
    // close-on-exec pipe: then the launcher reaps that child and exits 127.
    pid_t start(std::uint64_t restarts) {
        setenv("KEEPSAKE_RUN_RESTARTS", std::to_string(restarts).c_str(), 1);
        int report[2];
        if (pipe2(report, O_CLOEXEC) != 0) {
            std::fprintf(stderr, "keepsake-run: cannot make a pipe: %s\n", std::strerror(errno));
            std::exit(exit_cannot_run);
        }
        const pid_t launcher = getpid();
        const pid_t child = fork();
        if (child < 0) {
            std::fprintf(stderr, "keepsake-run: cannot fork to run %s: %s\n", program_, std::strerror(errno));
            std::exit(exit_cannot_run);
        }
        if (child == 0) {
            close(report[0]);
            // If keepsake-run itself is killed (kill -9), its program gets
            // SIGTERM rather than running on unwatched (a new launcher would
            // start a second copy beside it).
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (getppid() != launcher) _exit(exit_cannot_run);  // the launcher died before the prctl
            restore_signals_in_child();
            execvp(program_, options_.program.data());
            const int failure = errno;
            ssize_t written;
            do written = write(report[1], &failure, sizeof failure);
            while (written < 0 && errno == EINTR);
            _exit(exit_cannot_run);
        }
        close(report[1]);
        int failure = 0;
        ssize_t got;
        do got = read(report[0], &failure, sizeof failure);
        while (got < 0 && errno == EINTR);
        close(report[0]);
        if (got == static_cast<ssize_t>(sizeof failure)) {
            reap(child);
            std::fprintf(stderr, "keepsake-run: cannot execute %s: %s\n", program_, std::strerror(failure));
            std::exit(exit_cannot_run);
        }
        return child;
    }

    // Waits for that child only, whatever signal comes.
    static void reap(pid_t child) {
        int status;
        while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
        }
    }

    // Takes one of the blocked signals; with a timeout, 0 when it passed.
    int take(const timespec* timeout) {
        for (;;) {
            siginfo_t info;
            const int sig = timeout != nullptr ? sigtimedwait(&taken_, &info, timeout) : sigwaitinfo(&taken_, &info);
            if (sig > 0) return sig;
            if (errno == EAGAIN) return 0;
            if (errno != EINTR) {
                std::fprintf(stderr, "keepsake-run: sigwaitinfo failed: %s\n", std::strerror(errno));
                std::exit(1);
            }
        }
    }

    // Reaps every child that has ended (there may be others than the
    // program: whatever this process inherited). True, with its status,
    // once `child` is among them.
    static bool reap_ended(pid_t child, int& status) {
        bool ended = false;
        for (;;) {
            int each = 0;
            const pid_t gone = waitpid(-1, &each, WNOHANG);
            if (gone > 0) {
                if (gone == child) {
                    status = each;
                    ended = true;
                }
                continue;
            }
            if (gone < 0 && errno == EINTR) continue;
            return ended;  // 0: others still run; ECHILD: none left
        }
    }

    int wait_for(pid_t child) {
        int status = 0;
        for (;;) {
            // Signals are coalesced: one SIGCHLD may stand for several ends,
            // and one may have come before this wait began.
            if (reap_ended(child, status)) return status;
            const int sig = take(nullptr);
            if (sig == SIGCHLD) continue;
            if (sig == SIGTERM || sig == SIGINT) stop_signal_ = sig;
            kill(child, sig);
        }
    }

    // The delay before a restart, still answering signals: SIGTERM or SIGINT
    // ends the launcher (false), there being no child to pass them to.
    // With no delay it still takes the signals already pending (a zero
    // timeout polls), so a SIGTERM that came with the crash starts nothing.
    bool pause_before_restart() {
        using wall = std::chrono::steady_clock;
        const auto until = wall::now() + std::chrono::milliseconds(options_.delay_ms);
        for (;;) {
            const auto left = std::max(until - wall::now(), wall::duration::zero());
            const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
            timespec timeout{};
            timeout.tv_sec = static_cast<time_t>(ns / 1000000000);
            timeout.tv_nsec = static_cast<long>(ns % 1000000000);
            const int sig = take(&timeout);
            if (sig == 0) return true;
            if (sig == SIGTERM || sig == SIGINT) {
                stop_signal_ = sig;
                return false;
            }
            if (sig == SIGCHLD) {
                int ignored;
                reap_ended(-1, ignored);
            }
        }
    }
};

} // namespace

int main(int argc, char** argv) {
    launcher run(parse(argc, argv));
    return run.run();
}
