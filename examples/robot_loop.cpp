// robot_loop: a 1 kHz control loop that commits its state every tick.
//
// A PID controller drives a simulated joint along a sine trajectory. Every
// tick it commits the tick number and the controller's state (position,
// velocity, integral, last error) to shared memory, so a run killed at any
// instant (kill -9, a segfault, a watchdog) is resumed by the next run at the
// last committed tick, with the controller's integral and the joint where
// they were: no jump, no re-homing.
//
//   robot_loop [--ticks N] [--print-every N] [--segment NAME]
//
// Prints "resumed at tick T generation G" or "fresh start" first, then
// "tick T position P setpoint S" every --print-every ticks, each after its
// commit returned. With --ticks it stops after N more ticks and prints the
// loop's timing; without, it runs until killed.
#include <keepsake/keepsake.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

struct arguments {
    long ticks = -1;  // -1: until killed
    long print_every = 100;
    std::string segment = "robot-loop";
};

[[noreturn]] void usage(const std::string& why) {
    std::fprintf(stderr, "robot_loop: %s\nusage: robot_loop [--ticks N] [--print-every N] [--segment NAME]\n",
                 why.c_str());
    std::exit(2);
}

arguments parse(int argc, char** argv) {
    arguments parsed;
    for (int i = 1; i < argc; ++i) {
        const std::string flag = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) usage("missing value after " + flag);
            return argv[++i];
        };
        if (flag == "--ticks") parsed.ticks = std::atol(value().c_str());
        else if (flag == "--print-every") parsed.print_every = std::atol(value().c_str());
        else if (flag == "--segment") parsed.segment = value();
        else usage("unknown option " + flag);
    }
    if (parsed.print_every <= 0) usage("--print-every must be positive");
    return parsed;
}

constexpr double tick_seconds = 0.001;  // 1 kHz

// Everything the controller needs to carry on exactly where it was.
struct control_state {
    std::uint64_t tick = 0;
    double position = 0;  // the simulated joint (rad)
    double velocity = 0;  // rad/s
    double integral = 0;  // the PID's integral term
    double last_error = 0;
    std::uint64_t overruns = 0;  // ticks that started later than one period after their deadline
};

double setpoint_at(std::uint64_t tick) {
    return 0.5 * std::sin(2 * 3.141592653589793 * 0.5 * static_cast<double>(tick) * tick_seconds);
}

// One control step: PID on the position error, then the joint's dynamics
// (a unit mass with friction).
void step(control_state& s) {
    ++s.tick;
    const double error = setpoint_at(s.tick) - s.position;
    s.integral += error * tick_seconds;
    const double derivative = (error - s.last_error) / tick_seconds;
    s.last_error = error;
    const double torque = 400 * error + 50 * s.integral + 20 * derivative;
    s.velocity += (torque - 2 * s.velocity) * tick_seconds;
    s.position += s.velocity * tick_seconds;
}

double to_us(clock_type::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

void print_stats(const char* what, std::vector<clock_type::duration> samples) {
    if (samples.empty()) return;
    std::sort(samples.begin(), samples.end());
    auto at = [&](double q) { return samples[static_cast<std::size_t>(q * static_cast<double>(samples.size() - 1))]; };
    std::printf("%-12s p50 %8.1f us   p99 %8.1f us   max %8.1f us\n", what, to_us(at(0.50)), to_us(at(0.99)),
                to_us(samples.back()));
}

int run(const arguments& args) {
    keepsake::segment segment(args.segment);
    keepsake::keeper<control_state> keeper(segment, "controller");

    control_state state;
    if (auto found = keeper.restore_into(state))
        std::printf("resumed at tick %llu generation %llu position %.6f integral %.6f\n",
                    static_cast<unsigned long long>(state.tick), static_cast<unsigned long long>(found->generation),
                    state.position, state.integral);
    else
        std::printf("fresh start\n");
    std::fflush(stdout);

    const auto period = std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(tick_seconds));
    const std::size_t keep = args.ticks > 0 ? static_cast<std::size_t>(args.ticks) : 0;
    std::vector<clock_type::duration> commits, periods;
    commits.reserve(keep);
    periods.reserve(keep);

    auto deadline = clock_type::now();
    auto previous = deadline;
    for (long done = 0; args.ticks < 0 || done < args.ticks; ++done) {
        const auto start = clock_type::now();
        if (start - deadline > period) {  // fell behind: count it and start the schedule afresh
            ++state.overruns;
            deadline = start;
        }
        step(state);
        keeper.commit(state);  // the tick is kept from here on
        const auto committed = clock_type::now();
        if (commits.size() < keep) {
            commits.push_back(committed - start);
            if (done > 0) periods.push_back(start - previous);
        }
        previous = start;
        if (state.tick % static_cast<std::uint64_t>(args.print_every) == 0) {
            std::printf("tick %llu position %.6f setpoint %.6f\n", static_cast<unsigned long long>(state.tick),
                        state.position, setpoint_at(state.tick));
            std::fflush(stdout);
        }
        deadline += period;
        std::this_thread::sleep_until(deadline);
    }

    std::printf("stopped at tick %llu generation %llu, %llu overruns in all\n",
                static_cast<unsigned long long>(state.tick), static_cast<unsigned long long>(keeper.generation()),
                static_cast<unsigned long long>(state.overruns));
    print_stats("tick period", periods);
    print_stats("commit", commits);
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    try {
        return run(parse(argc, argv));
    } catch (const keepsake::error& failure) {
        std::fprintf(stderr, "robot_loop: %s\n", failure.what());
        return 1;
    }
}
