// keepsake/segment.hpp: a named region of shared memory that outlives the
// process that wrote it.
//
// A segment is a file in /dev/shm (or $KEEPSAKE_SHM_DIR) mapped with mmap. It
// has one live owner at a time, enforced with flock: the kernel drops the
// lock when the owner dies, however it dies, so the next opener takes over.
// Every change to its layout is a sequence of plain stores ordered so that a
// crash at any instant leaves it readable: there is no interprocess mutex and
// no allocator lock that a killed process could leave held.
#pragma once

#include <algorithm>
#include <functional>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <unordered_map>
#include <string>
#include <utility>
#include <vector>

#include "keepsake/detail/atomic.hpp"
#include "keepsake/detail/config.hpp"
#include "keepsake/detail/checksum.hpp"
#include "keepsake/detail/key_index.hpp"
#include "keepsake/detail/layout.hpp"
#include "keepsake/detail/process.hpp"
#include "keepsake/detail/slots.hpp"
#include "keepsake/detail/space.hpp"
#include "keepsake/error.hpp"
#include "keepsake/log.hpp"

namespace keepsake {

// How open() found the segment.
enum class open_outcome {
    created,               // it did not exist, or an unfinished creation was rebuilt
    reopened_clean,        // the previous owner closed it
    reopened_after_crash,  // the previous owner died holding it
};

inline const char* to_string(open_outcome outcome) noexcept {
    switch (outcome) {
    case open_outcome::created: return "created";
    case open_outcome::reopened_clean: return "reopened_clean";
    case open_outcome::reopened_after_crash: return "reopened_after_crash";
    }
    return "unknown";
}

struct owner_info {
    long pid = 0;
    std::uint64_t start_time = 0;  // clock ticks after boot, from /proc
};

// How a handle opens a segment.
enum class segment_access {
    // The default: open or create, take the flock, claim ownership, finish
    // what a crash cut short; marked closed-cleanly when the last handle goes.
    owner,
    // An existing segment, mapped read-only, with no lock and no write: for
    // looking at a segment whose owner may be alive or dead, without
    // disturbing either. Keepers cannot attach and keys cannot be removed.
    read_only,
    // An existing segment whose owner is dead (or that was closed): takes the
    // flock, so a live owner is refused by pid and no program can open it
    // meanwhile, but leaves the recorded owner, the clean/crashed flag and
    // the size as found. Keys can be removed; keepers cannot attach.
    maintenance,
};

inline const char* to_string(segment_access access) noexcept {
    switch (access) {
    case segment_access::owner: return "owner";
    case segment_access::read_only: return "read_only";
    case segment_access::maintenance: return "maintenance";
    }
    return "unknown";
}

// The owner as the segment's header records it (segment::status()).
struct segment_status {
    owner_info owner;             // the process that owns it, or owned it last
    bool closed_cleanly = false;  // that owner let go of it (else it is open, or it crashed)
    bool owner_alive = false;     // that pid runs now, with the same start time
    std::uint64_t created_ns = 0;      // wall clock, ns since the epoch
    std::uint64_t owner_since_ns = 0;  // when that owner took it
};

struct segment_options {
    // Bytes of the file at creation, backed by memory at open
    // (posix_fallocate), so a full /dev/shm is an error at open rather than
    // a SIGBUS later. An existing segment grows to it, never shrinks.
    std::uint64_t size = 4u << 20;
    // How large the segment may grow: when keys need more room than it has,
    // the owner extends the file (and its mapping, in place) up to this.
    // Address space for it is reserved at open, memory only as it grows.
    std::uint64_t max_size = std::uint64_t{1} << 30;
    // Directory entries of the first directory block, fixed at creation.
    // The directory grows past it by blocks taken from the data area (each
    // twice the one before, 16 blocks at most).
    std::uint32_t max_entries = 256;
    // File mode for a new segment: the owner's bits only. A segment with any
    // bit for group or others is refused (errc::unsafe_file), as one made
    // by another user is.
    unsigned mode = 0600;
    // Where segment files live: empty means $KEEPSAKE_SHM_DIR, else /dev/shm.
    std::string directory;
};

// One key in a segment, as listed by segment::entries().
struct entry_info {
    std::string key;
    std::uint32_t kind = 1;             // 1: a keeper's state, 2: a side table
    std::uint32_t slot_count = 0;
    std::uint64_t slot_capacity = 0;
    std::uint32_t moves = 0;            // times its slots moved to a larger region
    std::uint64_t generation = 0;       // newest valid generation, 0 if none
    std::uint64_t size = 0;             // bytes of that generation
    std::uint64_t fingerprint = 0;
    std::uint32_t schema_version = 0;
    std::uint32_t invalid_slots = 0;    // published slots whose bytes fail their check
    std::uint32_t unpublished_slots = 0; // slots a commit started on and did not finish
    std::uint32_t codec = 0;            // of the newest valid generation (a codec_kind value)
    std::uint64_t commit_ns = 0;        // wall clock of that commit, ns since the epoch; 0 if unknown
};

// A file in a segment directory, as segment::list_files() sees it.
struct segment_file {
    std::string name;     // the segment's name
    std::string refused;  // why keepsake will not open it (errc::unsafe_file), or empty
};

namespace detail {

inline constexpr const char* segment_file_prefix = "keepsake.";
inline constexpr std::size_t max_segment_name = 200;
inline constexpr std::uint32_t max_slots_per_entry = 64;
inline constexpr std::uint32_t max_directory_entries = 1u << 24;
inline constexpr std::uint32_t max_table_items = 1u << 24;

KEEPSAKE_API std::uint64_t header_checksum_of(const segment_header& header) noexcept;
KEEPSAKE_API std::uint64_t entry_checksum_of(const dir_entry& entry) noexcept;
KEEPSAKE_API std::uint64_t region_checksum_of(const region_desc& region, std::uint64_t entry_checksum) noexcept;
KEEPSAKE_API std::uint64_t block_checksum_of(const directory_block& block) noexcept;
// Where segment files live: `requested`, else $KEEPSAKE_SHM_DIR, else /dev/shm.
KEEPSAKE_API std::string segment_directory(const std::string& requested);

// A directory entry as copied out of shared memory and validated.
struct found_entry {
    std::uint32_t index;
    dir_entry entry;
};

// An entry's active region, from a validated copy of the entry.
struct entry_region {
    region_desc region;
    std::uint64_t bytes = 0;  // the region's length
};

// The open mapping of one segment in this process.
class KEEPSAKE_API segment_impl {
public:
    std::string name;
    std::string path;
    open_outcome outcome = open_outcome::created;
    std::optional<owner_info> previous_owner;
    // Under registry_book::of's lock: the unit registry of this mapping has
    // installed the fatal signal handlers (once per open, not per book).
    bool fatal_handlers_installed = false;

