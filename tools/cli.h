/* What the command-line tools share: error messages prefixed with the tool's name, and
 * strict parsing of numeric option values (the whole string, in a range, no blanks or
 * signs that strtol would quietly accept). */
#ifndef ETF_TOOLS_CLI_H
#define ETF_TOOLS_CLI_H

#include <stdbool.h>
#include <stdint.h>

/* Writes "PROG: message\n" to stderr and returns code (the exit status to use). */
int etf_cli_fail(const char *prog, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Decimal integer in [lo, hi] ("-" allowed only when lo < 0). */
bool etf_cli_long(const char *s, long lo, long hi, long *out);
bool etf_cli_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out);
/* Finite number in [lo, hi]. */
bool etf_cli_double(const char *s, double lo, double hi, double *out);

#endif
