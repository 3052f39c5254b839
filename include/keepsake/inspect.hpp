// keepsake/inspect.hpp: the keepsake-inspect command-line tool as a small
// library, so a program can build its own inspector that knows its types.
//
//   keepsake::inspector tool;
//   tool.register_type<my_state>("my_state");   // dump --json can decode it
//   return tool.run(argc, argv);
//
// It looks at segments without disturbing them: list, show and dump open a
// segment read-only with no lock (segment_access::read_only), so they work
// while its owner runs and after it died; export copies the newest valid
// generation of each key through keepsake's exporter; delete takes the
// segment's lock without becoming its owner (segment_access::maintenance),
// so it is refused, naming the pid, while a live process owns the segment,
// and leaves the crashed/clean flag and the recorded owner as they were;
// remove deletes a whole segment that no live process owns. The store
// commands read a file or SQLite store, opened read-only: what a reboot
// would restore.
//
// Types are recognised by their fingerprint: a segment or a store record
// holds the fingerprint of its type, not its name, so `dump --json` and the
// TYPE column know the types an inspector registered, and no others.
//
// Needs keepsake::sqlite (export --sqlite). Errors are messages and a
// non-zero exit status, never a crash: 1 for a failure, 2 for a usage error.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <ostream>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <type_traits>
#include <utility>
#include <vector>

#include <cereal/archives/json.hpp>

#include "keepsake/codec.hpp"
#include "keepsake/detail/format.hpp"
#include "keepsake/detail/inspect_command.hpp"
#include "keepsake/detail/inspect_format.hpp"
#include "keepsake/detail/inspect_units.hpp"
#include "keepsake/detail/snapshot.hpp"
#include "keepsake/error.hpp"
#include "keepsake/exporter.hpp"
#include "keepsake/segment.hpp"
#include "keepsake/store.hpp"
#include "keepsake/stores/file_store.hpp"
#include "keepsake/stores/sqlite_store.hpp"
#include "keepsake/version.hpp"

namespace keepsake {

class inspector {
public:
    // Lets `dump --json` decode entries (and store records) written by a
    // keeper<T> with this schema version, and `show` name them. T needs a
    // cereal serialize function (for the JSON), also when it is trivially
    // copyable, and a default constructor. Entries are recognised by
    // type_fingerprint<T>() (a segment stores the fingerprint of a state's
    // type, not its name), so register the T the program keeps, with the
    // same state_traits.
    template <class T>
    inspector& register_type(std::string name, std::uint32_t schema_version = state_traits<T>::schema_version) {
        static_assert(std::is_default_constructible_v<T>, "register_type<T> needs a default-constructible T");
        registered_type type;
        type.name = std::move(name);
        type.fingerprint = type_fingerprint<T>();
        type.schema_version = schema_version;
        type.codec = static_cast<std::uint32_t>(codec_of<T>());
        type.to_json = [](const record& r, std::ostream& out) {
            T value{};
            decode_into(r.bytes.data(), r.bytes.size(), value);
            cereal::JSONOutputArchive archive(out);
            archive(cereal::make_nvp("value", value));
        };
        types_.push_back(std::move(type));
        return *this;
    }

    // Runs one command, as main() would; returns the exit status.
    int run(int argc, char** argv) const {
        std::vector<std::string> args;
        for (int i = 1; i < argc; ++i) args.emplace_back(argv[i]);
        return run(args, std::cout, std::cerr);
    }

    // The same, with the arguments after the program name and the streams
    // to write to (for tests and embedding).
    int run(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) const {
        try {
            command line = detail::parse_inspect_command(args);
            if (line.help) {
                out << usage();
                return 0;
            }
            if (line.version) {
                out << "keepsake-inspect " << KEEPSAKE_VERSION_STRING << " (segment layout "
                    << detail::segment_layout_version << ")\n";
                return 0;
            }
            return dispatch(line, out);
        } catch (const detail::usage_error& failure) {
            err << "keepsake-inspect: " << failure.what() << "\n" << "run keepsake-inspect --help for the commands\n";
            return 2;
        } catch (const std::exception& failure) {
            err << "keepsake-inspect: " << failure.what() << "\n";
            return 1;
        } catch (...) {
            err << "keepsake-inspect: failed with an exception that is not a std::exception\n";
            return 1;
        }
    }

