// keepsake/detail/inspect_format.hpp: what keepsake-inspect prints with:
// times, codec names, hex dumps, tables, owner words, and a store that
// counts what an export really wrote. Internal to inspect.hpp.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "keepsake/codec.hpp"
#include "keepsake/error.hpp"
#include "keepsake/segment.hpp"
#include "keepsake/store.hpp"

namespace keepsake {

namespace detail {

// A command line that did not parse: exit status 2 and the usage hint.
struct usage_error : error {
    explicit usage_error(const std::string& message) : error(errc::invalid_argument, message) {}
};

// ns since the epoch as UTC, with milliseconds when it has any (commit
// times are whole seconds); 0 is "unknown".
inline std::string utc_time(std::uint64_t ns) {
    if (ns == 0) return "unknown";
    const std::time_t seconds = static_cast<std::time_t>(ns / 1000000000ull);
    std::tm parts{};
    if (!gmtime_r(&seconds, &parts)) return "unknown";
    char text[64];
    const std::size_t length = std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%S", &parts);
    const auto millis = static_cast<unsigned>((ns / 1000000ull) % 1000ull);
    if (millis != 0) std::snprintf(text + length, sizeof(text) - length, ".%03uZ", millis);
    else std::snprintf(text + length, sizeof(text) - length, "Z");
    return text;
}

inline const char* codec_name(std::uint32_t codec) {
    switch (codec) {
    case static_cast<std::uint32_t>(codec_kind::raw): return "raw";
    case static_cast<std::uint32_t>(codec_kind::cereal_binary): return "cereal";
    default: return "unknown";
    }
}

// Offset, 16 bytes in hex, the same as text: the layout of `xxd` and `hexdump -C`.
inline void hex_dump(const std::vector<std::byte>& bytes, std::ostream& out) {
    char line[96];
    for (std::size_t at = 0; at < bytes.size(); at += 16) {
        int used = std::snprintf(line, sizeof(line), "%08zx ", at);
        std::string text;
        for (std::size_t i = at; i < at + 16; ++i) {
            if (i == at + 8) used += std::snprintf(line + used, sizeof(line) - static_cast<std::size_t>(used), " ");
            if (i < bytes.size()) {
                const auto byte = static_cast<unsigned>(std::to_integer<unsigned char>(bytes[i]));
                used += std::snprintf(line + used, sizeof(line) - static_cast<std::size_t>(used), " %02x", byte);
                text += byte >= 0x20 && byte < 0x7f ? static_cast<char>(byte) : '.';
            } else {
                used += std::snprintf(line + used, sizeof(line) - static_cast<std::size_t>(used), "   ");
            }
        }
        out << line << "  |" << text << "|\n";
    }
}

// Columns padded to their widest cell and parted by `gap`; with a tab as
// the gap, no padding (for scripts).
inline void print_table(const std::vector<std::vector<std::string>>& rows, const std::string& gap, std::ostream& out) {
    std::vector<std::size_t> widths;
    for (const auto& row : rows)
        for (std::size_t i = 0; i < row.size(); ++i) {
            if (widths.size() <= i) widths.push_back(0);
            widths[i] = std::max(widths[i], row[i].size());
        }
    const bool pad = gap != "\t";
    for (const auto& row : rows) {
        for (std::size_t i = 0; i < row.size(); ++i) {
            out << row[i];
            if (i + 1 == row.size()) break;
            if (pad) out << std::string(widths[i] - row[i].size(), ' ');
            out << gap;
        }
        out << "\n";
    }
}

inline std::string owner_words(const segment_status& status) {
    const std::string pid = "pid " + std::to_string(status.owner.pid);
    if (status.closed_cleanly) return "closed cleanly by " + pid;
    if (status.owner_alive) return "open, owned by " + pid + " (alive)";
    return "crashed: " + pid + " died without closing it";
}

// A store as the exporter sees it, counting the records it wrote: a record
// the store skips as already there (the same generation) is exported, but
// was not written again.
class counting_store : public store {
public:
    explicit counting_store(store& inner) : inner_(inner) {}
    std::vector<std::size_t> put_batch(const std::vector<record>& records) override {
        std::vector<std::size_t> skipped = inner_.put_batch(records);
        written_ += records.size() - std::min(records.size(), skipped.size());
        return skipped;
    }
    std::optional<record> get(const std::string& key) override { return inner_.get(key); }
    bool remove(const std::string& key) override { return inner_.remove(key); }
    std::vector<std::string> list(const std::string& prefix) override { return inner_.list(prefix); }
    std::string describe() const override { return inner_.describe(); }
    std::size_t written() const noexcept { return written_; }

private:
    store& inner_;
    std::size_t written_ = 0;
};

} // namespace detail

} // namespace keepsake
