// game_loop: a 60 Hz frame loop that pumps a keepsake runtime itself.
//
// Each frame the loop sends a tick to every entity unit and to an "AI script"
// unit, then gives the runtime a slice of the frame (run_for(budget)) and
// sleeps to the next frame. The script throws every few seconds; its unit
// restarts it in place from its last commit, so it carries on with its
// state, and the frames keep their pace. At the end it prints frame-time
// statistics, the restarts, and a check that no state was lost.
//
//   game_loop [--seconds S] [--entities N] [--crash-every S] [--budget-us U] [--segment NAME]
//
// The state lives in shared memory (segment "game-loop"): a killed game
// resumes its world on the next run.
#include <keepsake/keepsake.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

struct arguments {
    double seconds = 5;
    int entities = 100;
    double crash_every = 2;  // seconds of game time between script crashes; 0: never
    long budget_us = 2000;   // the runtime's slice of each frame
    std::string segment = "game-loop";
};

[[noreturn]] void usage(const std::string& why) {
    std::fprintf(stderr,
                 "game_loop: %s\n"
                 "usage: game_loop [--seconds S] [--entities N] [--crash-every S] [--budget-us U] [--segment NAME]\n",
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
        if (flag == "--seconds") parsed.seconds = std::atof(value().c_str());
        else if (flag == "--entities") parsed.entities = std::atoi(value().c_str());
        else if (flag == "--crash-every") parsed.crash_every = std::atof(value().c_str());
        else if (flag == "--budget-us") parsed.budget_us = std::atol(value().c_str());
        else if (flag == "--segment") parsed.segment = value();
        else usage("unknown option " + flag);
    }
    if (parsed.seconds <= 0) usage("--seconds must be positive");
    if (parsed.entities < 0 || parsed.entities > 200) usage("--entities must be 0..200");
    if (parsed.crash_every < 0) usage("--crash-every must be 0 or positive");
    if (parsed.budget_us <= 0) usage("--budget-us must be positive");
    return parsed;
}

constexpr int frames_per_second = 60;

// What every unit is sent each frame.
struct frame_tick {
    std::uint64_t frame;
    float dt;
};

// A read-only message: answers the unit's state.
struct peek {};

// An entity: a body bouncing in a 100 x 100 box.
struct body {
    float x = 0, y = 0, vx = 0, vy = 0;
    std::uint64_t frames = 0;  // ticks it has integrated
};

struct physics {
    void operator()(body& b, const frame_tick& tick) const {
        b.x += b.vx * tick.dt;
        b.y += b.vy * tick.dt;
        if (b.x < 0 || b.x > 100) b.vx = -b.vx;
        if (b.y < 0 || b.y > 100) b.vy = -b.vy;
        ++b.frames;
    }
    body operator()(const body& b, const peek&) const { return b; }
};

// The AI script: some state it builds up frame after frame, and a bug that
// fires every `crash_period` frames.
struct script_state {
    std::uint64_t ticks = 0;      // ticks it has served (a crashing tick is lost with its changes)
    std::uint64_t last_frame = 0;
    double alertness = 0;
};

struct script {
    std::uint64_t crash_period = 0;
    void operator()(script_state& s, const frame_tick& tick) const {
        ++s.ticks;
        s.last_frame = tick.frame;
        s.alertness = 0.9 * s.alertness + 0.1 * std::sin(static_cast<double>(tick.frame) / 30.0);
        if (crash_period != 0 && tick.frame % crash_period == 0)
            throw std::runtime_error("script bug at frame " + std::to_string(tick.frame));
    }
    script_state operator()(const script_state& s, const peek&) const { return s; }
};

