/* The I/O layer of the hardware backends that live in sysfs (devfreq, cpufreq, INA3221,
 * hwmon, RAPL): small text files and directory listings under a root directory.
 *
 * Every access goes through a table of system calls (`struct etf_sysfs_io`), so that tests
 * can point a backend at a fake tree in a temporary directory and inject failures (a write
 * refused with EACCES, a file that follows writes like cur_freq does). Paths are relative
 * to the root and built from fixed components plus names that were either validated from a
 * directory listing or from a configuration: nothing here can reach above the root.
 *
 * Values read are validated where they enter: numbers are parsed strictly and every error
 * names the file and shows what was found.
 */
#ifndef ETF_UTIL_SYSFS_H
#define ETF_UTIL_SYSFS_H

#include "etf/sched.h"

#include <sys/types.h>

/* System calls of the layer. Each returns what its POSIX namesake returns on success and
 * -errno on failure (never -1 with errno). The default table calls the real system. */
struct etf_sysfs_io {
    /* open(2) of an absolute path: O_RDONLY for reads, O_WRONLY | O_TRUNC for writes, always
     * with O_CLOEXEC | O_NOFOLLOW. */
    int (*open)(void *ctx, const char *path, int flags);
    ssize_t (*read)(void *ctx, int fd, void *buf, size_t n);
    ssize_t (*write)(void *ctx, int fd, const void *buf, size_t n);
    int (*close)(void *ctx, int fd);
    /* Calls fn(arg, name) for every entry of the directory at path, "." and ".." included;
     * stops early when fn returns non-zero. Returns 0 or -errno. */
    int (*readdir)(void *ctx, const char *path, int (*fn)(void *arg, const char *name), void *arg);
};

/* The real file system. */
extern const struct etf_sysfs_io etf__sysfs_posix_io;

/* A root and the table to reach it. Plain data: copy it freely. */
struct etf_sysfs {
    char root[256]; /* absolute, no trailing '/' ("" when the root is "/") */
    const struct etf_sysfs_io *io;
    void *io_ctx;
};

/* Longest relative path the layer builds; longer ones are refused as ETF_EINVAL. */
#define ETF_SYSFS_PATH_MAX 512
/* Largest file the layer reads (sysfs attributes are at most a page). */
#define ETF_SYSFS_FILE_MAX 4096

/* Sets up fs from a configuration: the root is cfg->root, else $ETF_SYSFS_ROOT, else
 * "/sys"; it must be absolute. cfg may be NULL. */
int etf__sysfs_init(struct etf_sysfs *fs, const struct etf_sysfs_config *cfg,
                    struct etf_diag *diag);

/* True when name can be one component of a path: not empty, not "." or "..", no '/', no
 * control characters or spaces, shorter than 128 bytes. */
bool etf__sysfs_name_ok(const char *name);

/* Writes root + "/" + rel into out (for messages and for the I/O table). rel must be
 * relative and made of components that pass etf__sysfs_name_ok. */
int etf__sysfs_abspath(const struct etf_sysfs *fs, const char *rel, char *out, size_t cap,
                       struct etf_diag *diag);

/* Reads the whole file at rel into buf (cap bytes, NUL-terminated). Errors: ETF_ENOENT
 * (missing), ETF_EIO (any other failure, with the errno text), ETF_EFORMAT (too long or a
 * NUL byte inside). When err_no is not NULL it receives the errno of a failure (0 else). */
int etf__sysfs_read(const struct etf_sysfs *fs, const char *rel, char *buf, size_t cap, int *err_no,
                    struct etf_diag *diag);
/* Reads one word (the whole file, less one trailing newline): a governor, a rail name.
 * Errors as etf__sysfs_read, ETF_EFORMAT when the text is empty or has blanks or does not
 * fit cap. */
int etf__sysfs_read_word(const struct etf_sysfs *fs, const char *rel, char *buf, size_t cap,
                         struct etf_diag *diag);
