// keepsake/segment-inl.hpp: the segment's non-template code. Included by
// segment.hpp in header-only mode; compiled once by src/keepsake.cpp when
// KEEPSAKE_COMPILED_LIB is defined (the CMake option KEEPSAKE_COMPILED).
#pragma once

#ifndef KEEPSAKE_HEADER_ONLY
#include "keepsake/segment.hpp"
#endif

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "keepsake/detail/file_checks.hpp"
#include "keepsake/detail/segment_file-inl.hpp"

namespace keepsake {
namespace detail {

KEEPSAKE_INLINE bool is_name_char(char c, bool allow_path_chars) noexcept {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
    if (c == '.' || c == '_' || c == '-') return true;
    return allow_path_chars && (c == '/' || c == ':');
}

KEEPSAKE_INLINE void check_segment_name(const std::string& name) {
    bool ok = !name.empty() && name.size() <= max_segment_name;
    for (char c : name) ok = ok && is_name_char(c, false);
    if (!ok)
        throw error(errc::invalid_name,
                    "invalid segment name '" + name + "': use 1 to 200 letters, digits, '.', '_' or '-'");
}

KEEPSAKE_INLINE void check_key(const std::string& key) {
    bool ok = !key.empty() && key.size() <= max_key_length;
    for (char c : key) ok = ok && is_name_char(c, true);
    if (!ok)
        throw error(errc::invalid_name, "invalid key '" + key + "': use 1 to " +
                                            std::to_string(max_key_length) +
                                            " letters, digits, '.', '_', '-', '/' or ':'");
}

KEEPSAKE_INLINE std::string segment_directory(const std::string& requested) {
    if (!requested.empty()) return requested;
    const char* from_env = std::getenv("KEEPSAKE_SHM_DIR");
    return (from_env && *from_env) ? std::string(from_env) : std::string("/dev/shm");
}

KEEPSAKE_INLINE std::string segment_path(const std::string& name, const std::string& directory) {
    return segment_directory(directory) + "/" + segment_file_prefix + name;
}

KEEPSAKE_INLINE std::uint64_t header_checksum_of(const segment_header& header) noexcept {
    return hash_bytes(&header, offsetof(segment_header, header_checksum), 0x6b656570ull);
}

// An entry's identity: every word but `state` and `active`, which change
// by single stores, and the region descriptors, which have their own.
KEEPSAKE_INLINE std::uint64_t entry_checksum_of(const dir_entry& entry) noexcept {
    const auto* bytes = reinterpret_cast<const unsigned char*>(&entry);
    return hash_bytes(bytes + offsetof(dir_entry, key_length),
                      offsetof(dir_entry, checksum) - offsetof(dir_entry, key_length), 0x64697265ull);
}

// A region descriptor's checksum is seeded with its entry's: a descriptor
// copied into another entry does not check out there.
KEEPSAKE_INLINE std::uint64_t region_checksum_of(const region_desc& region, std::uint64_t entry_checksum) noexcept {
    return hash_bytes(&region, offsetof(region_desc, checksum), entry_checksum ^ 0x7265676eull);
}

KEEPSAKE_INLINE std::uint64_t block_checksum_of(const directory_block& block) noexcept {
    return hash_bytes(&block, offsetof(directory_block, checksum), 0x626c6f63ull);
}

KEEPSAKE_INLINE std::uint64_t directory_end(std::uint32_t first_block_entries) noexcept {
    return sizeof(segment_header) + std::uint64_t{first_block_entries} * sizeof(dir_entry);
}

KEEPSAKE_INLINE segment_impl::segment_impl(std::string segment_name, const segment_options& options,
                                           segment_access mode)
    : name(std::move(segment_name)), path(segment_path(name, options.directory)), access_(mode) {
    check_segment_name(name);
    if (access_ != segment_access::owner) {
        open_existing(options.directory);
        return;
    }
    check_options(options);
    max_size_ = std::max(options.max_size, options.size);
    bool created_file = false;
    fd_ = open_and_claim(name, path, true, options.mode, created_file);
    try {
        if (created_file || is_unfinished_creation()) build(options, created_file);
        else reopen(options);
        claim_ownership();
        recover_directory();
    } catch (...) {
        unmap();
        ::close(fd_);
        throw;
    }
    log(spdlog::level::info, [&] {
        return "segment '" + name + "' " + to_string(outcome) + " (" + std::to_string(total_size_) + " bytes, " +
               std::to_string(damaged_.size()) + " damaged entries)";
    });
}

// Read-only or maintenance: the same validation as an owner's reopen, and
// no write to the header or the directory.
KEEPSAKE_INLINE void segment_impl::open_existing(const std::string& directory) {
    bool created_file = false;
    fd_ = access_ == segment_access::read_only ? open_checked(path, O_RDONLY)
                                               : open_and_claim(name, path, false, 0600, created_file);
    if (fd_ < 0) {
        if (errno != ENOENT) throw_system("cannot open segment file " + path);
        throw error(errc::not_found, "there is no segment '" + name + "' in " + segment_directory(directory) +
                                         "; check the name and the directory (keepsake::segment::list shows "
                                         "the segments there)");
    }
    try {
        if (is_unfinished_creation())
            throw error(errc::not_found, "segment '" + name + "' was never finished: its creator died (or is "
                                         "still busy) creating it, so it holds no state; the next program that "
                                         "opens it rebuilds it, or remove it");
        const std::uint64_t on_disk = file_size();
        segment_header copy = validated_header(on_disk);
        // A view does not grow the segment: the owner may, and a later
        // view sees it.
        max_size_ = on_disk;
        reserve_address_space(on_disk);
        map(on_disk);
        copy.total_size = on_disk;  // as reopen() does, without recording it
        adopt_geometry(copy);
        recover_directory();
    } catch (...) {
        unmap();
        ::close(fd_);
        throw;
    }
}

KEEPSAKE_INLINE segment_impl::~segment_impl() {
    if (header_ && access_ == segment_access::owner) store_release(header_->clean_state, state_clean);
    unmap();
    if (fd_ >= 0) ::close(fd_);  // drops the flock claim
}

KEEPSAKE_INLINE owner_info segment_impl::owner() const noexcept {
    return owner_info{static_cast<long>(load_relaxed(header_->owner_pid)), load_relaxed(header_->owner_start_time)};
}

KEEPSAKE_INLINE segment_status segment_impl::status() const {
    segment_status status;
    status.owner = owner();
    status.owner_since_ns = load_relaxed(header_->owner_since_ns);
    status.created_ns = header_->created_ns;  // covered by the header checksum
    status.closed_cleanly = load_acquire(header_->clean_state) == state_clean;
    if (status.owner.pid > 0) {
        const std::uint64_t running_since = process_start_time(status.owner.pid);
        status.owner_alive = running_since != 0 &&
                             (status.owner.start_time == 0 || running_since == status.owner.start_time);
    }
    return status;
}

KEEPSAKE_INLINE std::uint64_t segment_impl::free_bytes() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return space_.total();
}

KEEPSAKE_INLINE void segment_impl::refuse_unless(segment_access allowed, const char* what) const {
    if (access_ == segment_access::owner || access_ == allowed) return;
    throw error(errc::invalid_argument, std::string("cannot ") + what + " in segment '" + name + "': this handle " +
                                            "opened it as " + to_string(access_) + "; open it with "
                                            "keepsake::segment (as its owner) for that");
}

KEEPSAKE_INLINE void segment_impl::check_options(const segment_options& options) {
    if (options.max_entries == 0 || options.max_entries > max_directory_entries)
        throw error(errc::invalid_argument, "segment_options::max_entries must be 1 to " +
                                                std::to_string(max_directory_entries));
    const std::uint64_t smallest = align64(directory_end(options.max_entries)) + 4096;
    if (options.size < smallest)
        throw error(errc::invalid_argument,
                    "segment_options::size " + std::to_string(options.size) + " is too small for " +
                        std::to_string(options.max_entries) + " entries; ask for at least " +
                        std::to_string(smallest) + " bytes");
}

// The segment's place in this process: address space for everything it
// may grow to, reserved once (no memory behind it), so that growing maps
// more of the file at the same addresses and no pointer into it moves.
KEEPSAKE_INLINE void segment_impl::reserve_address_space(std::uint64_t size) {
    void* address = ::mmap(nullptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (address == MAP_FAILED)
        throw_system("cannot reserve " + std::to_string(size) + " bytes of address space for segment '" + name +
                     "' (lower segment_options::max_size, or raise ulimit -v)");
    base_ = static_cast<std::byte*>(address);
    reserved_ = static_cast<std::size_t>(size);
    mapped_ = 0;
}

// Maps the file up to `size` bytes (more than before), over the reserved range.
KEEPSAKE_INLINE void segment_impl::map(std::uint64_t size) {
    if (size > reserved_) throw error(errc::out_of_space, "segment '" + name + "' cannot be mapped past " +
                                                              std::to_string(reserved_) + " bytes");
    if (size <= mapped_) return;
    const int protection = access_ == segment_access::read_only ? PROT_READ : PROT_READ | PROT_WRITE;
    // From the page the mapping ends in: a file offset must be page-aligned.
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const std::size_t from = mapped_ / page * page;
    void* address = ::mmap(base_ + from, size - from, protection, MAP_SHARED | MAP_FIXED, fd_,
                           static_cast<off_t>(from));
    if (address == MAP_FAILED) throw_system("cannot map segment '" + name + "'");
    mapped_ = static_cast<std::size_t>(size);
    header_ = reinterpret_cast<segment_header*>(base_);
}

KEEPSAKE_INLINE void segment_impl::unmap() noexcept {
    if (base_) ::munmap(base_, reserved_);
    base_ = nullptr;
    header_ = nullptr;
    reserved_ = 0;
    mapped_ = 0;
}

KEEPSAKE_INLINE std::uint64_t segment_impl::file_size() const {
    struct stat info {};
    if (::fstat(fd_, &info) != 0) throw_system("cannot stat segment '" + name + "'");
    return static_cast<std::uint64_t>(info.st_size);
}

// Creation writes, in order: an empty file, its size, the header with magic
// 0, then the magic. A file cut off before the magic therefore holds nothing
// but zeros after its header. A zero magic over anything else is damage, and
// the file is refused, not wiped.
KEEPSAKE_INLINE bool segment_impl::is_unfinished_creation() const {
    if (file_size() == 0) return true;
    std::uint64_t magic = 0;
    const ssize_t got = ::pread(fd_, &magic, sizeof(magic), 0);
    if (got < 0) throw_system("cannot read segment '" + name + "'");
    if (got == static_cast<ssize_t>(sizeof(magic)) && magic == segment_magic) return false;
    if (got != static_cast<ssize_t>(sizeof(magic)) || magic != 0)
        throw error(errc::segment_corrupt,
                    "file " + path + " is not a keepsake segment, or its header is damaged (bad magic); "
                    "remove it with keepsake::segment::remove(\"" + name + "\") to start afresh");
    if (!only_zeros_from(sizeof(segment_header)))
        corrupt("its magic number is zero but it holds data, so it is damaged rather than unfinished");
    return true;
}

// True if every byte from `offset` to the end of the file is zero. Holes
// (never written, never allocated) are skipped with SEEK_DATA.
KEEPSAKE_INLINE bool segment_impl::only_zeros_from(std::uint64_t offset) const {
    const std::uint64_t end = file_size();
    std::vector<unsigned char> chunk(64 * 1024);
    std::uint64_t at = offset;
    while (at < end) {
        const off_t data = ::lseek(fd_, static_cast<off_t>(at), SEEK_DATA);
        if (data < 0 && errno == ENXIO) return true;  // only holes remain
        if (data >= 0) at = static_cast<std::uint64_t>(data);
        const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(chunk.size(), end - at));
        const ssize_t got = ::pread(fd_, chunk.data(), want, static_cast<off_t>(at));
        if (got <= 0) return got == 0;
        for (ssize_t i = 0; i < got; ++i)
            if (chunk[static_cast<std::size_t>(i)] != 0) return false;
        at += static_cast<std::uint64_t>(got);
    }
    return true;
}

// Backs [from, from + size) of the file with memory now, so a full /dev/shm
// is an error here and never a SIGBUS on some later commit's first touch of
// a page.
KEEPSAKE_INLINE void segment_impl::reserve_memory(std::uint64_t from, std::uint64_t size) {
    const int failed = ::posix_fallocate(fd_, static_cast<off_t>(from), static_cast<off_t>(size));
    if (failed == 0) return;
    if (failed == ENOSPC)
        throw error(errc::out_of_space, "no room for " + std::to_string(size) + " more bytes of segment '" + name +
                                            "' in " + path.substr(0, path.rfind('/')) +
                                            " (see df); free some, or ask for a smaller segment_options::size");
    errno = failed;
    throw_system("cannot reserve " + std::to_string(size) + " bytes for segment '" + name + "'");
}

KEEPSAKE_INLINE void segment_impl::build(const segment_options& options, bool created_file) {
    if (::ftruncate(fd_, 0) != 0 || ::ftruncate(fd_, static_cast<off_t>(options.size)) != 0)
        throw_system("cannot size segment '" + name + "' to " + std::to_string(options.size) + " bytes");
    try {
        reserve_memory(0, options.size);
    } catch (...) {
        if (created_file) ::unlink(path.c_str());  // leave nothing half-made behind
        throw;
    }
    reserve_address_space(max_size_);
    map(options.size);
    segment_header fresh{};
    fresh.magic = segment_magic;
    fresh.layout_version = segment_layout_version;
    fresh.first_block_entries = options.max_entries;
    fresh.directory_offset = sizeof(segment_header);
    fresh.data_offset = align64(directory_end(options.max_entries));
    fresh.created_ns = wall_clock_ns();
    fresh.header_checksum = header_checksum_of(fresh);
    fresh.total_size = options.size;
    fresh.blocks[0].offset = fresh.directory_offset;
    fresh.blocks[0].count = options.max_entries;
    fresh.blocks[0].checksum = block_checksum_of(fresh.blocks[0]);
    fresh.block_count = 1;
    // The owner goes in before the magic: a crash right after creation is
    // then reported as this process's crash, not a nameless owner's.
    fresh.clean_state = state_dirty;
    fresh.owner_pid = static_cast<std::int64_t>(::getpid());
    fresh.owner_start_time = process_start_time(static_cast<long>(::getpid()));
    fresh.owner_since_ns = fresh.created_ns;
    fresh.magic = 0;  // published last, below
    std::memcpy(header_, &fresh, sizeof(fresh));
    store_release(header_->magic, segment_magic);
    fresh.magic = segment_magic;
    adopt_geometry(fresh);
    outcome = open_outcome::created;
}

KEEPSAKE_INLINE void segment_impl::reopen(const segment_options& options) {
    const std::uint64_t on_disk = file_size();
    segment_header copy = validated_header(on_disk);
    // The file's length is the size (the recorded one may lag a crashed
    // growth); it only ever grows, so a damaged record never shrinks it.
    const std::uint64_t size = std::max(on_disk, options.size);
    if (size > on_disk && ::ftruncate(fd_, static_cast<off_t>(size)) != 0)
        throw_system("cannot grow segment '" + name + "' to " + std::to_string(size) + " bytes");
    try {
        reserve_memory(0, size);
    } catch (...) {
        if (size > on_disk && ::ftruncate(fd_, static_cast<off_t>(on_disk)) != 0) { /* stays longer: harmless */ }
        throw;
    }
    max_size_ = std::max(max_size_, size);
    reserve_address_space(max_size_);
    map(size);
    store_release(header_->total_size, size);
    copy.total_size = size;
    adopt_geometry(copy);
}

KEEPSAKE_INLINE segment_header segment_impl::validated_header(std::uint64_t on_disk) {
    if (on_disk < sizeof(segment_header)) corrupt("the file is shorter than its header");
    segment_header copy{};
    if (::pread(fd_, &copy, sizeof(copy), 0) != static_cast<ssize_t>(sizeof(copy)))
        throw_system("cannot read the header of segment '" + name + "'");
    if (copy.layout_version != segment_layout_version && header_checksum_of(copy) == copy.header_checksum)
        throw error(errc::layout_mismatch,
                    "segment '" + name + "' has layout version " + std::to_string(copy.layout_version) +
                        ", this keepsake reads version " + std::to_string(segment_layout_version) +
                        "; open it with the keepsake that wrote it (export its keys to a store there, then "
                        "recover them here), or remove it");
    if (header_checksum_of(copy) != copy.header_checksum) {
        // Layout 1 had a 256-byte header with its checksum at the same place.
        if (copy.layout_version == 1)
            throw error(errc::layout_mismatch,
                        "segment '" + name + "' was made by keepsake 0.1 (layout version 1); this keepsake reads "
                        "version " + std::to_string(segment_layout_version) + ": open it with keepsake 0.1 "
                        "(export its keys to a store there, then recover them here), or remove it");
        corrupt("header checksum mismatch");
    }
    if (copy.first_block_entries == 0 || copy.first_block_entries > max_directory_entries ||
        copy.directory_offset != sizeof(segment_header) ||
        copy.data_offset != align64(directory_end(copy.first_block_entries)) || copy.data_offset > on_disk)
        corrupt("header geometry out of range");
    if (copy.total_size > on_disk)
        corrupt("recorded size " + std::to_string(copy.total_size) + " is more than the file holds (" +
                std::to_string(on_disk) + " bytes): it was cut short");
    outcome = copy.clean_state == state_clean ? open_outcome::reopened_clean
                                              : open_outcome::reopened_after_crash;
    previous_owner = owner_info{static_cast<long>(copy.owner_pid), copy.owner_start_time};
    return copy;
}

// Geometry comes from a header copy that passed validation, never from a
// second read of shared memory.
KEEPSAKE_INLINE void segment_impl::adopt_geometry(const segment_header& validated) noexcept {
    total_size_ = validated.total_size;
    data_offset_ = validated.data_offset;
}

[[noreturn]] KEEPSAKE_INLINE void segment_impl::corrupt(const std::string& why) const {
    throw error(errc::segment_corrupt,
                "segment '" + name + "' is damaged (" + why + "); its contents cannot be trusted: remove it "
                "with keepsake::segment::remove(\"" + name + "\") and restore from a store, or start afresh");
}

KEEPSAKE_INLINE void segment_impl::claim_ownership() noexcept {
    store_relaxed(header_->owner_pid, static_cast<std::int64_t>(::getpid()));
    store_relaxed(header_->owner_start_time, process_start_time(static_cast<long>(::getpid())));
    store_relaxed(header_->owner_since_ns, wall_clock_ns());
    store_release(header_->clean_state, state_dirty);
}

// Growth: the file is extended and backed with memory first, then mapped
// at the addresses reserved for it, then the header records the new size.
// A crash in between leaves a longer file, which the next open takes as
// the size (its length is the truth; the recorded size may lag).
KEEPSAKE_INLINE void segment_impl::grow(std::uint64_t needed, const std::string& key, bool for_directory) {
    const std::string for_what = for_directory ? "the directory (for key '" + key + "')" : "key '" + key + "'";
    const std::uint64_t old_size = total_size_;
    const std::uint64_t limit = std::min<std::uint64_t>(max_size_, reserved_);
    const std::uint64_t wanted = std::max(old_size * 2, (old_size + needed + (1u << 20) - 1) & ~std::uint64_t{(1u << 20) - 1});
    const std::uint64_t new_size = std::min(wanted, limit);
    if (new_size < old_size + needed)
        throw error(errc::out_of_space,
                    "segment '" + name + "' is full: " + for_what + " needs " + std::to_string(needed) +
                        " more bytes and the segment is at its largest (" + std::to_string(limit) +
                        " bytes, segment_options::max_size); open it with a larger max_size, or remove keys");
    if (::ftruncate(fd_, static_cast<off_t>(new_size)) != 0)
        throw_system("cannot grow segment '" + name + "' to " + std::to_string(new_size) + " bytes");
    try {
        reserve_memory(old_size, new_size - old_size);
        map(new_size);
    } catch (...) {
        if (::ftruncate(fd_, static_cast<off_t>(old_size)) != 0) { /* stays longer: the next open uses it */ }
        throw;
    }
    store_release(header_->total_size, new_size);
    total_size_ = new_size;
    space_.release(old_size, new_size - old_size);
    log(spdlog::level::info, [&] {
        return "segment '" + name + "' grew to " + std::to_string(new_size) + " bytes for " + for_what;
    });
}

KEEPSAKE_INLINE std::uint64_t segment_impl::allocate(std::uint64_t size, const std::string& key, bool for_directory) {
    if (const auto offset = space_.allocate(size)) return *offset;
    grow(size - std::min(size, space_.free_at_end(total_size_)), key, for_directory);
    if (const auto offset = space_.allocate(size)) return *offset;
    throw error(errc::out_of_space, "segment '" + name + "' has no room for key '" + key + "'");  // not reached
}

} // namespace detail

