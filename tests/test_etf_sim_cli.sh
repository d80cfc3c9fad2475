#!/bin/sh
# Tests of the etf-sim command line: usage errors and bad files exit 2 with a message on
# stderr, and the bundled scenario runs and writes a reproducible report and task list.
#
# usage: test_etf_sim_cli.sh PATH-TO-ETF-SIM SOURCE-DIR
set -u

sim=$1
src=$2
tmp=$(mktemp -d "${TMPDIR:-/tmp}/etf_sim_cli.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
failures=0
pair="$src/scenarios/tx2_resnet50_pair.json"

fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

# expect STATUS MESSAGE-SUBSTRING ARGS...: runs etf-sim, checks the exit status and stderr.
expect() {
    want_status=$1
    want_msg=$2
    shift 2
    "$sim" "$@" >"$tmp/out" 2>"$tmp/err"
    status=$?
    if [ "$status" -ne "$want_status" ]; then
        fail "etf-sim $*: exit $status, expected $want_status ($(cat "$tmp/err"))"
    elif ! grep -qF -- "$want_msg" "$tmp/err"; then
        fail "etf-sim $*: stderr lacks '$want_msg': $(cat "$tmp/err")"
    fi
}

expect 2 "etf-sim: no scenario given"
expect 2 "etf-sim: unknown option --bogus" "$pair" --bogus
expect 2 "etf-sim: --report needs a file name" "$pair" --report
expect 2 "etf-sim: more than one scenario" "$pair" "$pair"
expect 2 "etf-sim: cannot open $tmp/missing.json" "$tmp/missing.json"
expect 2 "etf-sim: cannot open $tmp/no/such/dir/r.json" "$pair" --report "$tmp/no/such/dir/r.json"
expect 2 "etf-sim: cannot open $tmp/no/t.csv" "$pair" --tasks "$tmp/no/t.csv"

# Bad input: the message names the file and the field.
printf '{"quantum_us": 40000, "phi": 2, "duration_s": 1, "tenants": []}' >"$tmp/bad.json"
expect 2 "etf-sim: $tmp/bad.json: phi: expected a number in [0, 1], found 2" "$tmp/bad.json"
# A backend this build lacks; profile paths made absolute so the copy can live in $tmp.
sed -e 's/"duration_s": 60/"duration_s": 1, "device": "nodev"/' \
    -e "s|\\.\\./data/|$src/data/|g" "$pair" >"$tmp/nodev.json"
expect 2 "etf-sim: $tmp/nodev.json: device: device 'nodev' is not available" "$tmp/nodev.json"

# --help goes to stdout and succeeds.
if ! "$sim" --help >"$tmp/out" 2>&1 || ! grep -q "usage: etf-sim" "$tmp/out"; then
    fail "etf-sim --help"
fi

# The bundled scenario runs, twice to the same report and task list.
for i in 1 2; do
    if ! "$sim" "$pair" --report "$tmp/r$i.json" --tasks "$tmp/t$i.csv" >"$tmp/sum$i" 2>"$tmp/err"; then
        fail "etf-sim $pair: exit $? ($(cat "$tmp/err"))"
    fi
done
grep -q '"jain_time"' "$tmp/r1.json" || fail "report lacks jain_time"
grep -q '"sched_ns_per_dispatch": null' "$tmp/r1.json" || fail "report has host timing without --timing"
cmp -s "$tmp/r1.json" "$tmp/r2.json" || fail "two runs gave different reports"
cmp -s "$tmp/t1.csv" "$tmp/t2.csv" || fail "two runs gave different task lists"
head -n 1 "$tmp/t1.csv" | grep -qx 'task_id,entity_id,model_id,start_t,end_t,service_time,energy_used' ||
    fail "tasks.csv header"
grep -q "resnet50-fast" "$tmp/sum1" || fail "summary lacks the tenants"
grep -q "ns per dispatch" "$tmp/sum1" || fail "summary lacks the scheduler's cost"
# Time and energy by frequency: the device's and each tenant's in the report, the device's
# in the summary (each tenant of the pair runs at one clock: no split of its own).
[ "$(grep -c '"per_frequency": \[' "$tmp/r1.json")" -eq 3 ] || fail "report lacks per_frequency arrays"
grep -q '{"hz": 726750000, "kernels": [0-9]*, "time_us": [0-9.]*, "energy_uj": [0-9.]*, "time_share": 0\.[0-9]*, "energy_share": 0\.[0-9]*}' \
    "$tmp/r1.json" || fail "report's device per_frequency row"
grep -q '^device by frequency:$' "$tmp/sum1" || fail "summary lacks the split by frequency"
grep -q '^  1300500000 Hz ' "$tmp/sum1" || fail "summary lacks a frequency row"
! grep -q '^tenant .* by frequency:$' "$tmp/sum1" || fail "summary splits a tenant that ran at one clock"

# --quiet prints nothing; --timing puts a number in the report.
"$sim" "$pair" --quiet --timing --report "$tmp/r3.json" >"$tmp/out" 2>&1 || fail "--quiet --timing"
[ ! -s "$tmp/out" ] || fail "--quiet printed: $(cat "$tmp/out")"
grep -q '"sched_ns_per_dispatch": [0-9]' "$tmp/r3.json" || fail "--timing report lacks the timing"

# The richer demo runs too.
"$sim" "$src/scenarios/tx2_demo.json" --quiet || fail "tx2_demo.json"

if [ "$failures" -ne 0 ]; then
    echo "$failures failure(s)" >&2
    exit 1
fi
echo "all etf-sim command-line tests passed"