    segment_impl(std::string segment_name, const segment_options& options,
                 segment_access mode = segment_access::owner);

    segment_impl(const segment_impl&) = delete;
    segment_impl& operator=(const segment_impl&) = delete;

    ~segment_impl();

    std::uint64_t total_size() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return total_size_;
    }

    // Bytes not in use by any key or directory block, and the largest run.
    std::uint64_t free_bytes() const;

    segment_access access() const noexcept { return access_; }

    segment_status status() const;

    // The owner recorded in the header, without asking /proc whether it
    // still runs (status() does): this process, for an owner handle.
    owner_info owner() const noexcept;

    std::size_t damaged_count() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return damaged_.size();
    }

    struct attached_entry {
        std::uint32_t index = 0;  // its directory entry
        slot_area area;
        bool created = false;     // the key did not exist before
    };

    // Finds the key's entry, or adds one with a region of `count` slots (or
    // items) of `capacity` bytes. A found entry of another kind is refused.
    // Marks the key as kept in this process until release_entry().
    attached_entry attach(const std::string& key, entry_kind kind, std::uint32_t count, std::uint64_t capacity);

    // Gives back entry `index` (attach()'s): by the entry the keeper holds,
    // not by its key, which damage could make name another entry.
    void release_entry(std::uint32_t index) noexcept {
        std::lock_guard<std::mutex> lock(mutex_);
        if (index < attached_.size()) attached_[index] = false;
    }

