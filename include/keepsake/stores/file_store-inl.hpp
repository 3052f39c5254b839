// keepsake/stores/file_store-inl.hpp: the file store's code. Included by
// file_store.hpp in header-only mode; compiled once by src/keepsake.cpp in
// the compiled mode.
#pragma once

#ifndef KEEPSAKE_HEADER_ONLY
#include "keepsake/stores/file_store.hpp"
#endif

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "keepsake/detail/file_checks.hpp"

namespace keepsake {
namespace detail {

inline constexpr std::size_t max_file_name = 240;

KEEPSAKE_INLINE bool is_plain_name_char(unsigned char c) noexcept {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

// '.' is escaped too, so the suffixes below never clash with a key.
KEEPSAKE_INLINE std::string encode_file_name(const std::string& key) {
    static const char hex[] = "0123456789ABCDEF";
    std::string name;
    for (unsigned char c : key) {
        if (is_plain_name_char(c)) {
            name += static_cast<char>(c);
        } else {
            name += '%';
            name += hex[c >> 4];
            name += hex[c & 15];
        }
    }
    if (key.empty() || name.size() > max_file_name)
        throw error(errc::invalid_argument, "store key '" + key + "' is empty or too long for a file name (" +
                                                std::to_string(name.size()) + " bytes encoded, at most " +
                                                std::to_string(max_file_name) + "); use a shorter prefix or key");
    return name;
}

KEEPSAKE_INLINE int hex_value(char c) noexcept {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// The key a file name stands for, or nothing if it is not one of ours.
KEEPSAKE_INLINE std::optional<std::string> decode_file_name(const std::string& name) {
    std::string key;
    for (std::size_t i = 0; i < name.size(); ++i) {
        const auto c = static_cast<unsigned char>(name[i]);
        if (is_plain_name_char(c)) {
            key += name[i];
            continue;
        }
        if (c != '%' || i + 2 >= name.size() || hex_value(name[i + 1]) < 0 || hex_value(name[i + 2]) < 0)
            return std::nullopt;
        key += static_cast<char>(hex_value(name[i + 1]) * 16 + hex_value(name[i + 2]));
        i += 2;
    }
    if (key.empty()) return std::nullopt;
    return key;
}

[[noreturn]] KEEPSAKE_INLINE void throw_store_io(const std::string& what, int error_number) {
    const std::string hint = error_number == ENOSPC ? " (disk full: free space there; the exporter retries)"
                                                    : error_number == EDQUOT ? " (quota exceeded)" : "";
    throw error(errc::store_failed, what + ": " + std::strerror(error_number) + hint);
}

// Repeats a read or write call (given the bytes done so far) until `size`
// bytes moved; false on an error or an early end of file.
template <class Call>
bool move_all(std::size_t size, Call call) {
    std::size_t done = 0;
    while (done < size) {
        const ssize_t moved = call(done);
        if (moved < 0 && errno == EINTR) continue;
        if (moved == 0) errno = EIO;  // an early end of file (the file shrank): no errno of its own
        if (moved <= 0) return false;
        done += static_cast<std::size_t>(moved);
    }
    return true;
}

// Checks the bytes of one record file, as read, against `key`.
KEEPSAKE_INLINE file_read parse_record_file(const std::vector<std::byte>& bytes, const std::string& key) {
    file_read result;
    result.state = file_read::status::corrupt;
    file_record_header header{};
    if (bytes.size() < sizeof(header)) {
        result.why = "truncated: " + std::to_string(bytes.size()) + " bytes, shorter than its header";
        return result;
    }
    std::memcpy(&header, bytes.data(), sizeof(header));
    if (header.magic != file_record_magic || file_header_checksum(header) != header.header_checksum) {
        result.why = "header damaged (magic or header checksum)";
    } else if (header.format_version != file_record_format) {
        result.why = "written in record format " + std::to_string(header.format_version) + ", this keepsake reads " +
                     std::to_string(file_record_format);
    } else if (header.key_length > bytes.size() - sizeof(header) ||
               header.data_length != bytes.size() - sizeof(header) - header.key_length) {
        // Compared without adding the header's lengths: a forged length
        // must not wrap a sum into a match.
        result.why = "length " + std::to_string(bytes.size()) + " does not match its header (truncated or extended)";
    } else if (header.key_length != key.size() || std::memcmp(bytes.data() + sizeof(header), key.data(), key.size()) != 0) {
        result.why = "it holds another key";
    } else if (!record_generation_in_range(header.generation)) {
        result.why = "generation " + std::to_string(header.generation) + " is out of range (only damage makes it)";
    } else {
        record& r = result.value;
        r.key = key;
        r.generation = header.generation;
        r.schema_version = header.schema_version;
        r.codec = header.codec;
        r.fingerprint = header.fingerprint;
        r.bytes.assign(bytes.begin() + static_cast<std::ptrdiff_t>(sizeof(header) + key.size()), bytes.end());
        if (record_checksum(r) == header.checksum) result.state = file_read::status::valid;
        else result.why = "checksum mismatch (damaged bytes)";
    }
    return result;
}

KEEPSAKE_INLINE file_read read_record_file(const std::string& path, const std::string& key) {
    file_read result;
    // Not through a link, nor held up by a FIFO: a record is a plain file.
    const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return result;
        throw_store_io("cannot open " + path, errno);
    }
    struct stat info {};
    std::vector<std::byte> bytes;
    bool complete = ::fstat(fd, &info) == 0;
    int saved = complete ? 0 : errno;
    if (complete && !S_ISREG(info.st_mode)) {
        ::close(fd);
        throw error(errc::unsafe_file, "store record " + path + " is not a regular file; remove it");
    }
    if (complete && static_cast<std::uint64_t>(info.st_size) <= max_record_file) {
        bytes.resize(static_cast<std::size_t>(info.st_size));
        complete = move_all(bytes.size(), [&](std::size_t done) {
            return ::read(fd, bytes.data() + done, bytes.size() - done);
        });
        if (!complete) saved = errno;  // the read's error, not an earlier call's
    }
    ::close(fd);
    if (!complete) throw_store_io("cannot read " + path, saved != 0 ? saved : EIO);
    if (static_cast<std::uint64_t>(info.st_size) > max_record_file) {
        result.state = file_read::status::corrupt;
        result.why = "impossibly large (" + std::to_string(info.st_size) + " bytes)";
        return result;
    }
    return parse_record_file(bytes, key);
}

KEEPSAKE_INLINE std::vector<std::byte> frame_record(const record& r) {
    file_record_header header{};
    header.magic = file_record_magic;
    header.format_version = file_record_format;
    header.key_length = static_cast<std::uint32_t>(r.key.size());
    header.generation = r.generation;
    header.fingerprint = r.fingerprint;
    header.schema_version = r.schema_version;
    header.codec = r.codec;
    header.data_length = r.bytes.size();
    header.checksum = record_checksum(r);
    header.header_checksum = file_header_checksum(header);
    std::vector<std::byte> framed(sizeof(header) + r.key.size() + r.bytes.size());
    std::memcpy(framed.data(), &header, sizeof(header));
    std::memcpy(framed.data() + sizeof(header), r.key.data(), r.key.size());
    if (!r.bytes.empty()) std::memcpy(framed.data() + sizeof(header) + r.key.size(), r.bytes.data(), r.bytes.size());
    return framed;
}

KEEPSAKE_INLINE bool ends_with(const std::string& text, const std::string& suffix) noexcept {
    return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

KEEPSAKE_INLINE std::vector<std::string> directory_names(const std::string& directory) {
    std::vector<std::string> names;
    DIR* dir = ::opendir(directory.c_str());
    if (!dir) throw_store_io("cannot list store directory " + directory, errno);
    while (dirent* item = ::readdir(dir)) names.emplace_back(item->d_name);
    ::closedir(dir);
    return names;
}

} // namespace detail

KEEPSAKE_INLINE file_store::file_store(std::string directory, file_store_options options)
    : directory_(std::move(directory)), options_(options) {
    if (directory_.empty()) throw error(errc::invalid_argument, "file_store needs a directory");
    if (options_.read_only) {
        struct stat info {};
        if (::stat(directory_.c_str(), &info) != 0 || !S_ISDIR(info.st_mode))
            throw error(errc::not_found, "file store directory " + directory_ + " does not exist");
        return;
    }
    if (::mkdir(directory_.c_str(), 0700) != 0 && errno != EEXIST)
        detail::throw_store_io("cannot create store directory " + directory_, errno);
    check_directory();
    remove_leftovers();
}

KEEPSAKE_INLINE std::string file_store::path_of(const std::string& key) const {
    return directory_ + "/" + detail::encode_file_name(key) + ".rec";
}

KEEPSAKE_INLINE std::vector<std::size_t> file_store::put_batch(const std::vector<record>& records) {
    refuse_if_read_only("put records");
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::size_t> skipped;
    for (std::size_t i = 0; i < records.size(); ++i)
        if (!put_one(records[i])) skipped.push_back(i);
    // Also after a batch that renamed nothing: an earlier batch's renames
    // are not durable until a sync succeeds.
    sync_directory_if_dirty();
    return skipped;
}

KEEPSAKE_INLINE std::optional<record> file_store::get(const std::string& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::string damage;
    detail::file_read found = newest_valid(key, damage);
    if (found.state == detail::file_read::status::valid) {
        if (!damage.empty())
            detail::log(spdlog::level::err, [&] {
                return describe() + ": key '" + key + "': " + damage + "; using the previous record, generation " +
                       std::to_string(found.value.generation);
            });
        return std::move(found.value);
    }
    if (!damage.empty())
        throw error(errc::record_corrupt, describe() + ": key '" + key + "' has no valid record: " + damage +
                                              "; recover from shared memory or the initial state, or remove the key");
    return std::nullopt;
}

KEEPSAKE_INLINE bool file_store::remove(const std::string& key) {
    refuse_if_read_only("remove key '" + key + "'");
    std::lock_guard<std::mutex> lock(mutex_);
    const std::string base = directory_ + "/" + detail::encode_file_name(key);
    bool removed = false;
    // .rec last: stopped between two unlinks (a kill, or an unlink that
    // fails), the key is left at its newest record, never at the older .prev
    // alone, which get() would take for the key's state.
    for (const char* suffix : {".tmp", ".prev", ".rec"}) {
        const std::string path = base + suffix;
        if (::unlink(path.c_str()) == 0) {
            dir_dirty_ = true;
            if (suffix[1] != 't') removed = true;
        } else if (errno != ENOENT) {
            detail::throw_store_io("cannot remove " + path, errno);
        }
    }
    sync_directory_if_dirty();
    return removed;
}

KEEPSAKE_INLINE std::vector<std::string> file_store::list(const std::string& prefix) {
    std::set<std::string> keys;
    for (const std::string& name : detail::directory_names(directory_)) {
        std::string stem;
        if (detail::ends_with(name, ".rec")) stem = name.substr(0, name.size() - 4);
        else if (detail::ends_with(name, ".prev")) stem = name.substr(0, name.size() - 5);
        else continue;
        auto key = detail::decode_file_name(stem);
        if (key && detail::has_prefix(*key, prefix)) keys.insert(*key);
    }
    return {keys.begin(), keys.end()};
}

KEEPSAKE_INLINE detail::file_read file_store::newest_valid(const std::string& key, std::string& damage,
                                                          bool* rec_is_valid) const {
    const std::string base = directory_ + "/" + detail::encode_file_name(key);
    detail::file_read newest;
    for (const char* suffix : {".rec", ".prev"}) {
        detail::file_read found = detail::read_record_file(base + suffix, key);
        if (rec_is_valid && suffix[1] == 'r') *rec_is_valid = found.state == detail::file_read::status::valid;
        if (found.state == detail::file_read::status::corrupt)
            damage += (damage.empty() ? "" : "; ") + std::string(suffix + 1) + " file " + found.why;
        if (found.state == detail::file_read::status::valid &&
            (newest.state != detail::file_read::status::valid || found.value.generation > newest.value.generation))
            newest = std::move(found);
    }
    return newest;
}

// Returns whether it renamed anything (the directory then needs a sync).
KEEPSAKE_INLINE bool file_store::put_one(const record& r) {
    const std::string base = directory_ + "/" + detail::encode_file_name(r.key);
    std::string damage;
    bool rec_is_valid = false;
    const detail::file_read current = newest_valid(r.key, damage, &rec_is_valid);
    const bool have_valid = current.state == detail::file_read::status::valid;
    if (have_valid && current.value.generation >= r.generation) return false;
    write_file(base + ".tmp", r);
    // Only a valid current record becomes the fallback; a damaged one is
    // dropped rather than kept over an older valid .prev.
    const std::string rec = base + ".rec";
    if (rec_is_valid) {
        if (::rename(rec.c_str(), (base + ".prev").c_str()) != 0) detail::throw_store_io("cannot rename " + rec, errno);
        dir_dirty_ = true;
    }
    if (::rename((base + ".tmp").c_str(), rec.c_str()) != 0) detail::throw_store_io("cannot rename into " + rec, errno);
    dir_dirty_ = true;
    return true;
}

// An existing directory must be this user's and writable by nobody else, or
// others could read records through files they planted, or replace them.
KEEPSAKE_INLINE void file_store::check_directory() const {
    struct stat info {};
    if (::stat(directory_.c_str(), &info) != 0) detail::throw_store_io("cannot stat store directory " + directory_, errno);
    const std::string why = detail::unsafe_directory_reason(info);
    if (why.empty()) return;
    throw error(errc::unsafe_file, "file store directory " + directory_ + " is refused: it is " + why + " (owner uid " +
                                       std::to_string(info.st_uid) + ", mode " + detail::octal_mode(info.st_mode) +
                                       "); others could plant or replace its records. Use a directory of this "
                                       "user's that only it may write (chmod go-w), e.g. one that file_store "
                                       "creates (mode 0700)");
}

// Made afresh each time: never through a file or link someone left at
// that name, and never with a mode other than 0600.
KEEPSAKE_INLINE void file_store::write_file(const std::string& path, const record& r) const {
    const std::vector<std::byte> framed = detail::frame_record(r);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) detail::throw_store_io("cannot remove " + path, errno);
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) detail::throw_store_io("cannot create " + path, errno);
    bool ok = detail::move_all(framed.size(), [&](std::size_t done) {
        return ::write(fd, framed.data() + done, framed.size() - done);
    });
    int saved = ok ? 0 : errno;  // each failing call's own errno
    if (ok && options_.sync && ::fsync(fd) != 0) {
        ok = false;
        saved = errno;
    }
    if (::close(fd) != 0 && ok) {
        ok = false;
        saved = errno;
    }
    if (ok) return;
    ::unlink(path.c_str());  // a partial file would only take space
    detail::throw_store_io("cannot write " + path, saved != 0 ? saved : EIO);
}

KEEPSAKE_INLINE void file_store::sync_directory_if_dirty() {
    if (!dir_dirty_ || !options_.sync) return;
    const int fd = ::open(directory_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) detail::throw_store_io("cannot open store directory " + directory_, errno);
    const bool ok = ::fsync(fd) == 0;
    const int saved = ok ? 0 : errno;
    ::close(fd);
    if (!ok) detail::throw_store_io("cannot sync store directory " + directory_, saved);
    dir_dirty_ = false;
}

KEEPSAKE_INLINE void file_store::refuse_if_read_only(const std::string& what) const {
    if (options_.read_only)
        throw error(errc::invalid_argument, describe() + " was opened read-only: cannot " + what);
}

KEEPSAKE_INLINE void file_store::remove_leftovers() const {
    for (const std::string& name : detail::directory_names(directory_))
        if (detail::ends_with(name, ".tmp")) ::unlink((directory_ + "/" + name).c_str());
}

} // namespace keepsake
