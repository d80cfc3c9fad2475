/* Crash-safe file replacement (see file.h). */
#include "util/file.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int etf__file_sync_dir(const char *path)
{
    char dir[PATH_MAX];
    if (snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir)
        return -ENAMETOOLONG;
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        slash[1] = '\0';
    else
        *slash = '\0';
    int fd = open(dir, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

int etf__file_replace(const char *path, const void *data, size_t len, const char **what)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        *what = "name its temporary file";
        return -ENAMETOOLONG;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) {
        *what = "create its temporary file";
        return -errno;
    }
    int e = 0;
    for (size_t off = 0; off < len;) {
        ssize_t w = write(fd, (const char *)data + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            *what = "write";
            e = w < 0 ? errno : EIO;
            goto remove_tmp;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0) {
        *what = "fsync";
        e = errno;
        goto remove_tmp;
    }
    int closed = close(fd);
    fd = -1;
    if (closed != 0) {
        *what = "close";
        e = errno;
        goto remove_tmp;
    }
    if (rename(tmp, path) != 0) {
        *what = "rename its temporary file into place";
        e = errno;
        goto remove_tmp;
    }
    e = -etf__file_sync_dir(path);
    if (e)
        *what = "fsync its directory";
    return -e;
remove_tmp:
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    return -e;
}
