// keepsake/detail/unit_record.hpp: how the unit registry sits in a segment.
//
// Each unit has a record under "ks:u/<key>" and, once it crashed, a crash
// history under "ks:c/<key>": fixed-size raw structs in two slots, written
// with the commit protocol (the slot after the newest valid one, generation
// last), so a crash at any instant leaves the old or the new record. The
// writer here is a few plain stores, so the fatal-signal handler
// (detail/fatal_signals.hpp) can use it too. Both keys are ordinary keys:
// an exporter copies them to its store with the states, so a reboot finds
// the registry as it was last exported.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "keepsake/codec.hpp"
#include "keepsake/detail/checksum.hpp"
#include "keepsake/detail/process.hpp"
#include "keepsake/detail/slots.hpp"
#include "keepsake/segment.hpp"

namespace keepsake {

// What the registry says of a unit (unit_registry.hpp).
enum class unit_status : std::uint32_t {
    running = 1,          // started and not ended for good (a tree shutdown leaves it so: it resumes)
    stopped_graceful = 2, // stopped on request (terminate_child): kept, not resumed
    stopped_permanent = 3,// ended normally by itself and its restart type ends it (transient, temporary)
    crashed = 4,          // its last instance crashed and was not restarted
    permanently_crashed = 5,  // past its crash threshold: never started automatically until cleared
    deleted = 6,          // being deleted (a crash in between: the next resume finishes it)
};

inline const char* to_string(unit_status status) noexcept {
    switch (status) {
    case unit_status::running: return "running";
    case unit_status::stopped_graceful: return "stopped_graceful";
    case unit_status::stopped_permanent: return "stopped_permanent";
    case unit_status::crashed: return "crashed";
    case unit_status::permanently_crashed: return "permanently_crashed";
    case unit_status::deleted: return "deleted";
    }
    return "unknown";
}

// What ended a unit's run, as its crash history records it.
enum class crash_kind : std::uint32_t {
    exception = 1,       // its code threw (a crash in the process, which went on)
    killed = 2,          // forced to stop after its shutdown timeout
    process_crashed = 3, // a fatal signal (SIGSEGV, SIGABRT...) hit the process while this unit ran
    process_killed = 4,  // the process died (kill -9, power loss) while this unit was running
    start_failed = 5,    // its start threw
};

inline const char* to_string(crash_kind kind) noexcept {
    switch (kind) {
    case crash_kind::exception: return "exception";
    case crash_kind::killed: return "killed";
    case crash_kind::process_crashed: return "process_crashed";
    case crash_kind::process_killed: return "process_killed";
    case crash_kind::start_failed: return "start_failed";
    }
    return "unknown";
}

// What ends a unit's key when the unit ends for good (unit_spec::lifecycle).
enum class key_lifecycle : std::uint32_t {
    automatic = 0,              // temporary: remove_on_normal_exit; others: keep
    keep = 1,                   // state, record and history stay (inspect, restart_child, resume)
    remove_on_normal_exit = 2,  // removed after a normal end; kept after a crash, for inspection
    remove = 3,                 // removed however it ends for good
};

inline const char* to_string(key_lifecycle lifecycle) noexcept {
    switch (lifecycle) {
    case key_lifecycle::automatic: return "automatic";
    case key_lifecycle::keep: return "keep";
    case key_lifecycle::remove_on_normal_exit: return "remove_on_normal_exit";
    case key_lifecycle::remove: return "remove";
    }
    return "unknown";
}

namespace detail {

inline constexpr const char* unit_record_prefix = "ks:u/";
inline constexpr const char* crash_record_prefix = "ks:c/";
inline constexpr const char* skipped_record_prefix = "ks:s/";  // a state the rollback ladder skipped
inline constexpr const char* process_deaths_key = "ks:d";  // the segment's process deaths (persisted_deaths)
inline constexpr std::size_t max_type_name = 48;
inline constexpr std::size_t max_parent_name = 48;
inline constexpr std::size_t crash_history_size = 8;
inline constexpr std::size_t max_crash_reason = 96;
inline constexpr std::size_t process_deaths_kept = 16;

// A crash entry's kind word: the crash_kind, and whether it came before
// the first message after a (re)start (what the rollback ladder counts).
inline constexpr std::uint32_t crash_kind_mask = 0xff;
inline constexpr std::uint32_t crash_at_start_bit = 0x100;

// Record flags.
inline constexpr std::uint32_t unit_flag_dynamic = 1;      // a dynamic supervisor's child: resumed
inline constexpr std::uint32_t unit_flag_died_here = 2;    // a fatal signal hit while it ran (`run`)

struct persisted_unit {
    std::uint32_t status;     // unit_status
    std::uint32_t restart;    // restart_type
    std::uint32_t lifecycle;  // key_lifecycle
    std::uint32_t flags;
    std::uint64_t order;      // start order under its parent: resume keeps it
    std::uint64_t starts;     // every start, restarts in place included
    std::uint64_t crashes;    // every crash ever recorded
    std::uint64_t status_ns;  // wall clock of the last change
    std::uint64_t run;        // the process run that last started it (run_id)
    std::uint64_t rolled_back_from;  // the generation the rollback ladder skipped, 0: none
    std::uint32_t died_signal;       // with unit_flag_died_here
    std::uint8_t key_length;
    std::uint8_t type_length;
    std::uint8_t parent_length;
    std::uint8_t reserved0;
    char key[max_key_length];
    char type[max_type_name];
    char parent[max_parent_name];
};
static_assert(std::is_trivially_copyable_v<persisted_unit>);

struct persisted_crash {
    std::uint64_t wall_ns;
    std::uint64_t generation;  // the committed generation when it crashed
    std::uint32_t kind;        // crash_kind
    std::uint32_t reason_length;
    char reason[max_crash_reason];
};

struct persisted_crashes {
    std::uint32_t count;  // entries in use
    std::uint32_t next;   // where the next one goes (a ring: the oldest is replaced)
    persisted_crash entries[crash_history_size];
};
static_assert(std::is_trivially_copyable_v<persisted_crashes>);

// A run of the process that died while units ran (kill -9, power loss, or a
// fatal signal), as the next run found it: the segment's, not each unit's
// (a kill cuts every unit short; 100 000 histories would say it alike).
struct persisted_death {
    std::uint64_t found_ns;     // wall clock when the next run found it
    std::int64_t pid;           // the run that died: its pid
    std::uint64_t start_time;   // and start time (clock ticks after boot)
    std::int64_t found_by_pid;  // the run that found it
};

struct persisted_deaths {
    std::uint32_t count;  // entries in use
    std::uint32_t next;   // where the next one goes (a ring: the oldest is replaced)
    persisted_death entries[process_deaths_kept];
};
static_assert(std::is_trivially_copyable_v<persisted_deaths>);

inline bool text_fits(std::uint32_t length, std::size_t room) noexcept { return length <= room; }

// A key's registry key: the prefix and the key, or (for a key too long for
// both) the prefix and the key's hash; the record holds the key itself.
inline std::string registry_key(const char* prefix, const std::string& key) {
    const std::string direct = prefix + key;
    if (direct.size() <= max_key_length) return direct;
    char hashed[40];
    std::snprintf(hashed, sizeof(hashed), "#%016llx",
                  static_cast<unsigned long long>(hash_bytes(key.data(), key.size(), 0x72656769u)));
    return prefix + std::string(hashed);
}

inline void copy_text(char* to, std::uint8_t& length, std::size_t room, std::string_view text) noexcept {
    const std::size_t taken = std::min(room, text.size());
    std::memset(to, 0, room);
    if (taken != 0) std::memcpy(to, text.data(), taken);  // an empty view may hold no pointer
    length = static_cast<std::uint8_t>(taken);
}

// Two slots of one fixed-size raw record, written as a keeper commits (the
// slot after the newest valid one, its generation last) by plain stores
// only: usable from a fatal-signal handler.
template <class Record>
class record_slots {
public:
    record_slots() = default;
    explicit record_slots(const slot_area& area) : area_(area) {}