// Looks at each file with lstat, never opens one: a FIFO cannot hold it up.
KEEPSAKE_INLINE std::vector<segment_file> segment::list_files(const std::string& directory) {
    std::vector<segment_file> files;
    const std::string where = detail::segment_directory(directory);
    DIR* dir = ::opendir(where.c_str());
    if (!dir) return files;
    const std::string prefix = detail::segment_file_prefix;
    while (dirent* item = ::readdir(dir)) {
        const std::string file = item->d_name;
        if (file.size() <= prefix.size() || file.compare(0, prefix.size(), prefix) != 0) continue;
        segment_file found{file.substr(prefix.size()), {}};
        struct stat info {};
        if (::lstat((where + "/" + file).c_str(), &info) != 0) continue;  // gone meanwhile
        found.refused = detail::unsafe_file_reason(info);
        if (!found.refused.empty())
            found.refused +=
                " (owner uid " + std::to_string(info.st_uid) + ", mode " + detail::octal_mode(info.st_mode) + ")";
        files.push_back(std::move(found));
    }
    ::closedir(dir);
    std::sort(files.begin(), files.end(),
              [](const segment_file& a, const segment_file& b) { return a.name < b.name; });
    return files;
}

KEEPSAKE_INLINE std::vector<std::string> segment::list(const std::string& directory) {
    std::vector<std::string> names;
    for (segment_file& file : list_files(directory)) names.push_back(std::move(file.name));
    return names;
}

KEEPSAKE_INLINE bool segment::exists(const std::string& name, const std::string& directory) {
    detail::check_segment_name(name);
    struct stat info {};
    return ::lstat(detail::segment_path(name, directory).c_str(), &info) == 0;
}

KEEPSAKE_INLINE bool segment::remove(const std::string& name, const std::string& directory) {
    detail::check_segment_name(name);
    const std::string path = detail::segment_path(name, directory);
    bool created_file = false;
    const int fd = detail::open_and_claim(name, path, false, 0600, created_file);
    if (fd < 0) return false;
    const int unlinked = ::unlink(path.c_str());
    ::close(fd);
    if (unlinked != 0) detail::throw_system("cannot remove segment file " + path);
    return true;
}

} // namespace keepsake
