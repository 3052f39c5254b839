// keepsake/stores/file_store.hpp: one file per key in a directory.
//
// A put writes the record to `<name>.tmp`, fsyncs it, renames the current
// `<name>.rec` to `<name>.prev` and the new file to `<name>.rec`; one fsync
// of the directory per batch makes the renames durable. So at every instant
// the directory holds a whole old or a whole new record, and the previous
// one stays as a fallback: get() uses `.prev` when `.rec` is missing or
// fails its checks (and logs the damage as an error).
//
// Each file is framed (magic, format version, lengths, XXH3 of the header
// and of key + words + bytes) and nothing read back is trusted: a short,
// long or damaged file is errc::record_corrupt. Names are the keys with
// every byte outside [A-Za-z0-9_-] written as %XX.
#pragma once

#include <mutex>
#include <string>

#include "keepsake/detail/config.hpp"
#include "keepsake/error.hpp"
#include "keepsake/log.hpp"
#include "keepsake/store.hpp"

namespace keepsake {

struct file_store_options {
    // fsync files and the directory. Off only for tests and benchmarks: a
    // reboot may then lose or empty recent records.
    bool sync = true;
    // Open an existing store directory to read it only (tools): nothing is
    // created or cleaned up, and put_batch/remove throw errc::invalid_argument.
    bool read_only = false;
};

namespace detail {

// The on-disk frame: this header, the key, the bytes. One byte order, as
// the segment.
inline constexpr std::uint64_t file_record_magic = 0x0043455250454b4bull;  // "KKEPREC"
inline constexpr std::uint32_t file_record_format = 1;
// A record file larger than this is damage, not data (a bound before any
// allocation sized by what the file says).
inline constexpr std::uint64_t max_record_file = 1ull << 31;

struct file_record_header {
    std::uint64_t magic;
    std::uint32_t format_version;
    std::uint32_t key_length;
    std::uint64_t generation;
    std::uint64_t fingerprint;
    std::uint32_t schema_version;
    std::uint32_t codec;
    std::uint64_t data_length;
    std::uint64_t checksum;         // record_checksum: key, words and bytes
    std::uint64_t header_checksum;  // the bytes above
};
static_assert(sizeof(file_record_header) == 64);

inline std::uint64_t file_header_checksum(const file_record_header& header) noexcept {
    return hash_bytes(&header, offsetof(file_record_header, header_checksum), 0x66696c65ull);
}

// What reading one file found.
struct file_read {
    enum class status { missing, valid, corrupt } state = status::missing;
    record value;
    std::string why;  // for corrupt: what check failed
};

} // namespace detail

class KEEPSAKE_API file_store : public store {
public:
    // Opens (creating if needed, mode 0700) the directory `directory`, and
    // removes temporary files an interrupted put left behind. An existing
    // directory must be this user's and writable by nobody else
    // (errc::unsafe_file otherwise). Record files are created 0600.
    // Read-only: the directory must exist (errc::not_found otherwise) and is
    // left as it is.
    explicit file_store(std::string directory, file_store_options options = {});

    KEEPSAKE_INLINE std::vector<std::size_t> put_batch(const std::vector<record>& records) override;
    KEEPSAKE_INLINE std::optional<record> get(const std::string& key) override;
    KEEPSAKE_INLINE bool remove(const std::string& key) override;
    KEEPSAKE_INLINE std::vector<std::string> list(const std::string& prefix) override;
    std::string describe() const override { return "file store " + directory_; }

    // The path of the current file of `key` (for tools and tests).
    std::string path_of(const std::string& key) const;

private:
    std::string directory_;
    file_store_options options_;
    std::mutex mutex_;  // put's compare-then-replace is one step per key
    // A rename or unlink not yet made durable by a directory sync: set by
    // each one, cleared only by a sync that succeeded, so a failed sync is
    // retried by the next put or remove even if that one renames nothing.
    bool dir_dirty_ = false;

    // The newest valid of (.rec, .prev); `damage` collects why a file failed.
    detail::file_read newest_valid(const std::string& key, std::string& damage, bool* rec_is_valid = nullptr) const;
    bool put_one(const record& r);
    void write_file(const std::string& path, const record& r) const;
    void sync_directory_if_dirty();
    void check_directory() const;
    void remove_leftovers() const;
    void refuse_if_read_only(const std::string& what) const;
};

} // namespace keepsake

#ifdef KEEPSAKE_HEADER_ONLY
#include "keepsake/stores/file_store-inl.hpp"
#endif
