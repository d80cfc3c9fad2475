/* Reading whole files, and crash-safe file replacement (see file.h). */
#include "util/file.h"

#include "etf/etf.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

/* The temporary file etf__file_replace writes before renaming it over path. */
static bool tmp_name(const char *path, char (*tmp)[PATH_MAX])
{
    return snprintf(*tmp, sizeof *tmp, "%s.tmp", path) < (int)sizeof *tmp;
}

void etf__file_remove_tmp(const char *path)
{
    char tmp[PATH_MAX];
    if (tmp_name(path, &tmp))
        unlink(tmp);
}

int etf__file_replace(const char *path, const void *data, size_t len, const char **what)
{
    char tmp[PATH_MAX];
    if (!tmp_name(path, &tmp)) {
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

int etf__file_read_with(const char *path, size_t max, void *(*alloc)(void *ctx, size_t size),
                        void *ctx, void **bytes, size_t *len, struct etf_diag *diag)
{
    *bytes = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return etf_diagf(diag, errno == ENOENT ? ETF_ENOENT : ETF_EIO, "%s: %s", path,
                         strerror(errno));
    int rc = 0;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = etf_diagf(diag, ETF_EIO, "%s: stat failed: %s", path, strerror(errno));
        goto close_fd;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = etf_diagf(diag, ETF_EIO, "%s: expected a regular file, found %s", path,
                       S_ISDIR(st.st_mode) ? "a directory" : "a device, pipe or socket");
        goto close_fd;
    }
    if ((uint64_t)st.st_size > max) {
        rc = etf_diagf(diag, ETF_ELIMIT, "%s: the file is %lld bytes, over the limit of %zu", path,
                       (long long)st.st_size, max);
        goto close_fd;
    }
    size_t size = (size_t)st.st_size;
    char *buf = *bytes = alloc(ctx, size);
    if (!buf) {
        rc = etf_diagf(diag, ETF_ENOMEM, "%s: out of memory for %zu bytes", path, size);
        goto close_fd;
    }
    size_t done = 0;
    while (done < size) {
        ssize_t r = read(fd, buf + done, size - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            rc = etf_diagf(diag, ETF_EIO, "%s: read failed%s%s", path,
                           r < 0 ? ": " : " (the file shrank)", r < 0 ? strerror(errno) : "");
            goto close_fd;
        }
        done += (size_t)r;
    }
    *len = size;
close_fd:
    close(fd);
    return rc;
}

static void *alloc_malloc(void *ctx, size_t size)
{
    (void)ctx;
    return malloc(size ? size : 1);
}

int etf__file_read(const char *path, size_t max, struct etf__file_buf *out, struct etf_diag *diag)
{
    int rc = etf__file_read_with(path, max, alloc_malloc, NULL, &out->bytes, &out->len, diag);
    if (rc)
        etf__file_release(out);
    return rc;
}

void etf__file_release(struct etf__file_buf *f)
{
    free(f->bytes);
    memset(f, 0, sizeof *f);
}
