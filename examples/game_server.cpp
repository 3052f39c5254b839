// game_server: players as objects on demand. Each player is an object in a
// keepsake::object_directory: started by its first message (a login), put
// to sleep when idle (hibernated), moved to SQLite when idle for longer (shut
// down), and given buffs that end through durable alarms. kill -9 the server
// and run it again: every player's committed score comes back, buffs still
// running are still pending, and buffs that ran out while the server was
// dead expire as soon as it starts.
//
//   game_server run [--rounds N] [--segment NAME] [--store PATH]
//   game_server reset [--segment NAME] [--store PATH]
//
// One line per thing that happens, for grep:
//   fresh world | back <player> score=S gold=G logins=L <where> [<buff> in|overdue <s>s]...
//   resumed <n> players: <p> buffs pending, <o> overdue
//   login <player> score=S gold=G logins=L
//   buff <player> <buff> <s>s | buff expired <player> <buff> late <s>s
//   hibernated <player> (idle|terminated) | shut down <player> to the store
//   round <r> ada=S bob=S cyd=S dee=S       (every 4 rounds of 250 ms)
//   ready (round 20): ...                    (once everything above has had time to happen)
//   summary: ...                             (the last line, after --rounds N)
#include <keepsake/keepsake.hpp>
#include <keepsake/objects/directory.hpp>
#include <keepsake/stores/sqlite_store.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <string>
#include <string_view>
#include <thread>

