// keepsake/detail/side_stack.hpp: runs a call on a pooled side stack, not
// on the calling fiber's own.
//
// Why: every page a fiber's stack touches stays resident as long as the
// fiber lives, and a unit's worker reaches deepest once, at its start (the
// registry's record, a crash accounted after a kill, the keeper's attach and
// restore: about 4 KiB of frames below the worker's own). Run there, the
// start made every idle unit hold two stack pages, where serving needs one.
// Run on a side stack taken from a small pool (the one handed back last, so
// its pages are resident already), the start touches no new page.
#pragma once

#include <exception>
#include <memory>
#include <utility>

#include <boost/context/fiber.hpp>
#include <boost/context/preallocated.hpp>

#include "keepsake/detail/stack_pool.hpp"

namespace keepsake::detail {

// The side stack is given to Boost.Context preallocated; it goes back to
// the pool after the call, so Boost.Context's own release does nothing.
struct kept_stack {
    boost::context::stack_context allocate() { return {}; }
    void deallocate(boost::context::stack_context&) noexcept {}
};

// Runs `call` on a stack of `side` (or in place without a pool). A throw
// comes out here as it went in. The call may suspend its fiber: the side
// stack stays taken until it returns.
template <class Call>
void on_side_stack(stack_pool* side, Call&& call) {
    if (side == nullptr) {
        call();
        return;
    }
    boost::context::stack_context stack = side->allocate();
    std::exception_ptr thrown;
    {
        boost::context::fiber on_side(std::allocator_arg, boost::context::preallocated(stack.sp, stack.size, stack),
                                      kept_stack{}, [&](boost::context::fiber&& back) {
                                          try {
                                              call();
                                          } catch (...) {
                                              thrown = std::current_exception();
                                          }
                                          return std::move(back);
                                      });
        std::move(on_side).resume();
    }
    side->deallocate(stack);
    if (thrown) std::rethrow_exception(thrown);
}

} // namespace keepsake::detail
