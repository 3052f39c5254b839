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