    // Moves an attached entry to a new region of `count` x `capacity`:
    // `fill` writes the new region (its slots are cleared first), then the
    // entry switches to it with one store, and the old region is freed. A
    // crash before the switch leaves the entry as it was; after, as filled.
    // Grows the segment if needed; errc::out_of_space past max_size.
    slot_area move_entry(std::uint32_t index, std::uint32_t count, std::uint64_t capacity,
                         const std::function<void(const slot_area&)>& fill);

    // Forgets a key and its side tables (their regions become free). Not
    // while a keeper holds it or one of its tables.
    bool remove_key(const std::string& key);

    void drop_damaged_entries();

    std::vector<entry_info> list_entries() const;

    // Each valid key with its slots as mapped here, for a reader that copies
    // committed state out (the exporter). The bytes stay mapped while this
    // segment_impl lives; a region freed meanwhile may be taken by another
    // key, whose slots carry another tag, so a reader never mistakes them.
    struct entry_view {
        std::string key;
        slot_area area;
        std::uint32_t index = 0;  // its directory entry
        std::uint64_t nonce = 0;  // tells a key removed and added again from the old one
        entry_kind kind = entry_kind::state;
    };
    std::vector<entry_view> entry_views() const;
    // The side tables of `key` ('<key>::<name>' entries) by name, without a
    // pass over the directory (owner and maintenance handles).
    std::vector<std::string> table_names_of(const std::string& key) const;
    // Where entry `index` is now, if it is still the entry `nonce` names: a
    // reader that copied from a view checks that it did not move meanwhile.
    std::optional<slot_area> current_area(std::uint32_t index, std::uint64_t nonce) const;
    // The view of one valid key, or nothing. Unlike attach, it does not
    // refuse while damaged entries exist: it only reads.
    std::optional<entry_view> entry_view_of(const std::string& key) const;

private:
    segment_access access_ = segment_access::owner;
    int fd_ = -1;
    std::byte* base_ = nullptr;         // start of the reserved address range
    std::size_t reserved_ = 0;          // bytes of address space reserved at base_
    std::size_t mapped_ = 0;            // bytes of the file mapped at base_
    segment_header* header_ = nullptr;
    std::uint64_t total_size_ = 0;      // under mutex_ once open
    std::uint64_t max_size_ = 0;
    std::uint64_t data_offset_ = 0;
    mutable std::mutex mutex_;          // directory and space changes within this process
    // Which entries have a live keeper here: a bit an entry (a node a key
    // was 64 B, twice for each active object).
    std::vector<bool> attached_;
    std::vector<std::uint32_t> damaged_;
    // The directory blocks, validated at open (and as they are added).
    struct block_place {
        std::uint64_t offset;
        std::uint32_t count;
        std::uint32_t first_index;
    };
    std::vector<block_place> blocks_;
    std::uint32_t entry_count_ = 0;     // entries in all blocks
    // Where each valid key's entry is, so finding and adding keys does not
    // scan the whole directory. Kept only while this handle holds the lock
    // (owner, maintenance): then nobody else changes the directory.
    key_index directory_index_;
    std::set<std::string> table_index_;  // the side-table keys among them, sorted (few)
    std::uint32_t free_from_ = 0;       // no free entry below this one (indexed handles)
    free_space space_;                  // the owner's free-space map (layout.hpp)
    std::uint64_t nonce_counter_ = 0;

