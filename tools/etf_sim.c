/* etf-sim: runs a scenario through the ETF scheduler on the simulated device (or, when the
 * scenario names a real device, on that device in real time) and reports the time and
 * energy each tenant got.
 *
 * Exit status: 0 on success, 2 on bad arguments or bad input (the scenario, its profiles,
 * its backends, an output file that cannot be opened), 1 when the run itself fails.
 * Output files are opened before the run so that a typo in a path costs no simulation.
 */
#include "etf/sim.h"

#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define EXIT_RUN 1
#define EXIT_USAGE 2

static void usage(FILE *f)
{
    fprintf(f,
            "usage: etf-sim SCENARIO.json [--report REPORT.json] [--tasks TASKS.csv] [--timing]\n"
            "               [--quiet]\n"
            "\n"
            "Runs SCENARIO.json through the ETF scheduler on the simulated device and prints a\n"
            "summary of each tenant's time, energy and latency. A scenario whose \"device\" is\n"
            "not \"sim\" (e.g. \"cpu\") runs its models' ONNX files on that device in real time\n"
            "for duration_s; such runs are not reproducible.\n"
            "\n"
            "  --report FILE  write the JSON report to FILE (- for standard output)\n"
            "  --tasks FILE   write every completed task to FILE as CSV (tasks.csv format)\n"
            "  --timing       put the host time per dispatch in the report (makes it differ\n"
            "                 from run to run; without it a simulated run's report is\n"
            "                 reproducible)\n"
            "  --quiet        do not print the summary\n"
            "  --help         show this help\n");
}

#define fail(...) etf_cli_fail("etf-sim", __VA_ARGS__)

/* Opens an output file ("-" = standard output). */
static FILE *open_out(const char *path)
{
    return strcmp(path, "-") == 0 ? stdout : fopen(path, "w");
}

static int close_out(FILE *f, int status, const char *path)
{
    if (!f || f == stdout)
        return status;
    if (fclose(f) != 0 && status == 0)
        return fail(EXIT_RUN, "cannot write %s: %s", path, strerror(errno));
    return status;
}

int main(int argc, char **argv)
{
    const char *scenario = NULL, *report = NULL, *tasks = NULL;
    unsigned report_flags = 0;
    bool quiet = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--report") == 0 || strcmp(a, "--tasks") == 0) {
            if (i + 1 == argc) {
                fail(EXIT_USAGE, "%s needs a file name", a);
                usage(stderr);
                return EXIT_USAGE;
            }
            *(a[2] == 'r' ? &report : &tasks) = argv[++i];
        } else if (strcmp(a, "--timing") == 0) {
            report_flags |= ETF_SIM_REPORT_TIMING;
        } else if (strcmp(a, "--quiet") == 0) {
            quiet = true;
        } else if (a[0] == '-' && a[1] != '\0') {
            fail(EXIT_USAGE, "unknown option %s", a);
            usage(stderr);
            return EXIT_USAGE;
        } else if (scenario) {
            fail(EXIT_USAGE, "more than one scenario given (%s)", a);
            usage(stderr);
            return EXIT_USAGE;
        } else {
            scenario = a;
        }
    }
    if (!scenario) {
        fail(EXIT_USAGE, "no scenario given");
        usage(stderr);
        return EXIT_USAGE;
    }

    struct etf_diag diag;
    struct etf_scenario *sc = NULL;
    struct etf_sim *sim = NULL;
    FILE *report_f = NULL, *tasks_f = NULL;
    int status = 0;
    if (etf_scenario_load(scenario, 0, &sc, &diag) != 0) {
        status = fail(EXIT_USAGE, "%s", diag.msg);
        goto out;
    }
    if (report && !(report_f = open_out(report))) {
        status = fail(EXIT_USAGE, "cannot open %s: %s", report, strerror(errno));
        goto out;
    }
    if (tasks && !(tasks_f = open_out(tasks))) {
        status = fail(EXIT_USAGE, "cannot open %s: %s", tasks, strerror(errno));
        goto out;
    }
    /* Backends and models that cannot be set up are errors of the scenario. */
    if (etf_sim_create(sc, &sim, &diag) != 0) {
        status = fail(EXIT_USAGE, "%s: %s", scenario, diag.msg);
        goto out;
    }
    if (etf_sim_run(sim, &diag) != 0) {
        status = fail(EXIT_RUN, "%s: %s", scenario, diag.msg);
        goto out;
    }
    if ((!quiet && etf_sim_print_summary(sim, stdout, &diag) != 0) ||
        (report_f && etf_sim_write_report(sim, report_f, report_flags, &diag) != 0) ||
        (tasks_f && etf_sim_write_tasks_csv(sim, tasks_f, &diag) != 0))
        status = fail(EXIT_RUN, "%s", diag.msg);

out:
    status = close_out(report_f, status, report);
    status = close_out(tasks_f, status, tasks);
    etf_sim_destroy(sim);
    etf_scenario_free(sc);
    return status;
}