    bool attached() const noexcept { return area_.first != nullptr; }

    // The newest record whose checksum, words and values hold.
    std::optional<Record> read() const noexcept {
        std::uint32_t index = 0;
        std::uint64_t generation = 0;
        return newest(index, generation);
    }

    // read(), by the record's one writer (the registry's, for an attached
    // record): the slot it found is where its first write goes from, so
    // that write checksums no slot again to find it. Only with two slots
    // (the registry's own): the write then replaces the other slot, so a
    // newer slot it did not accept (another type's) cannot outlive it.
    std::optional<Record> read_as_writer() noexcept {
        std::uint32_t index = 0;
        std::uint64_t generation = 0;
        std::optional<Record> found = newest(index, generation);
        if (found && written_generation_ == 0 && area_.count == 2) {
            written_index_ = index;
            written_generation_ = generation;
        }
        return found;
    }

    // Publishes `value` one generation above the newest slot (at least `at_least`).
    // After its first write it remembers where it wrote (the registry's
    // writer is the only one of an attached record), so a crash's
    // bookkeeping checksums only what it writes.
    // `now_ns`: the coarse wall clock, if the caller just read it (0: read it here).
    void write(const Record& value, std::uint64_t at_least = 0, std::uint64_t now_ns = 0) noexcept {
        if (now_ns == 0) now_ns = coarse_wall_clock_ns();
        std::uint64_t newest = written_generation_;
        std::uint32_t newest_index = written_index_;
        const bool scan = written_generation_ == 0;
        for (std::uint32_t index = 0; scan && index < area_.count; ++index) {
            const slot_snapshot snap = read_slot_header(area_, index);
            if (snap.generation > newest && slot_is_valid(area_, snap)) {
                newest = snap.generation;
                newest_index = index;
            }
        }
        const std::uint32_t target = newest == 0 ? 0 : (newest_index + 1) % area_.count;
        unpublish_slot(area_, target);
        std::memcpy(area_.data(target), &value, sizeof(Record));
        slot_snapshot words;
        // At least the wall clock in ns (far below max_generation): a record
        // made afresh after a reboot is still newer than the copy an
        // exporter put in its store before it, so the next export is taken.
        words.generation = std::min(std::max({newest + 1, at_least, now_ns}), max_generation - 1);
        words.size = sizeof(Record);
        words.fingerprint = fingerprint_cached();
        words.schema_version = state_traits<Record>::schema_version;
        words.codec = static_cast<std::uint32_t>(codec_kind::raw);
        words.commit_ns = now_ns - now_ns % 1000000000ull;  // whole seconds, as commit_clock_ns()
        publish_slot(area_, target, words);
        written_index_ = target;
        written_generation_ = words.generation;
    }