namespace {

using namespace std::chrono_literals;
using ull = unsigned long long;  // for printf

// Trivially copyable: committed as raw bytes, together with its alarms.
struct player {
    std::uint64_t score = 0;
    std::uint64_t gold = 0;
    std::uint32_t frags = 0;
    std::uint32_t logins = 0;
    std::uint32_t buffs = 0;  // one bit per buff in force; each has an alarm that ends it
};

struct login {};  // the messages a player gets
struct frag {};

// A buff's name is the name of the alarm that ends it.
constexpr const char* buff_names[] = {"shield", "haste", "xp-boost"};
enum buff : std::uint32_t { shield, haste, xp_boost };

std::uint32_t bit(std::string_view name) {
    for (std::uint32_t i = 0; i < std::size(buff_names); ++i)
        if (buff_names[i] == name) return 1u << i;
    return 0;
}

double seconds(keepsake::duration d) { return std::chrono::duration<double>(d).count(); }

void grant(player& p, keepsake::object_context<player>& context, buff which, keepsake::duration lasts) {
    p.buffs |= 1u << which;
    // Set again before it ends, the alarm moves: the buff lasts from now.
    context.schedule_alarm(buff_names[which], lasts);
    std::printf("buff %s %s %.1fs\n", context.key().c_str(), buff_names[which], seconds(lasts));
}

// Runs on the player's own fiber, one message at a time; the state each
// message leaves is committed before its caller gets the answer.
struct player_handler {
    player operator()(player& p, const login&, keepsake::object_context<player>& context) const {
        ++p.logins;
        grant(p, context, shield, 1500ms);  // spawn protection
        // A welcome bonus long enough to outlive a crash of the server.
        if (p.logins == 1) grant(p, context, xp_boost, 60s);
        return p;
    }
    std::uint64_t operator()(player& p, const frag&, keepsake::object_context<player>& context) const {
        p.score += (p.buffs & (1u << haste)) != 0 ? 20 : 10;
        p.gold += (p.buffs & (1u << xp_boost)) != 0 ? 10 : 5;
        if (++p.frags % 4 == 0) grant(p, context, haste, 3s);  // a killing spree
        return p.score;
    }
    // An alarm came due (also one that came due while no server ran). Its
    // removal is committed with what this does; a crash in here delivers it
    // again (at least once), so the line may then print twice.
    void operator()(player& p, const keepsake::alarm_fired& fired, keepsake::object_context<player>& context) const {
        p.buffs &= ~bit(fired.name);
        std::printf("buff expired %s %s late %.1fs\n", context.key().c_str(), fired.name.c_str(),
                    seconds(context.now() - fired.due));
    }
};

using players_directory = keepsake::object_directory<player, player_handler>;

// What the last run left, read without waking anyone: scores as committed,
// and each player's alarms (the buffs it still holds).
void report_back(const players_directory& players, keepsake::duration now) {
    const auto keys = players.list();
    if (keys.empty()) std::printf("fresh world\n");
    int pending = 0, overdue = 0;
    for (const auto& key : keys) {
        const player p = players.get_state(key).value_or(player{});
        std::string line = "back " + key + " score=" + std::to_string(p.score) + " gold=" + std::to_string(p.gold) +
                           " logins=" + std::to_string(p.logins) + " " + keepsake::to_string(players.lookup(key));
        for (const auto& alarm : players.alarms(key)) {
            const bool late = alarm.due <= now;
            (late ? overdue : pending) += 1;
            char left[32];
            std::snprintf(left, sizeof(left), " %.1fs", seconds(late ? now - alarm.due : alarm.due - now));
            line += " " + alarm.name + (late ? " overdue" : " in") + left;
        }
        std::printf("%s\n", line.c_str());
    }
    if (!keys.empty())
        std::printf("resumed %zu players: %d buffs pending, %d overdue\n", keys.size(), pending, overdue);
}

struct seat {
    const char* name;
    long frags_every;  // rounds between frags; 0: away from keyboard
    std::uint64_t score;
};

int run(long rounds, const std::string& segment_name, const std::string& store_path) {
    keepsake::segment segment(segment_name);  // in $KEEPSAKE_SHM_DIR, else /dev/shm
    keepsake::sqlite_store store(store_path);  // where long-idle players go; it survives a reboot
    keepsake::runtime_options options;
    options.threads = 0;  // pumped by the tick loop below: the game code runs on this one thread
    options.default_segment = &segment;
    keepsake::runtime runtime(options);
    runtime.events().subscribe([](const keepsake::event& e) {
        const std::string who(e.child);
        if (e.kind == keepsake::event_kind::hibernated)
            std::printf("hibernated %s (%s)\n", who.c_str(), std::string(e.reason).c_str());
        if (e.kind == keepsake::event_kind::shut_down) std::printf("shut down %s to the store\n", who.c_str());
    });

    keepsake::directory_spec<player, player_handler> spec;
    spec.name = "players";
    spec.hibernate_after = 2s;  // short, so a run shows it
    spec.durable = &store;
    spec.shutdown_after = 3s;  // counted from the last message or alarm
    players_directory players(runtime, spec);
    // Nothing has run yet (the runtime is pumped below): this is the world
    // exactly as the last run committed it, overdue alarms not yet fired.
    report_back(players, keepsake::alarm_clock_now(runtime.clock()));

    seat roster[] = {{"ada", 1, 0}, {"bob", 2, 0}, {"cyd", 4, 0}, {"dee", 0, 0}};
    for (auto& s : roster) {
        const player p = players.call(s.name, login{});  // activates it: from the segment, the store, or new
        s.score = p.score;
        std::printf("login %s score=%llu gold=%llu logins=%u\n", s.name, ull(p.score), ull(p.gold), p.logins);
    }

    auto next = std::chrono::steady_clock::now();
    for (long round = 1; rounds < 0 || round <= rounds; ++round) {
        for (auto& s : roster)
            if (s.frags_every != 0 && round % s.frags_every == 0) s.score = players.call(s.name, frag{});
        if (round % 4 == 0)
            std::printf("round %ld ada=%llu bob=%llu cyd=%llu dee=%llu\n", round, ull(roster[0].score),
                        ull(roster[1].score), ull(roster[2].score), ull(roster[3].score));
        if (round == 20) std::printf("ready (round 20): kill -9 this server, wait 4 s, and run it again\n");
        // Until the next round, serve the players' fibers: alarms, hibernation, shutdown.
        next = std::max(next + 250ms, std::chrono::steady_clock::now());  // a late round does not make others rush
        while (std::chrono::steady_clock::now() < next) {
            runtime.poll();
            std::this_thread::sleep_for(10ms);
        }
    }

    for (auto& s : roster) players.terminate(s.name);  // log everyone out: each commits as it stops
    const auto stats = players.stats();
    std::size_t buffs = 0;
    for (const auto& key : players.list()) buffs += players.alarms(key).size();
    std::printf("summary: rounds=%ld players=%zu activations=%llu hibernations=%llu shutdowns=%llu "
                "alarms_fired=%llu buffs_pending=%zu\n",
                rounds, players.count(), ull(stats.activations), ull(stats.hibernations), ull(stats.shutdowns),
                ull(stats.alarms_fired), buffs);
    return 0;
}

[[noreturn]] void usage(const std::string& why) {
    std::fprintf(stderr,
                 "game_server: %s\n"
                 "usage: game_server run [--rounds N] [--segment NAME] [--store PATH]\n"
                 "       game_server reset [--segment NAME] [--store PATH]\n",
                 why.c_str());
    std::exit(2);
}

} // namespace

int main(int argc, char** argv) {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);  // whole lines, even into a file: a kill -9 loses none
    if (argc < 2) usage("give a mode: run or reset");
    const std::string mode = argv[1];
    long rounds = -1;  // -1: until killed
    std::string segment = "game-server", store = "game-server.db";
    for (int i = 2; i < argc; i += 2) {
        const std::string flag = argv[i];
        if (i + 1 >= argc) usage("missing value after " + flag);
        if (flag == "--rounds") rounds = std::atol(argv[i + 1]);
        else if (flag == "--segment") segment = argv[i + 1];
        else if (flag == "--store") store = argv[i + 1];
        else usage("unknown option " + flag);
    }
    try {
        if (mode == "run") return run(rounds, segment, store);
        if (mode != "reset") usage("unknown mode " + mode);
        std::printf("%s segment %s\n", keepsake::segment::remove(segment) ? "removed" : "no", segment.c_str());
        std::printf("%s store %s\n", std::remove(store.c_str()) == 0 ? "removed" : "no", store.c_str());
        return 0;
    } catch (const keepsake::error& failure) {
        std::fprintf(stderr, "game_server: %s\n", failure.what());
        return 1;
    }
}
