// keepsake/detail/inspect_command.hpp: keepsake-inspect's command line:
// its usage text, and the words and options of one command, parsed.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <string>
#include <vector>

#include "keepsake/detail/inspect_format.hpp"
#include "keepsake/segment.hpp"

namespace keepsake::detail {

inline std::string inspect_usage() {
    return "usage: keepsake-inspect [--dir DIR] COMMAND ...\n"
           "\n"
           "Segments (shared memory):\n"
           "  list                          the segments in DIR, with their owner and state\n"
           "  show SEGMENT [--tsv]          owner, clean or crashed, and each key: generation, size,\n"
           "                                type fingerprint, schema version, last commit time;\n"
           "                                --tsv: only the key table, tab-separated, for scripts\n"
           "  dump SEGMENT KEY [--json|--raw]\n"
           "                                the newest valid state of KEY: hex (default), JSON for a\n"
           "                                registered type, or the bytes as they are\n"
           "  export SEGMENT STORE [--prefix P] [--timeout SECONDS]\n"
           "                                copy each key's newest valid state to the store\n"
           "  delete SEGMENT KEY            remove KEY and its state (refused while the owner runs)\n"
           "  remove SEGMENT                remove the whole segment (refused while the owner runs)\n"
           "  units SEGMENT                 the unit registry: each unit's type, parent, status, starts,\n"
           "                                crashes, and its last crashes (time, kind, reason)\n"
           "  clear SEGMENT KEY             take a permanently_crashed unit out of that status (and\n"
           "                                clear its crash history; refused while the owner runs)\n"
           "\n"
           "Stores (what a reboot would restore), opened read-only:\n"
           "  store list STORE [--prefix P] [--tsv]\n"
           "                                each record: key, generation, size, type, schema\n"
           "  store get STORE KEY           one record's generation, size, type and checksum check\n"
           "  store dump STORE KEY [--json|--raw]\n"
           "                                a record's state, as dump shows a key's\n"
           "\n"
           "  STORE        --sqlite PATH (an SQLite store) or --files DIR (a file store)\n"
           "  --dir DIR    where segments are (default: $KEEPSAKE_SHM_DIR, else /dev/shm)\n"
           "  types        the types this inspector decodes, with their fingerprints\n"
           "  --version    the version of keepsake it was built with\n"
           "  --help       this text\n"
           "\n"
           "Only delete, remove, clear and export change anything (export only the store). Types are\n"
           "known by fingerprint: those registered with this inspector (see 'types').\n"
           "Exit status: 0 done, 1 failed (the message says why), 2 bad usage.\n";
}

struct inspect_command {
    bool help = false;
    bool version = false;
    std::string directory;
    std::vector<std::string> words;  // the command and its operands
    std::string format;              // dump: "", "json" or "raw"
    bool tsv = false;                // show, store list: only the table, tab-separated
    std::string sqlite_path;
    std::string files_directory;
    std::string prefix;
    long timeout_seconds = 10;
};

inline long parse_inspect_seconds(const std::string& text) {
    char* end = nullptr;
    const long seconds = std::strtol(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || seconds <= 0 || seconds > 86400)
        throw usage_error("--timeout wants whole seconds, 1 to 86400, not '" + text + "'");
    return seconds;
}

inline inspect_command parse_inspect_command(const std::vector<std::string>& args) {
    inspect_command line;
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string& arg = args[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= args.size()) throw usage_error(arg + " needs a value");
            return args[++i];
        };
        if (arg == "--help" || arg == "-h") line.help = true;
        else if (arg == "--version") line.version = true;
        else if (arg == "--dir") line.directory = value();
        else if (arg == "--json") line.format = "json";
        else if (arg == "--raw") line.format = "raw";
        else if (arg == "--tsv") line.tsv = true;
        else if (arg == "--sqlite") line.sqlite_path = value();
        else if (arg == "--files") line.files_directory = value();
        else if (arg == "--prefix") line.prefix = value();
        else if (arg == "--timeout") line.timeout_seconds = parse_inspect_seconds(value());
        else if (arg.size() > 1 && arg[0] == '-') throw usage_error("unknown option " + arg);
        else line.words.push_back(arg);
    }
    if (line.directory.empty()) line.directory = segment_directory({});
    return line;
}

// `count` operands after the command's `name_words` words (1, or 2 for "store list").
inline void expect_operands(const inspect_command& line, std::size_t count, const char* shape,
                            std::size_t name_words = 1) {
    if (line.words.size() != count + name_words)
        throw usage_error(line.words[0] + (name_words == 2 ? " " + line.words[1] : std::string()) + " takes " +
                          shape + " (" + std::to_string(line.words.size() - name_words) + " given)");
}

} // namespace keepsake::detail