    static std::string usage() { return detail::inspect_usage(); }

private:
    struct registered_type {
        std::string name;
        std::uint64_t fingerprint = 0;
        std::uint32_t schema_version = 0;
        std::uint32_t codec = 0;
        std::function<void(const record&, std::ostream&)> to_json;
    };

    using command = detail::inspect_command;

    std::vector<registered_type> types_;

    int dispatch(const command& line, std::ostream& out) const {
        if (line.words.empty()) throw detail::usage_error("no command given");
        const std::string& name = line.words[0];
        const bool stores = name == "store";
        const std::string sub = stores && line.words.size() > 1 ? line.words[1] : std::string();
        const bool has_store = !line.sqlite_path.empty() || !line.files_directory.empty();
        if (name != "dump" && !(stores && sub == "dump") && !line.format.empty())
            throw detail::usage_error("--json and --raw go with dump and store dump");
        if (name != "show" && !(stores && sub == "list") && line.tsv)
            throw detail::usage_error("--tsv goes with show and store list");
        if (name != "export" && !stores && (has_store || !line.prefix.empty()))
            throw detail::usage_error("--sqlite, --files and --prefix go with export and store");
        if (name == "list") {
            detail::expect_operands(line, 0, "no operands");
            return list(line, out);
        }
        if (name == "show") {
            detail::expect_operands(line, 1, "SEGMENT");
            return show(line, out);
        }
        if (name == "dump") {
            detail::expect_operands(line, 2, "SEGMENT KEY");
            return dump(line, out);
        }
        if (name == "export") {
            detail::expect_operands(line, 1, "SEGMENT");
            return export_segment(line, out);
        }
        if (name == "delete") {
            detail::expect_operands(line, 2, "SEGMENT KEY");
            return remove_key(line, out);
        }
        if (name == "remove") {
            detail::expect_operands(line, 1, "SEGMENT");
            return remove_segment(line, out);
        }
        if (name == "types") {
            detail::expect_operands(line, 0, "no operands");
            return list_types(out);
        }
        if (name == "units") {
            detail::expect_operands(line, 1, "SEGMENT");
            detail::print_units(open_view(line, segment_access::read_only), out);
            return 0;
        }
        if (name == "clear") {
            detail::expect_operands(line, 2, "SEGMENT KEY");
            return clear_unit(line, out);
        }
        if (stores) {
            if (sub == "list") {
                detail::expect_operands(line, 0, "a store and no operands", 2);
                return store_list(line, out);
            }
            if (sub == "get" || sub == "dump") {
                detail::expect_operands(line, 1, "a store and KEY", 2);
                return sub == "get" ? store_get(line, out) : store_dump(line, out);
            }
            throw detail::usage_error(sub.empty() ? "store needs list, get or dump"
                                                  : "unknown store command '" + sub + "' (list, get or dump)");
        }
        throw detail::usage_error("unknown command '" + name + "'");
    }

    static void check_directory(const std::string& directory) {
        struct stat info {};
        if (::stat(directory.c_str(), &info) != 0 || !S_ISDIR(info.st_mode))
            throw error(errc::not_found, "segment directory " + directory +
                                             " does not exist; give --dir DIR or set KEEPSAKE_SHM_DIR");
    }

    static segment open_view(const command& line, segment_access access = segment_access::read_only) {
        check_directory(line.directory);
        return segment::open_existing(line.words[1], access, line.directory);
    }