    bool indexed() const noexcept { return access_ != segment_access::read_only; }
    // The indexed entry that names `key` (its words not checked: for this
    // process's own bookkeeping, not for reading its slots).
    std::optional<std::uint32_t> indexed_entry(const std::string& key) const noexcept {
        return directory_index_.find(key, [&](std::uint32_t index) { return entry_names(index, key); });
    }
    bool entry_names(std::uint32_t index, const std::string& key) const noexcept {
        const dir_entry& entry = *entry_at(index);
        return entry.key_length == key.size() && std::memcmp(entry.key, key.data(), key.size()) == 0;
    }
    bool is_attached(const std::string& key) const noexcept {
        const auto index = indexed_entry(key);
        return index && *index < attached_.size() && attached_[*index];
    }

    static void check_options(const segment_options& options);

    dir_entry* entry_at(std::uint32_t index) const noexcept;

    void reserve_address_space(std::uint64_t size);
    void map(std::uint64_t size);
    void unmap() noexcept;
    // Read-only views: maps what the owner added to the file since.
    void follow_growth() const;
    std::uint64_t file_size() const;

    bool is_unfinished_creation() const;
    bool only_zeros_from(std::uint64_t offset) const;
    void reserve_memory(std::uint64_t from, std::uint64_t size);
    void build(const segment_options& options, bool created_file);

    void reopen(const segment_options& options);
    // Checks the header against the file's length; the validated copy.
    segment_header validated_header(std::uint64_t on_disk);
    void open_existing(const std::string& directory);
    void refuse_unless(segment_access allowed, const char* what) const;

    void adopt_geometry(const segment_header& validated) noexcept;

    [[noreturn]] void corrupt(const std::string& why) const;

    void claim_ownership() noexcept;

    // Extends the file, its memory and its mapping by at least `needed`
    // bytes, in place (addresses stay valid). errc::out_of_space past max_size.
    void grow(std::uint64_t needed, const std::string& key, bool for_directory);
    // Takes `size` bytes from the free space, growing the segment if needed.
    // `key` (and whether it is for a directory block) names the need in messages.
    std::uint64_t allocate(std::uint64_t size, const std::string& key, bool for_directory = false);

    bool region_in_bounds(const region_desc& region, entry_kind kind) const noexcept;
    static std::uint64_t region_bytes(const region_desc& region, entry_kind kind) noexcept;

    // Copies entry `index` out of shared memory and checks it; only a copy
    // that checked out is ever used to compute an address.
    bool read_valid_entry(std::uint32_t index, dir_entry& out) const noexcept;

    slot_area area_of(const dir_entry& entry) const noexcept;
    bool set_aside(std::uint32_t index) const noexcept;
    std::vector<std::string> table_keys_of(const std::string& key) const;  // '<key>::<name>' entries
    bool remove_entry(const std::string& key);

    std::optional<found_entry> find_entry(const std::string& key) const;
    std::optional<found_entry> find_valid_entry(const std::string& key) const noexcept;

    // Adding an entry: take a region from the free space, clear its slot
    // headers, mark a free directory entry WRITING, fill it, then mark it
    // READY. A crash before READY leaves a WRITING entry (cleared on the
    // next open) and its region unreferenced, hence free.
    attached_entry add_entry(const std::string& key, entry_kind kind, std::uint32_t count, std::uint64_t capacity);
    std::uint32_t free_entry_index(const std::string& key);
    // A new directory block, twice the last one; false if there can be no more.
    bool add_directory_block(const std::string& for_key);

    // On open: check the directory blocks, set damaged entries aside, and,
    // as the owner, finish what a crash interrupted and build the free-space map.
    void recover_directory();
    void read_directory_blocks(const segment_header& validated);

    static entry_info describe(const dir_entry& entry, const slot_area& area);
};

} // namespace detail