    static std::uint64_t fingerprint() { return type_fingerprint<Record>(); }

    // A store record (exported registry) as this type, or nothing.
    static std::optional<Record> from_bytes(std::uint64_t fingerprint_word, std::uint32_t codec,
                                            const std::byte* data, std::size_t size) {
        if (fingerprint_word != fingerprint() || codec != static_cast<std::uint32_t>(codec_kind::raw) ||
            size != sizeof(Record) || !state_traits<Record>::check_bytes(data, size))
            return std::nullopt;
        Record copy;
        std::memcpy(&copy, data, sizeof(Record));
        return copy;
    }

private:
    slot_area area_{};
    std::uint32_t written_index_ = 0;      // where this writer last published (or read, before)
    std::uint64_t written_generation_ = 0;  // and at which generation (0: not yet)

    std::optional<Record> newest(std::uint32_t& best_index, std::uint64_t& best_generation) const noexcept {
        std::optional<Record> best;
        for (std::uint32_t index = 0; index < area_.count; ++index) {
            const slot_snapshot snap = read_slot_header(area_, index);
            if (snap.generation <= best_generation || !acceptable(snap)) continue;
            Record copy;
            std::memcpy(&copy, area_.data(index), sizeof(Record));
            if (!state_traits<Record>::check_bytes(reinterpret_cast<const std::byte*>(&copy), sizeof(Record))) continue;
            best_index = index;
            best_generation = snap.generation;
            best = copy;
        }
        return best;
    }

    bool acceptable(const slot_snapshot& snap) const noexcept {
        return slot_is_valid(area_, snap) && snap.size == sizeof(Record) && snap.fingerprint == fingerprint_cached() &&
               snap.codec == static_cast<std::uint32_t>(codec_kind::raw) &&
               snap.schema_version == state_traits<Record>::schema_version;
    }
public:
    // Computed once, before any signal handler may need it.
    static std::uint64_t fingerprint_cached() noexcept {
        static const std::uint64_t value = fingerprint();
        return value;
    }
};

} // namespace detail

template <>
struct state_traits<detail::persisted_unit> {
    static constexpr std::uint32_t schema_version = 1;
    static std::string type_name() { return "keepsake::unit_record"; }
    static bool check_bytes(const std::byte* data, std::size_t size) {
        if (size != sizeof(detail::persisted_unit)) return false;
        detail::persisted_unit r;
        std::memcpy(&r, data, sizeof(r));
        return r.status >= 1 && r.status <= 6 && r.restart <= 2 && r.lifecycle <= 3 && r.key_length >= 1 &&
               r.key_length <= detail::max_key_length && r.type_length <= detail::max_type_name &&
               r.parent_length <= detail::max_parent_name;
    }
};

template <>
struct state_traits<detail::persisted_crashes> {
    static constexpr std::uint32_t schema_version = 1;
    static std::string type_name() { return "keepsake::crash_history"; }
    static bool check_bytes(const std::byte* data, std::size_t size) {
        if (size != sizeof(detail::persisted_crashes)) return false;
        detail::persisted_crashes r;
        std::memcpy(&r, data, sizeof(r));
        if (r.count > detail::crash_history_size || r.next >= detail::crash_history_size) return false;
        if (r.count < detail::crash_history_size && r.next != r.count) return false;  // a ring not yet full
        for (std::uint32_t index = 0; index < r.count; ++index) {
            const std::uint32_t kind = r.entries[index].kind & detail::crash_kind_mask;
            if (r.entries[index].reason_length > detail::max_crash_reason || kind < 1 || kind > 5 ||
                (r.entries[index].kind & ~(detail::crash_kind_mask | detail::crash_at_start_bit)) != 0)
                return false;
        }
        return true;
    }
};

template <>
struct state_traits<detail::persisted_deaths> {
    static constexpr std::uint32_t schema_version = 1;
    static std::string type_name() { return "keepsake::process_deaths"; }
    static bool check_bytes(const std::byte* data, std::size_t size) {
        if (size != sizeof(detail::persisted_deaths)) return false;
        detail::persisted_deaths r;
        std::memcpy(&r, data, sizeof(r));
        if (r.count > detail::process_deaths_kept || r.next >= detail::process_deaths_kept) return false;
        return r.count == detail::process_deaths_kept || r.next == r.count;  // a ring not yet full
    }
};

} // namespace keepsake