    const registered_type* type_of(std::uint64_t fingerprint, std::uint32_t codec) const {
        for (const registered_type& type : types_)
            if (type.fingerprint == fingerprint && type.codec == codec) return &type;
        return nullptr;
    }

    std::string type_words(std::uint64_t fingerprint, std::uint32_t codec) const {
        const registered_type* type = type_of(fingerprint, codec);
        return type ? type->name : std::string("-");
    }

    int list_types(std::ostream& out) const {
        std::vector<std::vector<std::string>> table{{"TYPE", "FINGERPRINT", "CODEC", "SCHEMA"}};
        for (const registered_type& type : types_)
            table.push_back({type.name, detail::hex64(type.fingerprint), detail::codec_name(type.codec),
                             std::to_string(type.schema_version)});
        detail::print_table(table, "  ", out);
        return 0;
    }

    // A segment that fails to open is a row with its error, not the end
    // of the listing: list exits 0 when it could read the directory. A file
    // keepsake would not trust (a FIFO, a link, another user's) is shown as
    // refused, and never opened.
    int list(const command& line, std::ostream& out) const {
        check_directory(line.directory);
        const std::vector<segment_file> files = segment::list_files(line.directory);
        if (files.empty()) {
            out << "no segments in " << line.directory << "\n";
            return 0;
        }
        for (const segment_file& file : files) {
            const std::string& name = file.name;
            out << name << "  ";
            if (!file.refused.empty()) {
                out << "refused: " << file.refused << "; see keepsake-inspect show " << name << "\n";
                continue;
            }
            try {
                const segment view = segment::open_existing(name, segment_access::read_only, line.directory);
                const std::size_t keys = view.entries().size();
                out << keys << (keys == 1 ? " key, " : " keys, ") << view.size() << " bytes, "
                    << detail::owner_words(view.status());
                if (view.damaged_entries() != 0) out << ", " << view.damaged_entries() << " damaged directory entries";
                out << "\n";
            } catch (const error& failure) {
                out << (failure.code() == errc::unsafe_file ? "refused: " : "unreadable: ") << failure.what() << "\n";
            } catch (const std::exception& failure) {
                out << "unreadable: " << failure.what() << "\n";
            }
        }
        return 0;
    }

    int show(const command& line, std::ostream& out) const {
        const segment view = open_view(line);
        const segment_status status = view.status();
        const std::vector<entry_info> entries = view.entries();
        std::vector<std::vector<std::string>> table{
            {"KEY", "GENERATION", "SIZE", "FINGERPRINT", "TYPE", "CODEC", "SCHEMA", "COMMITTED", "SLOTS", "NOTES"}};
        for (const entry_info& entry : entries) table.push_back(row_of(entry));
        if (line.tsv) {
            detail::print_table(table, "\t", out);
            return 0;
        }
        out << "segment   " << view.name() << "\n"
            << "file      " << view.path() << "\n"
            << "size      " << view.size() << " bytes, " << view.free_bytes() << " free\n"
            << "created   " << detail::utc_time(status.created_ns) << "\n"
            << "owner     " << detail::owner_words(status) << ", since " << detail::utc_time(status.owner_since_ns)
            << "\n";
        if (status.owner_alive && !status.closed_cleanly)
            out << "          (its owner runs: what follows may change while you look)\n";
        if (view.damaged_entries() != 0)
            out << "damaged   " << view.damaged_entries()
                << " directory entries failed their checksum (their keys are lost)\n";
        out << "keys      " << entries.size() << "\n";
        if (entries.empty()) return 0;
        out << "\n";
        detail::print_table(table, "  ", out);
        return 0;
    }

