// keepsake/detail/segment_file-inl.hpp: a segment's file, opened and
// claimed (its owner read and checked before anything is trusted). Included
// by segment-inl.hpp, so compiled with it: in header-only mode by
// segment.hpp, once by src/keepsake.cpp in compiled mode.
#pragma once

#ifndef KEEPSAKE_HEADER_ONLY
#include "keepsake/segment.hpp"
#endif

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "keepsake/detail/file_checks.hpp"

namespace keepsake {
namespace detail {

// A failed system call, as errc::system_error with errno's text.
[[noreturn]] KEEPSAKE_INLINE void throw_system(const std::string& what) {
    throw error(errc::system_error, what + ": " + std::strerror(errno));
}

// Reads the owner of a segment file without owning it, for messages.
KEEPSAKE_INLINE owner_info peek_owner(int fd) noexcept {
    segment_header header{};
    if (::pread(fd, &header, sizeof(header), 0) != static_cast<ssize_t>(sizeof(header))) return {};
    if (header.magic != segment_magic) return {};
    return owner_info{static_cast<long>(header.owner_pid), header.owner_start_time};
}

[[noreturn]] KEEPSAKE_INLINE void throw_owned(const std::string& name, int fd) {
    const owner_info owner = peek_owner(fd);
    const long pid = owner.pid;
    // A maintenance handle (keepsake-inspect delete) holds the lock without
    // recording itself: the recorded owner is then gone.
    const bool recorded_owner_gone =
        pid > 0 && owner.start_time != 0 && process_start_time(pid) != owner.start_time;
    std::string who = pid == 0 ? std::string("another process (it is still creating it)")
                    : pid == static_cast<long>(::getpid()) ? "this process (pid " + std::to_string(pid) + ")"
                    : recorded_owner_gone ? "another process, not its last owner (pid " + std::to_string(pid) +
                                                ", gone): a tool such as keepsake-inspect may hold it for a moment"
                    : "pid " + std::to_string(pid);
    throw error(errc::segment_owned,
                "segment '" + name + "' is owned by " + who +
                    "; a segment has one live owner: close it there, or wait for that process to exit");
}

[[noreturn]] KEEPSAKE_INLINE void throw_unsafe(const std::string& path, const struct stat& info,
                                               const std::string& why) {
    throw error(errc::unsafe_file,
                "segment file " + path + " is refused: it is " + why + " (owner uid " +
                    std::to_string(info.st_uid) + ", mode " + octal_mode(info.st_mode) +
                    "). A segment must be a regular file of the user that opens it, mode 0600, because its "
                    "directory may be writable by others (/dev/shm is). If you made it, chmod 600 it; if not, "
                    "find out who did, then remove it by hand; or keep segments in a directory of your own "
                    "(segment_options::directory, KEEPSAKE_SHM_DIR)");
}

// Opens a segment file without following a symbolic link or waiting on a
// FIFO, and refuses it unless it passes unsafe_file_reason(). Returns -1, errno
// set, when there is no such file (or, with O_EXCL, when one exists).
KEEPSAKE_INLINE int open_checked(const std::string& path, int flags, unsigned mode = 0) {
    const int fd = ::open(path.c_str(), flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, mode);
    struct stat info {};
    if (fd < 0) {
        // ELOOP (a link), EISDIR, ENXIO (a socket), EACCES (another's file):
        // say what is there rather than how the open failed.
        const int saved = errno;
        if (saved != ENOENT && saved != EEXIST && ::lstat(path.c_str(), &info) == 0) {
            const std::string why = unsafe_file_reason(info);
            if (!why.empty()) throw_unsafe(path, info, why);
        }
        errno = saved;
        return -1;
    }
    if (::fstat(fd, &info) != 0) {
        const int saved = errno;
        ::close(fd);
        errno = saved;
        throw_system("cannot stat segment file " + path);
    }
    const std::string why = unsafe_file_reason(info);
    if (why.empty()) return fd;
    ::close(fd);
    throw_unsafe(path, info, why);
}

// Takes the exclusive claim on a segment file; the kernel drops it when this
// process dies. Returns -1 when the file does not exist and `create` is false.
KEEPSAKE_INLINE int open_and_claim(const std::string& name, const std::string& path, bool create,
                          unsigned mode, bool& created_file) {
    if ((mode & 077) != 0)
        throw error(errc::invalid_argument, "segment_options::mode " + octal_mode(mode) + " gives group or others "
                                            "access to segment '" + name + "'; a segment is private to its user: "
                                            "use 0600");
    for (int attempt = 0; attempt < 16; ++attempt) {
        created_file = false;
        int fd = -1;
        if (create) {
            fd = open_checked(path, O_RDWR | O_CREAT | O_EXCL, mode);
            if (fd < 0 && errno != EEXIST)
                throw_system("cannot create segment file " + path + " (does its directory exist, and may this user write there?)");
            if (fd >= 0) {
                created_file = true;
                // The umask may have cleared bits the caller asked for.
                if (::fchmod(fd, mode) != 0) {
                    const int saved = errno;
                    ::close(fd);
                    errno = saved;
                    throw_system("cannot set mode of " + path);
                }
            }
        }
        if (fd < 0 && (!create || errno == EEXIST)) fd = open_checked(path, O_RDWR);
        if (fd < 0) {
            if (errno == ENOENT && !create) return -1;
            if (errno == ENOENT) continue;  // removed between our two opens
            throw_system("cannot open segment file " + path);
        }
        if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
            const int saved = errno;
            if (saved == EWOULDBLOCK) {
                try { throw_owned(name, fd); } catch (...) { ::close(fd); throw; }
            }
            ::close(fd);
            errno = saved;
            throw_system("cannot lock segment file " + path);
        }
        // The file may have been removed (and maybe recreated) between open
        // and flock: only a claim on the file the path names now counts.
        struct stat by_fd {}, by_path {};
        if (::fstat(fd, &by_fd) == 0 && ::lstat(path.c_str(), &by_path) == 0 &&
            by_fd.st_ino == by_path.st_ino && by_fd.st_dev == by_path.st_dev)
            return fd;
        ::close(fd);
    }
    throw error(errc::system_error, "segment file " + path +
                                        " keeps being removed and recreated while opening; retry later");
}

} // namespace detail
} // namespace keepsake
