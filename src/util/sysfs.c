/* The sysfs I/O layer: paths confined to a root, strict parsing, and the real system calls
 * behind an injectable table. */
#include "util/sysfs.h"

#include "util/array.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* ---- The real system ---- */

static int posix_open(void *ctx, const char *path, int flags)
{
    (void)ctx;
    int fd = open(path, flags);
    return fd >= 0 ? fd : -errno;
}

static ssize_t posix_read(void *ctx, int fd, void *buf, size_t n)
{
    (void)ctx;
    ssize_t r;
    do
        r = read(fd, buf, n);
    while (r < 0 && errno == EINTR);
    return r >= 0 ? r : -errno;
}

static ssize_t posix_write(void *ctx, int fd, const void *buf, size_t n)
{
    (void)ctx;
    ssize_t r;
    do
        r = write(fd, buf, n);
    while (r < 0 && errno == EINTR);
    return r >= 0 ? r : -errno;
}

static int posix_close(void *ctx, int fd)
{
    (void)ctx;
    return close(fd) == 0 ? 0 : -errno;
}

static int posix_readdir(void *ctx, const char *path, int (*fn)(void *arg, const char *name),
                         void *arg)
{
    (void)ctx;
    DIR *d = opendir(path);
    if (!d)
        return -errno;
    int rc = 0;
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(d);
        if (!e) {
            rc = errno ? -errno : 0;
            break;
        }
        if (fn(arg, e->d_name) != 0)
            break;
    }
    closedir(d);
    return rc;
}

const struct etf_sysfs_io etf__sysfs_posix_io = {
    .open = posix_open,
    .read = posix_read,
    .write = posix_write,
    .close = posix_close,
    .readdir = posix_readdir,
};

/* ---- Paths ---- */

static const char *errno_text(int e, char *buf, size_t cap)
{
    /* The XSI strerror_r (this build is POSIX, not GNU): thread-safe, unlike strerror. */
    if (strerror_r(e, buf, cap) != 0)
        snprintf(buf, cap, "errno %d", e);
    return buf;
}

int etf__sysfs_init(struct etf_sysfs *fs, const struct etf_sysfs_config *cfg, struct etf_diag *diag)
{
    memset(fs, 0, sizeof *fs);
    const char *root = cfg ? cfg->root : NULL;
    const char *from = "the sysfs_root setting";
    if (!root) {
        root = getenv("ETF_SYSFS_ROOT");
        from = "ETF_SYSFS_ROOT";
    }
    if (!root || !*root) {
        root = "/sys";
        from = "the default";
    }
    size_t len = strlen(root);
    if (root[0] != '/')
        return etf_diagf(diag, ETF_EINVAL, "sysfs root '%.200s' (from %s) is not an absolute path",
                         root, from);
    while (len > 0 && root[len - 1] == '/')
        len--;
    if (len >= sizeof fs->root)
        return etf_diagf(diag, ETF_EINVAL,
                         "sysfs root '%.200s...' (from %s) is longer than %zu bytes", root, from,
                         sizeof fs->root - 1);
    memcpy(fs->root, root, len);
    fs->root[len] = '\0';
    fs->io = cfg && cfg->io ? cfg->io : &etf__sysfs_posix_io;
    fs->io_ctx = cfg && cfg->io ? cfg->io_ctx : NULL;
    return 0;
}

bool etf__sysfs_name_ok(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len >= 128 || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c == '/' || c <= ' ' || c >= 0x7f)
            return false;
    }
    return true;
}

/* A relative path whose every component is a valid name cannot leave the root. */
static bool rel_ok(const char *rel)
{
    if (!*rel || *rel == '/')
        return false;
    char comp[128];
    const char *p = rel;
    while (*p) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        if (n == 0 || n >= sizeof comp)
            return false;
        memcpy(comp, p, n);
        comp[n] = '\0';
        if (!etf__sysfs_name_ok(comp))
            return false;
        p += n;
        if (*p == '/')
            p++;
        if (slash && !*p)
            return false; /* trailing '/' */
    }
    return true;
}

int etf__sysfs_abspath(const struct etf_sysfs *fs, const char *rel, char *out, size_t cap,
                       struct etf_diag *diag)
{
    if (!rel_ok(rel))
        return etf_diagf(diag, ETF_EINVAL,
                         "sysfs: refusing path '%.200s' (not a plain relative path)", rel);
    int n = snprintf(out, cap, "%s/%s", fs->root, rel);
    if (n < 0 || (size_t)n >= cap)
        return etf_diagf(diag, ETF_EINVAL, "sysfs: path %s/%.200s is too long", fs->root, rel);
    return 0;
}