    std::vector<std::string> row_of(const entry_info& entry) const {
        std::string notes;
        if (entry.kind == static_cast<std::uint32_t>(detail::entry_kind::table))
            notes += "side table of '" + entry.key.substr(0, entry.key.rfind("::")) + "', exported with it; ";
        if (entry.generation == 0) notes += "no valid state; ";
        if (entry.invalid_slots != 0) notes += std::to_string(entry.invalid_slots) + " damaged slot(s); ";
        if (entry.unpublished_slots != 0) notes += std::to_string(entry.unpublished_slots) + " unfinished commit(s); ";
        if (!notes.empty()) notes.resize(notes.size() - 2);
        else notes = "-";
        return {entry.key,
                std::to_string(entry.generation),
                std::to_string(entry.size),
                detail::hex64(entry.fingerprint),
                type_words(entry.fingerprint, entry.codec),
                detail::codec_name(entry.codec),
                std::to_string(entry.schema_version),
                detail::utc_time(entry.commit_ns),
                std::to_string(entry.slot_count) + " x " + std::to_string(entry.slot_capacity) + " B",
                notes};
    }

    // The newest valid generation of a key, copied out as the exporter
    // copies it (seqlock, checksum on the copy).
    static record read_newest(const segment& view, const std::string& key) {
        const auto found = view.shared_impl()->entry_view_of(key);
        if (!found)
            throw error(errc::not_found, "segment '" + view.name() + "' has no key '" + key +
                                             "'; keepsake-inspect show " + view.name() + " lists its keys");
        if (found->kind == detail::entry_kind::table)
            throw error(errc::invalid_argument, "key '" + key + "' is a side table of '" +
                                                    key.substr(0, key.rfind("::")) +
                                                    "': its items are read by that keeper's table<K, V>() and "
                                                    "exported with its state (keepsake-inspect export)");
        record copied;
        switch (detail::snapshot_newest(found->area, 0, copied)) {
        case detail::snapshot_status::copied: break;
        case detail::snapshot_status::busy:
            throw error(errc::timeout, "key '" + key + "' was committed again during every copy; its owner "
                                       "commits it too often to catch a stable copy now: try again");
        default:
            throw error(errc::not_found, "key '" + key + "' in segment '" + view.name() +
                                             "' holds no valid committed state (never committed, or every slot "
                                             "failed its checksum); keepsake-inspect show lists its slots");
        }
        copied.key = key;
        return copied;
    }

    int dump(const command& line, std::ostream& out) const {
        const segment view = open_view(line);
        print_state(read_newest(view, line.words[2]), line.format, out);
        return 0;
    }

    // A state (a segment key's newest generation, or a store record) in the
    // form asked: hex with its words (default), JSON, or its raw bytes.
    void print_state(const record& copied, const std::string& format, std::ostream& out) const {
        if (format == "raw") {
            out.write(reinterpret_cast<const char*>(copied.bytes.data()),
                      static_cast<std::streamsize>(copied.bytes.size()));
            return;
        }
        if (format == "json") {
            print_json(copied, out);
            return;
        }
        out << "key " << copied.key << ", generation " << copied.generation << ", " << copied.bytes.size()
            << " bytes, fingerprint " << detail::hex64(copied.fingerprint) << " ("
            << type_words(copied.fingerprint, copied.codec) << ", " << detail::codec_name(copied.codec)
            << "), schema " << copied.schema_version << "\n";
        detail::hex_dump(copied.bytes, out);
    }

    void print_json(const record& copied, std::ostream& out) const {
        const registered_type* type = type_of(copied.fingerprint, copied.codec);
        if (!type) {
            std::string known;
            for (const registered_type& each : types_) known += (known.empty() ? "" : ", ") + each.name;
            throw error(errc::type_mismatch,
                        "key '" + copied.key + "' holds type fingerprint " + detail::hex64(copied.fingerprint) +
                            ", which no registered type has (registered: " + (known.empty() ? "none" : known) +
                            "); types are known by fingerprint, not by name: build an inspector that registers "
                            "the type (README, keepsake-inspect), or dump the bytes without --json");
        }
        if (type->schema_version != copied.schema_version)
            throw error(errc::type_mismatch, "key '" + copied.key + "' holds " + type->name + " at schema version " +
                                                 std::to_string(copied.schema_version) + ", registered as version " +
                                                 std::to_string(type->schema_version) +
                                                 "; register it with that schema version, or dump the bytes");
        // Rendered aside first: a decode that fails leaves no half object.
        std::ostringstream rendered;
        try {
            type->to_json(copied, rendered);
        } catch (const error&) {
            throw;
        } catch (const std::exception& failure) {
            throw error(errc::decode_failed, "key '" + copied.key + "' does not render as JSON: " + failure.what());
        }
        out << rendered.str() << "\n";
    }

