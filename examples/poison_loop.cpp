// A program with a poison state, run under keepsake-run (README "The unit
// registry"). Its dynamic supervisor "sessions" runs two units of type
// "session": "bad" and "good". `poison` puts a state into "bad" that makes
// it abort the whole process at its next message; every run calls both
// units, so the process crash-loops, and keepsake-run starts it again each
// time. After the crash threshold (5 in an hour) "bad" is
// permanently_crashed: it is no longer resumed, the run answers "good" and
// ends with 0. `keepsake-inspect clear` lets "bad" start again; `heal`
// mends its state first.
//   poison_loop SEGMENT_DIR [poison|heal]
#include <cstdio>
#include <cstdlib>
#include <string>

#include <keepsake/keepsake.hpp>

namespace {

struct session {
    long served = 0;
    bool poisoned = false;
};
struct serve {};
struct poison {};
struct heal {};

struct session_handler {
    long operator()(session& state, const serve&) const {
        if (state.poisoned) std::abort();  // the bug: this state kills the process
        return ++state.served;
    }
    void operator()(session& state, const poison&) const { state.poisoned = true; }
    void operator()(session& state, const heal&) const { state.poisoned = false; }
};

} // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: poison_loop SEGMENT_DIR [poison|heal]\n");
        return 2;
    }
    const std::string action = argc > 2 ? argv[2] : "";
    keepsake::set_crash_reports(false);
    keepsake::register_unit_type("session", [](const std::string& key) {
        keepsake::unit_spec<session, session_handler> spec;
        spec.name = key;
        return spec;
    });
    keepsake::segment_options options;
    options.directory = argv[1];
    keepsake::segment segment("poison-loop", options);
    keepsake::runtime runtime(keepsake::runtime_options{1, nullptr, 128 * 1024, &segment});
    keepsake::supervisor_spec tree;
    tree.name = "sessions";
    tree.flags.dynamic = true;
    auto sessions = keepsake::start_supervisor(runtime, tree);
    if (sessions.count_children().specs == 0 && !keepsake::info(segment, "bad")) {
        sessions.start_child("session", "bad");
        sessions.start_child("session", "good");
    }
    auto bad = keepsake::whereis<session, session_handler>(runtime, "bad");
    if (bad && action == "poison") bad->call(poison{});
    if (bad && action == "heal") bad->call(heal{});
    auto good = keepsake::whereis<session, session_handler>(runtime, "good");
    std::printf("good served %ld\n", good ? good->call(serve{}) : -1L);
    if (bad) std::printf("bad served %ld\n", bad->call(serve{}));
    else std::printf("bad is %s\n", keepsake::to_string(keepsake::info(segment, "bad")->status));
    std::fflush(stdout);
    return 0;
}