double to_ms(clock_type::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

void print_stats(const char* what, std::vector<clock_type::duration> samples) {
    if (samples.empty()) return;
    std::sort(samples.begin(), samples.end());
    auto at = [&](double q) { return samples[static_cast<std::size_t>(q * static_cast<double>(samples.size() - 1))]; };
    std::printf("%-15s p50 %7.3f ms   p99 %7.3f ms   max %7.3f ms\n", what, to_ms(at(0.50)), to_ms(at(0.99)),
                to_ms(samples.back()));
}

int run(const arguments& args) {
    keepsake::segment segment(args.segment);
    keepsake::runtime_options options;
    options.threads = 0;  // pumped by this loop
    options.default_segment = &segment;
    keepsake::runtime runtime(options);

    const auto frames = static_cast<std::uint64_t>(std::llround(args.seconds * frames_per_second));
    const auto crash_period = static_cast<std::uint64_t>(std::llround(args.crash_every * frames_per_second));

    keepsake::supervisor_spec world;
    world.name = "world";
    for (int i = 0; i < args.entities; ++i) {
        keepsake::unit_spec<body, physics> entity;
        entity.name = "entity/" + std::to_string(i);
        entity.initial = body{1.0f * static_cast<float>(i % 100), 50, 10.0f + static_cast<float>(i % 7), -7, 0};
        world.children.push_back(keepsake::child(entity));
    }
    keepsake::unit_spec<script_state, script> ai;
    ai.name = "script";
    ai.handler.crash_period = crash_period;
    std::uint64_t frame = 0;
    ai.init = [&frame](script_state& s, const keepsake::start_info& info) {
        if (info.restarts > 0)
            std::printf("frame %llu: script restarted (restart %llu) with ticks=%llu alertness=%.3f\n",
                        static_cast<unsigned long long>(frame), static_cast<unsigned long long>(info.restarts),
                        static_cast<unsigned long long>(s.ticks), s.alertness);
        else if (info.restored)
            std::printf("script resumed from shared memory with ticks=%llu\n", static_cast<unsigned long long>(s.ticks));
    };
    world.children.push_back(keepsake::child(ai));
    keepsake::start_supervisor(runtime, world);

    auto brain = *keepsake::whereis<script_state, script>(runtime, "script");
    brain.on_terminate([&frame](const keepsake::exit_reason& why, const script_state&) {
        if (why.kind == keepsake::exit_kind::crashed)
            std::printf("frame %llu: script crashed: %s\n", static_cast<unsigned long long>(frame), why.what.c_str());
    });
    std::vector<keepsake::unit<body, physics>> entities;
    std::vector<std::uint64_t> entity_frames_before;
    for (int i = 0; i < args.entities; ++i) {
        entities.push_back(*keepsake::whereis<body, physics>(runtime, "entity/" + std::to_string(i)));
        entity_frames_before.push_back(entities.back().call(peek{}).frames);
    }
    const std::uint64_t ticks_before = brain.call(peek{}).ticks;

    std::printf("running %llu frames at %d Hz: %d entities, the script crashes every %llu frames, runtime budget %ld us\n",
                static_cast<unsigned long long>(frames), frames_per_second, args.entities,
                static_cast<unsigned long long>(crash_period), args.budget_us);
    std::fflush(stdout);

    const auto period = std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(1.0 / frames_per_second));
    const float dt = 1.0f / frames_per_second;
    std::vector<clock_type::duration> intervals, work;
    intervals.reserve(frames);
    work.reserve(frames);
    auto next = clock_type::now();
    auto previous_start = next;
    for (frame = 1; frame <= frames; ++frame) {
        const auto start = clock_type::now();
        for (auto& entity : entities) entity.cast(frame_tick{frame, dt});
        brain.cast(frame_tick{frame, dt});
        runtime.run_for(std::chrono::microseconds(args.budget_us));  // the units' slice of the frame
        work.push_back(clock_type::now() - start);
        if (frame > 1) intervals.push_back(start - previous_start);
        previous_start = start;
        next = std::max(next + period, clock_type::now());  // a late frame does not make the next ones rush
        std::this_thread::sleep_until(next);
    }
    --frame;

    // Serve what is still queued, then read the states back.
    while (runtime.poll() != 0) {
    }
    const script_state end = brain.call(peek{});
    const std::uint64_t restarts = brain.stats().restarts;
    std::uint64_t behind = 0;
    for (std::size_t i = 0; i < entities.size(); ++i)
        if (entities[i].call(peek{}).frames - entity_frames_before[i] != frames) ++behind;

    std::printf("frames %llu\n", static_cast<unsigned long long>(frames));
    print_stats("frame interval", intervals);
    print_stats("frame work", work);
    const auto slowest = std::max_element(work.begin(), work.end()) - work.begin();
    std::printf("slowest frame %lld\n", static_cast<long long>(slowest + 1));
    const std::uint64_t served = end.ticks - ticks_before;
    std::printf("script restarts %llu, ticks served %llu (frames - restarts = %llu: each crash loses only its own tick)\n",
                static_cast<unsigned long long>(restarts), static_cast<unsigned long long>(served),
                static_cast<unsigned long long>(frames - restarts));
    std::printf("entities %zu, %llu missed a frame\n", entities.size(), static_cast<unsigned long long>(behind));
    const bool ok = served + restarts == frames && behind == 0;
    std::printf("state check: %s\n", ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}

} // namespace

int main(int argc, char** argv) {
    try {
        return run(parse(argc, argv));
    } catch (const keepsake::error& failure) {
        std::fprintf(stderr, "game_loop: %s\n", failure.what());
        return 1;
    }
}