    // The store the command names; read_only for the store commands.
    static std::unique_ptr<store> open_store(const command& line, bool read_only) {
        const std::string name = line.words[0] == "store" ? "store " + line.words[1] : line.words[0];
        if (line.sqlite_path.empty() == line.files_directory.empty())
            throw detail::usage_error(name + " takes one store: --sqlite PATH or --files DIR");
        if (!line.sqlite_path.empty()) {
            sqlite_store_options options;
            options.read_only = read_only;
            return std::make_unique<sqlite_store>(line.sqlite_path, options);
        }
        file_store_options options;
        options.read_only = read_only;
        return std::make_unique<file_store>(line.files_directory, options);
    }

    // The exporter does the copying (seqlock reads, batches, the store's
    // never-older rule); stop() makes its one full pass and waits for it.
    // What it writes is counted apart from what the store already held at
    // that generation, so a second export of an unchanged segment says so.
    static int export_segment(const command& line, std::ostream& out) {
        const segment view = open_view(line);
        const std::unique_ptr<store> opened = open_store(line, false);
        detail::counting_store target(*opened);
        std::size_t exported = 0;
        std::string last_failure;
        exporter_options options;
        options.interval = std::chrono::hours(1);
        options.prefix = line.prefix;
        options.retry_max = std::chrono::milliseconds(1000);
        options.on_event = [&](const export_event& event) {  // on the exporter's thread, until stop() returns
            if (event.kind == export_event_kind::exported) exported += event.records;
            if (event.kind == export_event_kind::store_failed) last_failure = event.message;
        };
        exporter copier(view, target, options);
        if (!copier.stop(std::chrono::seconds(line.timeout_seconds)))
            throw error(errc::store_failed,
                        "export of segment '" + view.name() + "' to " + target.describe() + " did not finish in " +
                            std::to_string(line.timeout_seconds) + " s" +
                            (last_failure.empty() ? std::string("; its owner may be committing too often")
                                                  : "; last failure: " + last_failure) +
                            "; fix the store (space, permissions) and run it again, or give a longer --timeout");
        const std::size_t written = std::min(target.written(), exported);
        out << "exported " << written << " record(s) of segment '" << view.name() << "' to " << target.describe()
            << (line.prefix.empty() ? std::string() : " with prefix '" + line.prefix + "'");
        if (exported > written) out << "; " << exported - written << " already there at the same generation";
        out << "\n";
        return 0;
    }

    int store_list(const command& line, std::ostream& out) const {
        const std::unique_ptr<store> from = open_store(line, true);
        std::vector<std::vector<std::string>> table{
            {"KEY", "GENERATION", "SIZE", "FINGERPRINT", "TYPE", "CODEC", "SCHEMA", "NOTES"}};
        for (const std::string& key : from->list(line.prefix)) {
            try {
                const std::optional<record> found = from->get(key);
                if (!found) continue;  // removed meanwhile
                table.push_back({key, std::to_string(found->generation), std::to_string(found->bytes.size()),
                                 detail::hex64(found->fingerprint), type_words(found->fingerprint, found->codec),
                                 detail::codec_name(found->codec), std::to_string(found->schema_version), "-"});
            } catch (const error& failure) {
                if (failure.code() != errc::record_corrupt) throw;
                table.push_back({key, "-", "-", "-", "-", "-", "-", "damaged: no valid record"});
            }
        }
        if (!line.tsv) {
            out << "store     " << from->describe() << "\n"
                << "records   " << table.size() - 1
                << (line.prefix.empty() ? std::string() : " with prefix '" + line.prefix + "'") << "\n";
            if (table.size() == 1) return 0;
            out << "\n";
        }
        detail::print_table(table, line.tsv ? "\t" : "  ", out);
        return 0;
    }

