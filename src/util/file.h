/* Whole files: reading one (a model, a progress file), replacing one so that it survives a
 * crash whole, and making a removal durable (the clock journal, the profiler's progress
 * file). */
#ifndef ETF_UTIL_FILE_H
#define ETF_UTIL_FILE_H

#include <stddef.h>

struct etf_diag;

/* Reads the whole regular file at path (at most max bytes) into *bytes, allocated by
 * alloc(ctx, size) at the file's size; on failure *bytes is what was allocated, if anything,
 * for the caller to free. Read rather than mapped: a file truncated under a mapping would
 * kill the process with SIGBUS, where read() just comes back short. Errors: ETF_ENOENT,
 * ETF_EIO (not a regular file, a failed or short read), ETF_ELIMIT, ETF_ENOMEM. */
int etf__file_read_with(const char *path, size_t max, void *(*alloc)(void *ctx, size_t size),
                        void *ctx, void **bytes, size_t *len, struct etf_diag *diag);

/* The same into malloc'd memory, freed with etf__file_release. */
struct etf__file_buf {
    void *bytes;
    size_t len;
};
int etf__file_read(const char *path, size_t max, struct etf__file_buf *out, struct etf_diag *diag);
void etf__file_release(struct etf__file_buf *f);

/* Replaces the file at path with the len bytes of data: written to "<path>.tmp" (no link
 * followed), flushed to disk, renamed over path, and the directory flushed, so that a crash
 * leaves the old file or the new one, never a mix. Returns 0, or -errno with *what naming
 * the step that failed ("write", "rename its temporary file into place", ...); the
 * temporary file is then removed (once the rename is done, only the directory's flush can
 * fail, and the new file stays). */
int etf__file_replace(const char *path, const void *data, size_t len, const char **what);
/* Removes the temporary file that a crash inside etf__file_replace(path, ...) can leave
 * (the file at path itself is then the old one or the new one, whole). */
void etf__file_remove_tmp(const char *path);

/* Flushes the directory holding path, so that a rename or removal in it is on disk.
 * Returns 0 or -errno. */
int etf__file_sync_dir(const char *path);

#endif
