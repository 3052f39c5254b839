// keepsake/detail/blame.hpp: the unit whose code this thread runs now, for
// the fatal-signal handler (detail/fatal_signals.hpp). Set around a
// message, a start and a loop body; cleared at every fiber switch (the
// schedulers' pick), so a fiber that suspends or moves to another thread
// never leaves another unit marked.
#pragma once

namespace keepsake::detail {

template <class Record>
class record_slots;
struct persisted_unit;
using unit_record_slots = record_slots<persisted_unit>;

inline unit_record_slots*& running_unit() noexcept {
    static thread_local unit_record_slots* current = nullptr;
    return current;
}

} // namespace keepsake::detail