static int io_error(struct etf_diag *diag, const char *what, const char *path, int e)
{
    char text[96];
    return etf_diagf(diag, e == ENOENT ? ETF_ENOENT : ETF_EIO, "cannot %s %s: %s", what, path,
                     errno_text(e, text, sizeof text));
}

void etf__sysfs_quote(const char *text, char *out, size_t cap)
{
    size_t n = 0, len = strlen(text);
    if (len > 0 && text[len - 1] == '\n')
        len--; /* the newline that ends every attribute says nothing */
    for (; n < len && n < 40 && n + 1 < cap; n++) {
        unsigned char c = (unsigned char)text[n];
        out[n] = isprint(c) ? (char)c : '?';
    }
    if (n < len && n + 4 < cap) {
        memcpy(out + n, "...", 3);
        n += 3;
    }
    out[n < cap ? n : cap - 1] = '\0';
}

/* ---- Reading and writing ---- */

int etf__sysfs_read(const struct etf_sysfs *fs, const char *rel, char *buf, size_t cap, int *err_no,
                    struct etf_diag *diag)
{
    char path[ETF_SYSFS_PATH_MAX + 256];
    if (err_no)
        *err_no = 0;
    int rc = etf__sysfs_abspath(fs, rel, path, sizeof path, diag);
    if (rc)
        return rc;
    int fd = fs->io->open(fs->io_ctx, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        if (err_no)
            *err_no = -fd;
        return io_error(diag, "open", path, -fd);
    }
    size_t len = 0;
    for (;;) {
        if (len + 1 >= cap) {
            /* Full: the file is longer than the buffer unless it ends right here. */
            char probe;
            ssize_t r = fs->io->read(fs->io_ctx, fd, &probe, 1);
            if (r == 0)
                break;
            rc = r < 0 ? io_error(diag, "read", path, (int)-r)
                       : etf_diagf(diag, ETF_EFORMAT, "%s: longer than the %zu bytes expected",
                                   path, cap - 1);
            if (r < 0 && err_no)
                *err_no = (int)-r;
            goto close_fd;
        }
        ssize_t r = fs->io->read(fs->io_ctx, fd, buf + len, cap - 1 - len);
        if (r < 0) {
            if (err_no)
                *err_no = (int)-r;
            rc = io_error(diag, "read", path, (int)-r);
            goto close_fd;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    buf[len] = '\0';
    if (strlen(buf) != len)
        rc = etf_diagf(diag, ETF_EFORMAT, "%s: unexpected NUL byte in the text", path);
close_fd:
    fs->io->close(fs->io_ctx, fd);
    return rc;
}

/* One line of text; words = no blanks inside. */
static int read_text(const struct etf_sysfs *fs, const char *rel, char *buf, size_t cap, bool words,
                     struct etf_diag *diag)
{
    char text[256];
    int rc = etf__sysfs_read(fs, rel, text, sizeof text, NULL, diag);
    if (rc)
        return rc;
    size_t len = strlen(text);
    if (len > 0 && text[len - 1] == '\n')
        text[--len] = '\0';
    bool bad = false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (!isprint(c) || (words && c == ' '))
            bad = true;
    }
    if (len == 0 || bad || len >= cap) {
        char path[ETF_SYSFS_PATH_MAX + 256], q[48];
        etf__sysfs_abspath(fs, rel, path, sizeof path, NULL);
        etf__sysfs_quote(text, q, sizeof q);
        return etf_diagf(diag, ETF_EFORMAT, "%s: expected %s of at most %zu bytes, found '%s'",
                         path, words ? "one word" : "one line of text", cap - 1, q);
    }
    memcpy(buf, text, len + 1);
    return 0;
}

int etf__sysfs_read_word(const struct etf_sysfs *fs, const char *rel, char *buf, size_t cap,
                         struct etf_diag *diag)
{
    return read_text(fs, rel, buf, cap, true, diag);
}

int etf__sysfs_read_line(const struct etf_sysfs *fs, const char *rel, char *buf, size_t cap,
                         struct etf_diag *diag)
{
    return read_text(fs, rel, buf, cap, false, diag);
}

bool etf__parse_u64(const char *text, uint64_t *out)
{
    const char *p = text;
    uint64_t v = 0;
    if (!isdigit((unsigned char)*p))
        return false;
    for (; isdigit((unsigned char)*p); p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    if (*p == '\n')
        p++;
    if (*p)
        return false;
    *out = v;
    return true;
}

bool etf__parse_i64(const char *text, int64_t *out)
{
    bool neg = text[0] == '-';
    uint64_t mag;
    if (!etf__parse_u64(text + neg, &mag))
        return false;
    if (neg ? mag > (uint64_t)INT64_MAX + 1 : mag > (uint64_t)INT64_MAX)
        return false;
    *out = neg ? (mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag) : (int64_t)mag;
    return true;
}

static int number_error(const struct etf_sysfs *fs, const char *rel, const char *text,
                        const char *expected, struct etf_diag *diag)
{
    char path[ETF_SYSFS_PATH_MAX + 256], q[48];
    etf__sysfs_abspath(fs, rel, path, sizeof path, NULL);
    etf__sysfs_quote(text, q, sizeof q);
    return etf_diagf(diag, ETF_EFORMAT, "%s: expected %s, found '%s'", path, expected, q);
}

int etf__sysfs_read_u64(const struct etf_sysfs *fs, const char *rel, uint64_t *out,
                        struct etf_diag *diag)
{
    char text[64];
    int rc = etf__sysfs_read(fs, rel, text, sizeof text, NULL, diag);
    if (rc)
        return rc;
    if (!etf__parse_u64(text, out))
        return number_error(fs, rel, text, "an unsigned integer", diag);
    return 0;
}

int etf__sysfs_read_i64(const struct etf_sysfs *fs, const char *rel, int64_t *out,
                        struct etf_diag *diag)
{
    char text[64];
    int rc = etf__sysfs_read(fs, rel, text, sizeof text, NULL, diag);
    if (rc)
        return rc;
    if (!etf__parse_i64(text, out))
        return number_error(fs, rel, text, "an integer", diag);
    return 0;
}

int etf__sysfs_read_u64_list(const struct etf_sysfs *fs, const char *rel, uint64_t *out, size_t max,
                             size_t *n, struct etf_diag *diag)
{
    char text[ETF_SYSFS_FILE_MAX + 1];
    int rc = etf__sysfs_read(fs, rel, text, sizeof text, NULL, diag);
    if (rc)
        return rc;
    /* The kernel ends these lists with "\n" or " \n"; inside, one space between values. */
    size_t len = strlen(text);
    if (len > 0 && text[len - 1] == '\n')
        text[--len] = '\0';
    if (len > 0 && text[len - 1] == ' ')
        text[--len] = '\0';
    if (len == 0)
        return number_error(fs, rel, text, "a list of unsigned integers", diag);
    size_t count = 0;
    for (char *p = text;;) {
        char *end = p;
        while (isdigit((unsigned char)*end))
            end++;
        char sep = *end;
        if (end == p || (sep != ' ' && sep != '\0'))
            return number_error(fs, rel, p, "unsigned integers separated by single spaces", diag);
        *end = '\0';
        uint64_t v;
        if (!etf__parse_u64(p, &v))
            return number_error(fs, rel, p, "an unsigned 64-bit integer", diag);
        if (count == max) {
            char path[ETF_SYSFS_PATH_MAX + 256];
            etf__sysfs_abspath(fs, rel, path, sizeof path, NULL);
            return etf_diagf(diag, ETF_EFORMAT, "%s: more than %zu values", path, max);
        }
        out[count++] = v;
        if (sep == '\0')
            break;
        p = end + 1;
    }
    *n = count;
    return 0;
}

int etf__sysfs_write(const struct etf_sysfs *fs, const char *rel, const char *text, int *err_no,
                     struct etf_diag *diag)
{
    char path[ETF_SYSFS_PATH_MAX + 256], line[128];
    if (err_no)
        *err_no = 0;
    int rc = etf__sysfs_abspath(fs, rel, path, sizeof path, diag);
    if (rc)
        return rc;
    int len = snprintf(line, sizeof line, "%s\n", text);
    if (len < 0 || (size_t)len >= sizeof line)
        return etf_diagf(diag, ETF_EINVAL, "sysfs: value for %s is too long", path);
    int fd = fs->io->open(fs->io_ctx, path, O_WRONLY | O_TRUNC | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        if (err_no)
            *err_no = -fd;
        return io_error(diag, "open for writing", path, -fd);
    }
    /* Attributes take a value in one write(2); a short write is a refusal too. */
    ssize_t w = fs->io->write(fs->io_ctx, fd, line, (size_t)len);
    int e = w < 0 ? (int)-w : w != len ? EIO : 0;
    int c = fs->io->close(fs->io_ctx, fd);
    if (!e && c < 0)
        e = -c; /* some drivers report a refusal only when the file is closed */
    if (e) {
        char what[160];
        char q[48];
        etf__sysfs_quote(text, q, sizeof q);
        snprintf(what, sizeof what, "write '%s' to", q);
        if (err_no)
            *err_no = e;
        return io_error(diag, what, path, e);
    }
    return 0;
}

int etf__sysfs_write_u64(const struct etf_sysfs *fs, const char *rel, uint64_t v, int *err_no,
                         struct etf_diag *diag)
{
    char text[32];
    snprintf(text, sizeof text, "%" PRIu64, v);
    return etf__sysfs_write(fs, rel, text, err_no, diag);
}

/* ---- Listing ---- */

struct list_ctx {
    const char *pattern;
    struct etf_sysfs_names *out;
    size_t cap;
    bool nomem;
};

static int list_one(void *arg, const char *name)
{
    struct list_ctx *lc = arg;
    /* Names from the directory are outside input: only plain components go on. */
    if (!etf__sysfs_name_ok(name) || fnmatch(lc->pattern, name, FNM_PERIOD) != 0)
        return 0;
    struct etf_sysfs_names *o = lc->out;
    if (etf__reserve(&o->v, o->n, &lc->cap, sizeof *o->v, 16)) {
        lc->nomem = true;
        return 1;
    }
    o->v[o->n] = strdup(name);
    if (!o->v[o->n]) {
        lc->nomem = true;
        return 1;
    }
    o->n++;
    return 0;
}

/* Natural order: runs of digits compare as numbers, so policy10 follows policy9. */
static int natural_cmp(const void *a, const void *b)
{
    const char *x = *(char *const *)a, *y = *(char *const *)b;
    while (*x && *y) {
        if (isdigit((unsigned char)*x) && isdigit((unsigned char)*y)) {
            const char *xs = x, *ys = y;
            while (*xs == '0')
                xs++;
            while (*ys == '0')
                ys++;
            const char *xe = xs, *ye = ys;
            while (isdigit((unsigned char)*xe))
                xe++;
            while (isdigit((unsigned char)*ye))
                ye++;
            if (xe - xs != ye - ys)
                return xe - xs < ye - ys ? -1 : 1;
            int c = strncmp(xs, ys, (size_t)(xe - xs));
            if (c)
                return c;
            x = xe;
            y = ye;
            continue;
        }
        if (*x != *y)
            return (unsigned char)*x < (unsigned char)*y ? -1 : 1;
        x++;
        y++;
    }
    return *x ? 1 : *y ? -1 : 0;
}

int etf__sysfs_list(const struct etf_sysfs *fs, const char *rel, const char *pattern,
                    struct etf_sysfs_names *out, struct etf_diag *diag)
{
    char path[ETF_SYSFS_PATH_MAX + 256];
    out->v = NULL;
    out->n = 0;
    int rc = etf__sysfs_abspath(fs, rel, path, sizeof path, diag);
    if (rc)
        return rc;
    struct list_ctx lc = {.pattern = pattern, .out = out};
    int r = fs->io->readdir(fs->io_ctx, path, list_one, &lc);
    if (lc.nomem) {
        rc = etf_diagf(diag, ETF_ENOMEM, "sysfs: out of memory listing %s", path);
        goto free_names;
    }
    if (r < 0) {
        rc = io_error(diag, "list", path, -r);
        goto free_names;
    }
    if (out->n > 1)
        qsort(out->v, out->n, sizeof *out->v, natural_cmp);
    return 0;
free_names:
    etf__sysfs_names_free(out);
    return rc;
}

void etf__sysfs_names_free(struct etf_sysfs_names *names)
{
    for (size_t i = 0; i < names->n; i++)
        free(names->v[i]);
    free(names->v);
    names->v = NULL;
    names->n = 0;
}

/* ---- Power integration ---- */

void etf__power_start(struct etf_power_integrator *pi, uint64_t uw, uint64_t at_ns)
{
    memset(pi, 0, sizeof *pi);
    pi->last_uw = uw;
    pi->last_ns = at_ns;
}

uint64_t etf__power_add(struct etf_power_integrator *pi, uint64_t uw, uint64_t at_ns)
{
    if (at_ns > pi->last_ns) {
        /* µW × ns = 1e-6 nJ. One interval in double is exact enough; the running total stays
         * an integer so that it never loses precision as it grows. */
        double nj = ((double)pi->last_uw + (double)uw) / 2.0 * (double)(at_ns - pi->last_ns) * 1e-6;
        nj += pi->frac_nj;
        double whole = floor(nj);
        pi->total_nj += (uint64_t)whole;
        pi->frac_nj = nj - whole;
        pi->last_ns = at_ns;
    }
    pi->last_uw = uw;
    return pi->total_nj / 1000;
}

int etf__sysfs_rail_rank(const char *name, const char *const *wanted)
{
    for (int w = 0; wanted[w]; w++)
        if (strcasecmp(name, wanted[w]) == 0)
            return w;
    return -1;
}

void etf__sysfs_join_names(const char *const *wanted, char *out, size_t cap)
{
    size_t used = 0;
    out[0] = '\0';
    for (int w = 0; wanted[w] && used < cap; w++)
        used += (size_t)snprintf(out + used, cap - used, "%s%s",
                                 w == 0          ? ""
                                 : wanted[w + 1] ? ", "
                                                 : " or ",
                                 wanted[w]);
}
