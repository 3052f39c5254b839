// keepsake/error.hpp: the one exception type of the library and its codes.
#pragma once

#include <stdexcept>
#include <string>

namespace keepsake {

// What went wrong, for code that wants to branch on it; the message says the
// same thing in words, with what to do about it.
enum class errc {
    invalid_name,       // a segment name or key breaks the naming rules
    invalid_argument,   // an option out of its range
    segment_owned,      // another live process (or this one) owns the segment
    segment_corrupt,    // header or directory bytes failed validation
    layout_mismatch,    // made by another keepsake layout version
    out_of_space,       // the segment or its directory is full
    system_error,       // an OS call failed (errno text in the message)
    type_mismatch,      // a key holds another type or schema version
    state_too_large,    // a state does not fit its slot
    decode_failed,      // stored bytes could not be turned back into T
    key_in_use,         // a second keeper for a key already kept here
    concurrent_use,     // two threads used one keeper at the same time
    // supervision (units, supervisors, runtime)
    worker_crashed,     // the worker crashed while serving this call
    not_running,        // the unit or supervisor is stopped (or stopping)
    timeout,            // a call or a shutdown ran out of time
    already_started,    // start_child: a child with this id is running
    already_present,    // start_child: a child with this id exists, not running
    not_found,          // no child, unit or name like that
    child_running,      // restart_child / delete_child on a running child
    limit_reached,      // a dynamic supervisor is at max_children
    start_failed,       // a child (or the whole tree) failed to start
    // durable export (stores, exporter)
    store_failed,       // a store operation failed (I/O, disk full, SQLite)
    record_corrupt,     // a stored record failed its size or checksum check
    version_too_new,    // a record's schema is newer than this program knows
    // files (after the others, so their values stay as they were)
    unsafe_file,        // a segment or store file is not a regular file of this user's, or is open to others
    // the unit registry (after the others, so their values stay as they were)
    permanently_crashed,  // a unit past its crash threshold: clear it before starting it again
    circuit_open,         // a unit type's circuit breaker refuses new starts for a cooldown
    unknown_type,         // no unit type registered under that name
    // object directories (after the others, so their values stay as they were)
    overloaded,  // too many callers already wait for one object to start
    // the cluster tier (after the others, so their values stay as they were)
    not_owner,  // another node owns the object, or it is placed there: cluster::not_owner_error names it
};

class error : public std::runtime_error {
public:
    error(errc code, const std::string& message)
        : std::runtime_error(message), code_(code) {}
    errc code() const noexcept { return code_; }

private:
    errc code_;
};

} // namespace keepsake
