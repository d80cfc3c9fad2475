/* Shared command-line helpers (cli.h). */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

int etf_cli_fail(const char *prog, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

static bool starts_number(const char *s, bool sign_ok)
{
    return s && ((*s >= '0' && *s <= '9') || (sign_ok && *s == '-'));
}

bool etf_cli_long(const char *s, long lo, long hi, long *out)
{
    if (!starts_number(s, lo < 0))
        return false;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

bool etf_cli_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    if (!starts_number(s, false))
        return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

bool etf_cli_double(const char *s, double lo, double hi, double *out)
{
    if (!s || !((*s >= '0' && *s <= '9') || *s == '.' || (lo < 0 && *s == '-')))
        return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v) || !(v >= lo && v <= hi))
        return false;
    *out = v;
    return true;
}

bool etf_cli_threads(const char *prog, const char *s, int *out)
{
    long v;
    if (!etf_cli_long(s, 1, 1024, &v)) {
        etf_cli_fail(prog, 0, "--threads: expected 1..1024, found '%s'", s);
        return false;
    }
    *out = (int)v;
    return true;
}

bool etf_cli_batch(const char *prog, const char *s, size_t *out)
{
    long v;
    if (!etf_cli_long(s, 1, 65536, &v)) {
        etf_cli_fail(prog, 0, "--batch: expected 1..65536, found '%s'", s);
        return false;
    }
    *out = (size_t)v;
    return true;
}

bool etf_cli_hw_option(struct etf_cli_hw *hw, int c, const char *arg)
{
    switch (c) {
    case 'e':
        hw->meter = arg;
        break;
    case 'f':
        hw->freq = arg;
        break;
    case 'a':
        hw->rail = arg;
        break;
    case 's':
        hw->sysfs_root = arg;
        break;
    case 'j':
        hw->journal = arg;
        break;
    case 'A':
        hw->allow_clock_changes = true;
        break;
    default:
        return false;
    }
    return true;
}
