// keepsake/detail/file_checks.hpp: what makes a file or directory safe to
// keep state in when others can write beside it (/dev/shm, /tmp): only this
// user may change it, and a state file only this user may read.
#pragma once

#include <cstdio>
#include <string>

#include <sys/stat.h>
#include <unistd.h>

namespace keepsake {
namespace detail {

inline std::string octal_mode(unsigned mode) {
    char text[16];
    std::snprintf(text, sizeof(text), "%04o", mode & 07777u);
    return text;
}

// Why a file may not be trusted to hold state, or "" if it may: it must be a
// regular file (not a symbolic link, FIFO, directory or device) of this
// user's, with no permission for group or others. A file another user made
// where both may write is theirs to read and rewrite.
inline std::string unsafe_file_reason(const struct stat& info) {
    if (S_ISLNK(info.st_mode)) return "a symbolic link";
    if (S_ISFIFO(info.st_mode)) return "a FIFO";
    if (S_ISDIR(info.st_mode)) return "a directory";
    if (S_ISSOCK(info.st_mode)) return "a socket";
    if (!S_ISREG(info.st_mode)) return "a device, not a regular file";
    if (info.st_uid != ::geteuid())
        return "owned by uid " + std::to_string(info.st_uid) + ", not by this user (uid " +
               std::to_string(::geteuid()) + ")";
    if ((info.st_mode & 077) != 0) return "open to group or others";
    return {};
}

// The same for a directory of state files: this user's, and writable by
// nobody else (who could otherwise plant or replace files in it).
inline std::string unsafe_directory_reason(const struct stat& info) {
    if (!S_ISDIR(info.st_mode)) return "not a directory";
    if (info.st_uid != ::geteuid())
        return "owned by uid " + std::to_string(info.st_uid) + ", not by this user (uid " +
               std::to_string(::geteuid()) + ")";
    if ((info.st_mode & (S_IWGRP | S_IWOTH)) != 0) return "writable by group or others";
    return {};
}

} // namespace detail
} // namespace keepsake
