#include <keepsake/keepsake.hpp>
#include <chrono>
#include <iostream>
#include <stdexcept>
#include <thread>

struct counter { long value = 0; };   // trivially copyable: committed as raw bytes

int main() {
    keepsake::segment segment("quick-start");      // /dev/shm/keepsake.quick-start
    keepsake::runtime runtime;                     // runs the worker fiber on a thread of its own

    keepsake::unit_spec<counter> spec;
    spec.name = "counter";                         // the key in the segment
    spec.where = &segment;
    spec.init = [](counter& c, const keepsake::start_info& info) {   // on every (re)start
        std::cout << (info.restarts ? "restarted" : info.restored ? "resumed" : "started")
                  << " at " << c.value << std::endl;
    };
    spec.loop = [](keepsake::unit_context<counter>& context) {
        while (!context.stop_requested()) {
            long value = ++context.state().value;
            context.commit();                      // from here on, no crash can lose it
            std::cout << "count " << value << std::endl;
            if (value % 10 == 0) throw std::runtime_error("bug");   // restarted from the last commit
            context.sleep_for(std::chrono::milliseconds(100));
        }
    };
    keepsake::start_unit(runtime, spec);
    std::this_thread::sleep_for(std::chrono::hours(24));   // kill -9 it, run it again: it resumes
}
