// tests/postgres_server.hpp: a private PostgreSQL server, started by the
// tests themselves (no server of the machine is used or needed).
//
// initdb into a temporary directory (as the `postgres` user when the tests
// run as root: initdb refuses root), a free port on 127.0.0.1, fsync off
// (the tests kill processes, not the machine), trust authentication for the
// user `keepsake`, and idle_in_transaction_session_timeout so that a stopped
// client holding a row lock cannot block others forever. About 3 s.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

namespace test_support {

class postgres_server {
public:
    postgres_server() : bin_(find_bin()) {
        char pattern[] = "/tmp/keepsake-pg-XXXXXX";
        if (::mkdtemp(pattern) == nullptr) throw std::runtime_error("postgres_server: mkdtemp failed");
        dir_ = pattern;
        as_postgres_ = ::getuid() == 0;
        if (as_postgres_) {
            const passwd* user = ::getpwnam("postgres");
            if (user == nullptr || ::chown(dir_.c_str(), user->pw_uid, user->pw_gid) != 0)
                throw std::runtime_error("postgres_server: running as root needs the 'postgres' user (Debian's "
                                         "postgresql package makes it): run ./scripts/deps.sh");
        }
        run(bin_ + "/initdb -D " + dir_ + "/data -A trust -U keepsake --no-sync -E UTF8 --locale=C > " + dir_ +
                "/initdb.log 2>&1",
            "initdb");
        // A port found free may be taken before the server binds it (by
        // another test process's server, or a client's local port): the
        // first start tries another port, twice.
        for (int attempt = 0;; ++attempt) {
            port_ = free_port();
            try {
                start();
                return;
            } catch (const std::runtime_error&) {
                if (attempt == 2) throw;
            }
        }
    }
    postgres_server(const postgres_server&) = delete;
    postgres_server& operator=(const postgres_server&) = delete;
    ~postgres_server() {
        std::system((command(bin_ + "/pg_ctl -D " + dir_ + "/data -m immediate stop") + " > /dev/null 2>&1").c_str());
        std::error_code ignored;
        std::filesystem::remove_all(dir_, ignored);
    }

    // One server for a test binary, started at first use.
    static postgres_server& shared() {
        static postgres_server server;
        return server;
    }

    std::string conninfo(const std::string& database = "postgres") const {
        return "host=127.0.0.1 port=" + std::to_string(port_) + " user=keepsake dbname=" + database +
               " connect_timeout=5";
    }
    int port() const noexcept { return port_; }
    const std::string& directory() const noexcept { return dir_; }

    void start() {
        run(bin_ + "/pg_ctl -D " + dir_ + "/data -l " + dir_ + "/log -w -t 60 start -o \"-p " +
                std::to_string(port_) + " -k " + dir_ +
                " -c listen_addresses=127.0.0.1 -c fsync=off -c idle_in_transaction_session_timeout=5s\" > /dev/null",
            "pg_ctl start");
    }
    // As a crash would stop it: no shutdown checkpoint.
    void stop() { run(bin_ + "/pg_ctl -D " + dir_ + "/data -m immediate -w stop > /dev/null", "pg_ctl stop"); }

private:
    std::string bin_;
    std::string dir_;
    int port_ = 0;
    bool as_postgres_ = false;

    // The newest server installed (Debian: /usr/lib/postgresql/<major>/bin).
    static std::string find_bin() {
        std::string best;
        int best_major = 0;
        std::error_code ignored;
        for (const auto& each : std::filesystem::directory_iterator("/usr/lib/postgresql", ignored)) {
            const int major = std::atoi(each.path().filename().c_str());
            if (major > best_major && std::filesystem::exists(each.path() / "bin" / "initdb")) {
                best_major = major;
                best = (each.path() / "bin").string();
            }
        }
        if (best.empty())
            throw std::runtime_error("no PostgreSQL server in /usr/lib/postgresql/*/bin: run ./scripts/deps.sh "
                                     "(it installs Debian's postgresql)");
        return best;
    }

    // A port below Linux's ephemeral range (32768 and up by default), which
    // clients' connections take their local ports from, that binds now;
    // else one the kernel picks.
    static int free_port() {
        static unsigned seed = static_cast<unsigned>(::getpid());
        for (int attempt = 0; attempt < 64; ++attempt) {
            seed = seed * 1103515245u + 12345u;
            const int port = 20000 + static_cast<int>((seed >> 8) % 12000);
            if (binds(port)) return port;
        }
        return bound_port(0);
    }

    static bool binds(int port) {
        try {
            return bound_port(port) == port;
        } catch (const std::runtime_error&) {
            return false;
        }
    }

    static int bound_port(int port) {
        const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        address.sin_port = htons(static_cast<std::uint16_t>(port));
        socklen_t size = sizeof(address);
        const bool bound = fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&address), size) == 0 &&
                           ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size) == 0;
        if (fd >= 0) ::close(fd);
        if (!bound) throw std::runtime_error("postgres_server: cannot find a free port");
        return ntohs(address.sin_port);
    }

    std::string command(const std::string& line) const {
        return as_postgres_ ? "runuser -u postgres -- sh -c '" + line + "'" : line;
    }

    void run(const std::string& line, const char* what) const {
        if (std::system(command(line).c_str()) != 0) {
            std::ifstream log(dir_ + (std::string(what) == "initdb" ? "/initdb.log" : "/log"));
            const std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
            throw std::runtime_error(std::string("postgres_server: ") + what + " failed: " + line + "\n" + text);
        }
    }
};

} // namespace test_support