// A handle to an open segment. Copies share one mapping; the segment is
// marked closed-cleanly and its ownership released when the last handle and
// the last keeper using it are gone.
class KEEPSAKE_API segment {
public:
    // Opens the segment `name`, creating it if needed. Throws keepsake::error
    // if the name is invalid, another live process (or another handle in this
    // process) owns it, or its bytes fail validation.
    explicit segment(const std::string& name, const segment_options& options = {})
        : impl_(std::make_shared<detail::segment_impl>(name, options)) {}

    static segment open(const std::string& name, const segment_options& options = {}) {
        return segment(name, options);
    }

    // Opens an existing segment without becoming its owner (see
    // segment_access): read_only works whether its owner is alive or dead;
    // maintenance throws errc::segment_owned, naming the pid, while a live
    // process owns it. Throws errc::not_found if there is no such segment,
    // and validates the header and directory as an owner's open does.
    static segment open_existing(const std::string& name, segment_access access,
                                 const std::string& directory = {}) {
        if (access == segment_access::owner)
            throw error(errc::invalid_argument, "segment::open_existing opens read_only or for maintenance; "
                                                "to own segment '" + name + "', construct a keepsake::segment");
        segment_options options;
        options.directory = directory;
        return segment(std::make_shared<detail::segment_impl>(name, options, access));
    }

    const std::string& name() const { return impl().name; }
    const std::string& path() const { return impl().path; }
    open_outcome outcome() const { return impl().outcome; }
    // The owner before this one, when the segment already existed.
    std::optional<owner_info> previous_owner() const { return impl().previous_owner; }
    segment_access access() const { return impl().access(); }
    // Who owns it, or owned it last, as its header says now.
    segment_status status() const { return impl().status(); }
    std::uint64_t size() const { return impl().total_size(); }
    // Bytes neither a key nor the directory uses (the segment may still
    // grow past them, up to segment_options::max_size).
    std::uint64_t free_bytes() const { return impl().free_bytes(); }

    std::vector<entry_info> entries() const {
        return impl().list_entries();
    }

    // Entries whose directory record failed validation at open. While there
    // are any, adding or finding a key is refused (it might be one of them).
    std::size_t damaged_entries() const { return impl().damaged_count(); }
    void drop_damaged_entries() { impl().drop_damaged_entries(); }

    // Forgets a key and its committed state. Returns false if it was absent.
    bool remove_key(const std::string& key) { return impl().remove_key(key); }

    // Lets go of this handle (the segment closes when nothing else uses it).
    void close() noexcept { impl_.reset(); }
    bool is_open() const noexcept { return impl_ != nullptr; }

    // Names of the segments in `directory` (default as in segment_options),
    // refused files included: opening one throws errc::unsafe_file.
    static std::vector<std::string> list(const std::string& directory = {});
    // The same, each with why it is refused (not a regular file of this
    // user's, or open to group or others), without opening any.
    static std::vector<segment_file> list_files(const std::string& directory = {});

    // Whether a file (of any kind) has that segment's name.
    static bool exists(const std::string& name, const std::string& directory = {});

    // Deletes a segment that no live process owns. Returns false if there was
    // none; throws if it is owned, and errc::unsafe_file for a file it would
    // not open (remove that by hand, once you know who made it).
    static bool remove(const std::string& name, const std::string& directory = {});

    // For keeper<T>: the shared mapping.
    const std::shared_ptr<detail::segment_impl>& shared_impl() const {
        impl();
        return impl_;
    }

private:
    std::shared_ptr<detail::segment_impl> impl_;

    explicit segment(std::shared_ptr<detail::segment_impl> opened) : impl_(std::move(opened)) {}

    detail::segment_impl& impl() const {
        if (!impl_) throw error(errc::invalid_argument, "this segment handle was closed; open the segment again");
        return *impl_;
    }
};

} // namespace keepsake

#ifdef KEEPSAKE_HEADER_ONLY
#include "keepsake/segment-inl.hpp"
#include "keepsake/detail/directory-inl.hpp"
#endif
