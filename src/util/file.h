/* Small state files: replacing one so that it survives a crash whole, and making a removal
 * durable. Used by the clock journal and the profiler's progress file. */
#ifndef ETF_UTIL_FILE_H
#define ETF_UTIL_FILE_H

#include <stddef.h>

/* Replaces the file at path with the len bytes of data: written to "<path>.tmp" (no link
 * followed), flushed to disk, renamed over path, and the directory flushed, so that a crash
 * leaves the old file or the new one, never a mix. Returns 0, or -errno with *what naming
 * the step that failed ("write", "rename its temporary file into place", ...); the
 * temporary file is then removed (once the rename is done, only the directory's flush can
 * fail, and the new file stays). */
int etf__file_replace(const char *path, const void *data, size_t len, const char **what);

/* Flushes the directory holding path, so that a rename or removal in it is on disk.
 * Returns 0 or -errno. */
int etf__file_sync_dir(const char *path);

#endif