    static record read_record(store& from, const std::string& key) {
        std::optional<record> found = from.get(key);
        if (!found)
            throw error(errc::not_found, from.describe() + " has no record '" + key +
                                             "'; keepsake-inspect store list lists its keys");
        return std::move(*found);
    }

    int store_get(const command& line, std::ostream& out) const {
        const std::unique_ptr<store> from = open_store(line, true);
        const record found = read_record(*from, line.words[2]);
        out << "key          " << found.key << "\n"
            << "store        " << from->describe() << "\n"
            << "generation   " << found.generation << "\n"
            << "size         " << found.bytes.size() << " bytes\n"
            << "fingerprint  " << detail::hex64(found.fingerprint) << "\n"
            << "type         " << type_words(found.fingerprint, found.codec) << "\n"
            << "codec        " << detail::codec_name(found.codec) << "\n"
            << "schema       " << found.schema_version << "\n"
            << "checksum     valid\n";
        return 0;
    }

    int store_dump(const command& line, std::ostream& out) const {
        const std::unique_ptr<store> from = open_store(line, true);
        print_state(read_record(*from, line.words[2]), line.format, out);
        return 0;
    }

    static segment open_to_change(const command& line, const std::string& what) {
        try {
            return open_view(line, segment_access::maintenance);
        } catch (const error& failure) {
            if (failure.code() != errc::segment_owned) throw;
            throw error(errc::segment_owned, "cannot " + what + ": " + failure.what() +
                                                 "; keepsake-inspect changes a segment only when no process owns it");
        }
    }

    static int clear_unit(const command& line, std::ostream& out) {
        const std::string& key = line.words[2];
        segment held = open_to_change(line, "clear unit '" + key + "'");
        if (!clear_crashed(held, key))
            throw error(errc::not_found, "unit '" + key + "' of segment '" + held.name() +
                                             "' is not permanently_crashed (or has no record); keepsake-inspect "
                                             "units " + held.name() + " shows each unit's status");
        out << "cleared unit '" << key << "' of segment '" << held.name()
            << "': it starts again (a dynamic supervisor resumes it at the next run)\n";
        return 0;
    }

    static int remove_key(const command& line, std::ostream& out) {
        const std::string& key = line.words[2];
        segment held = open_to_change(line, "delete key '" + key + "'");
        if (!held.remove_key(key))
            throw error(errc::not_found, "segment '" + held.name() + "' has no key '" + key +
                                             "'; keepsake-inspect show " + held.name() + " lists its keys");
        out << "deleted key '" << key << "' from segment '" << held.name() << "'\n";
        return 0;
    }

    // The whole segment file, as segment::remove does it: under the
    // segment's lock, so a live owner is refused by pid.
    static int remove_segment(const command& line, std::ostream& out) {
        const std::string& name = line.words[1];
        check_directory(line.directory);
        bool removed = false;
        try {
            removed = segment::remove(name, line.directory);
        } catch (const error& failure) {
            if (failure.code() != errc::segment_owned) throw;
            throw error(errc::segment_owned, "cannot remove segment '" + name + "': " + failure.what() +
                                                 "; keepsake-inspect changes a segment only when no process owns it");
        }
        if (!removed)
            throw error(errc::not_found, "there is no segment '" + name + "' in " + line.directory +
                                             "; keepsake-inspect list shows the segments there");
        out << "removed segment '" << name << "' (" << line.directory << ")\n";
        return 0;
    }
};

} // namespace keepsake
