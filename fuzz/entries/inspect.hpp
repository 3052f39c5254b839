// fuzz/entries/inspect.hpp: the fuzzer's bytes are a segment file, and
// keepsake-inspect looks at it: list, show (table and --tsv), and dump of
// each key it lists and of each kept key (common.hpp), as hex, --json (the
// kept types are registered, as a program's own inspector registers its
// types) and --raw. Every command must end with a message and status 0 or
// 1, never a crash; on the bytes as given and resealed (reseal.hpp).
#pragma once

#include <algorithm>
#include <sstream>

#include "entries/common.hpp"
#include "entries/reseal.hpp"

#include <keepsake/inspect.hpp>

namespace keepsake_fuzz {

namespace inspect_fuzz {

inline constexpr const char* name = "fuzz";
inline constexpr std::size_t most_keys = 8;  // dumped per run, besides the kept keys

inline const keepsake::inspector& tool() {
    static const keepsake::inspector* made = [] {
        auto* inspector = new keepsake::inspector();
        for_each_kind([&](auto kind, const char* key) {
            inspector->register_type<typename decltype(kind)::type>(key);
        });
        inspector->register_type<int>("int").register_type<double>("double");
        return inspector;
    }();
    return *made;
}

inline void run(const std::vector<std::string>& args) {
    std::ostringstream out, err;
    const int status = tool().run(args, out, err);
    // Status 2 is a usage error: only a key that reads as an option (the
    // command line has no "--") may cause one.
    const bool option_like = args.size() > 4 && !args[4].empty() && args[4][0] == '-';
    check(status == 0 || status == 1 || (status == 2 && option_like),
          "keepsake-inspect " + args[2] + " exited with " + std::to_string(status) + ": " + err.str());
    check(status == 0 || !err.str().empty(), "keepsake-inspect " + args[2] + " failed without saying why");
}

inline void look(const std::string& directory) {
    run({"--dir", directory, "list"});
    run({"--dir", directory, "show", name});
    run({"--dir", directory, "show", name, "--tsv"});
    std::vector<std::string> keys;
    for_each_kind([&](auto, const char* key) { keys.emplace_back(key); });
    expected("read-only view", [&] {
        const auto view = keepsake::segment::open_existing(name, keepsake::segment_access::read_only, directory);
        for (const keepsake::entry_info& entry : view.entries()) {
            if (keys.size() >= kind_count + most_keys) break;
            if (std::find(keys.begin(), keys.end(), entry.key) == keys.end()) keys.push_back(entry.key);
        }
    });
    for (const std::string& key : keys) {
        run({"--dir", directory, "dump", name, key});
        run({"--dir", directory, "dump", name, key, "--json"});
        run({"--dir", directory, "dump", name, key, "--raw"});
    }
}

} // namespace inspect_fuzz

inline int inspect_entry(const std::uint8_t* data, std::size_t size) {
    static const std::string directory = sub_directory("inspect");
    for (const std::string& bytes : segment_variants(data, size)) {
        write_file(directory + "/keepsake." + inspect_fuzz::name, bytes);
        inspect_fuzz::look(directory);
    }
    return 0;
}

} // namespace keepsake_fuzz