/* Reads one line of printable text, spaces allowed (a sensor label), less one trailing
 * newline. ETF_EFORMAT when it is empty, has other bytes or does not fit cap. */
int etf__sysfs_read_line(const struct etf_sysfs *fs, const char *rel, char *buf, size_t cap,
                         struct etf_diag *diag);
/* Reads an unsigned decimal integer (one trailing newline allowed). */
int etf__sysfs_read_u64(const struct etf_sysfs *fs, const char *rel, uint64_t *out,
                        struct etf_diag *diag);
/* Reads a signed decimal integer (hwmon's in/curr values are signed). */
int etf__sysfs_read_i64(const struct etf_sysfs *fs, const char *rel, int64_t *out,
                        struct etf_diag *diag);
/* Reads a list of unsigned integers separated by single spaces (a trailing space and
 * newline allowed), at most max of them, into out; *n receives the count (at least 1). */
int etf__sysfs_read_u64_list(const struct etf_sysfs *fs, const char *rel, uint64_t *out, size_t max,
                             size_t *n, struct etf_diag *diag);

/* Writes text (followed by a newline) to the existing file at rel in one write(2). Errors:
 * ETF_ENOENT, ETF_EIO with the errno text; err_no as for etf__sysfs_read. */
int etf__sysfs_write(const struct etf_sysfs *fs, const char *rel, const char *text, int *err_no,
                     struct etf_diag *diag);
int etf__sysfs_write_u64(const struct etf_sysfs *fs, const char *rel, uint64_t v, int *err_no,
                         struct etf_diag *diag);

/* The entries of the directory at rel whose names match the fnmatch(3) pattern, valid as
 * path components, sorted in natural order ("policy2" before "policy10"). The caller frees
 * the result with etf__sysfs_names_free. Errors: ETF_ENOENT (no such directory), ETF_EIO,
 * ETF_ENOMEM. */
struct etf_sysfs_names {
    char **v;
    size_t n;
};
int etf__sysfs_list(const struct etf_sysfs *fs, const char *rel, const char *pattern,
                    struct etf_sysfs_names *out, struct etf_diag *diag);
void etf__sysfs_names_free(struct etf_sysfs_names *names);

/* Rail choice of the power meters: the rank of `name` in the NULL-terminated preference
 * list `wanted` (case-insensitive), or -1 when it is not wanted. */
int etf__sysfs_rail_rank(const char *name, const char *const *wanted);
/* The preference list for messages: "A", "A or B", "A, B or C". */
void etf__sysfs_join_names(const char *const *wanted, char *out, size_t cap);

/* Strict parsers shared with the journal: decimal digits only (a leading '-' for the
 * signed one), no blanks, no '+', no overflow, and nothing after but one optional '\n'. */
bool etf__parse_u64(const char *text, uint64_t *out);
bool etf__parse_i64(const char *text, int64_t *out);

/* Copies text into out for a message: at most 40 bytes, non-printable bytes as '?'. */
void etf__sysfs_quote(const char *text, char *out, size_t cap);

/* ---- Power sensors ---- */

/* Turns power samples into a cumulative energy counter: the trapezoid rule between
 * consecutive samples on the host clock. Energy is kept in nJ plus a fractional remainder,
 * so that years of readings neither overflow nor lose precision. */
struct etf_power_integrator {
    uint64_t last_uw; /* power at the latest sample, µW */
    uint64_t last_ns; /* host time of the latest sample */
    uint64_t total_nj;
    double frac_nj; /* in [0, 1) */
};
void etf__power_start(struct etf_power_integrator *pi, uint64_t uw, uint64_t at_ns);
/* Adds the interval up to (uw, at_ns); returns the energy since start in µJ. A sample no
 * later than the previous one adds nothing. */
uint64_t etf__power_add(struct etf_power_integrator *pi, uint64_t uw, uint64_t at_ns);

#endif
