/* What the command-line tools share: error messages prefixed with the tool's name, strict
 * parsing of numeric option values (the whole string, in a range, no blanks or signs that
 * strtol would quietly accept), and the options more than one tool takes. */
#ifndef ETF_TOOLS_CLI_H
#define ETF_TOOLS_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Writes "PROG: message\n" to stderr and returns code (the exit status to use). */
int etf_cli_fail(const char *prog, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Decimal integer in [lo, hi] ("-" allowed only when lo < 0). */
bool etf_cli_long(const char *s, long lo, long hi, long *out);
bool etf_cli_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out);
/* Finite number in [lo, hi]. */
bool etf_cli_double(const char *s, double lo, double hi, double *out);

/* --threads N (the device's threads, 1..1024) and --batch B (1..65536): on a bad value
 * they write "PROG: --threads: expected 1..1024, found 'S'" and return false. */
bool etf_cli_threads(const char *prog, const char *s, int *out);
bool etf_cli_batch(const char *prog, const char *s, size_t *out);

/* The options that choose and place the energy meter and the frequency controller (etfd,
 * etf-profile). ETF_CLI_HW_OPTIONS are their entries for getopt_long's table (the tool
 * includes <getopt.h>); they answer 'e', 'f', 'a', 's', 'j' and 'A', letters the tool's own
 * options leave alone, and etf_cli_hw_option takes those answers. */
struct etf_cli_hw {
    const char *meter, *freq; /* --meter, --freq: backend names; NULL = not given */
    const char *rail;         /* --rail: the meter's rail */
    const char *sysfs_root;   /* --sysfs-root: where the meter and the controller find /sys */
    const char *journal;      /* --journal: the controller's clock journal */
    bool allow_clock_changes; /* --allow-gpu-clock-changes */
};

/* clang-format off */
#define ETF_CLI_HW_OPTIONS                                                                 \
    {"meter", required_argument, NULL, 'e'},                                               \
    {"freq", required_argument, NULL, 'f'},                                                \
    {"rail", required_argument, NULL, 'a'},                                                \
    {"sysfs-root", required_argument, NULL, 's'},                                          \
    {"journal", required_argument, NULL, 'j'},                                             \
    {"allow-gpu-clock-changes", no_argument, NULL, 'A'}
/* clang-format on */

/* Takes option c (getopt_long's answer, with its argument arg) into hw when it is one of
 * ETF_CLI_HW_OPTIONS; false when it is another. */
bool etf_cli_hw_option(struct etf_cli_hw *hw, int c, const char *arg);

#endif
