#!/usr/bin/env bash
# etfd driving a (fake) Jetson TX2 through sysfs: --freq devfreq pins the GPU clock of
# class/devfreq/17000000.gp10b, --meter ina3221 reads the GPU rail, and the clock journal
# puts the node's settings back on SIGINT, at the next start after a kill -9, and through
# `etfd --restore-clocks`. Also: --freq nvml is refused without --allow-gpu-clock-changes.
#
# usage: test_etfd_sysfs.sh PATH-TO-ETFD PATH-TO-ETF SOURCE-DIR
#
# No kernel makes the fake cur_freq follow the limits, so a background loop copies max_freq
# into cur_freq (whole-file replace, so etfd never reads a torn value). Everything lives in
# a temporary folder; every wait is bounded; whatever is left running is killed on exit.
set -euo pipefail
LC_ALL=C
export LC_ALL

if [ $# -ne 3 ]; then
    echo "usage: $0 PATH-TO-ETFD PATH-TO-ETF SOURCE-DIR" >&2
    exit 2
fi
# Absolute, since etfd runs in a folder of its own.
abs() {
    case $1 in
    /*) echo "$1" ;;
    *) echo "$PWD/$1" ;;
    esac
}
etfd=$(abs "$1")
etf=$(abs "$2")
src=$(abs "$3")

tmp=$(mktemp -d "${TMPDIR:-/tmp}/etfd_sysfs_test.XXXXXX")
tmp=$(cd "$tmp" && pwd -P) # the journal and the sysfs root must be absolute
pids=()
follower_pid=""

cleanup() {
    set +e
    if [ -n "$follower_pid" ]; then
        : >"$tmp/follower.stop"
        for _ in $(seq 50); do
            kill -0 "$follower_pid" 2>/dev/null || break
            sleep 0.05
        done
        kill -9 "$follower_pid" 2>/dev/null
        wait "$follower_pid" 2>/dev/null
    fi
    for p in "${pids[@]}"; do
        kill -9 "$p" 2>/dev/null
    done
    for p in "${pids[@]}"; do
        wait "$p" 2>/dev/null
    done
    rm -rf "$tmp" 2>/dev/null || { sleep 0.2; rm -rf "$tmp"; }
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

die() {
    echo "FAIL: $*" >&2
    if [ -n "${err:-}" ] && [ -s "$err" ]; then
        echo "--- the last etfd's stderr ($err):" >&2
        tail -n 20 "$err" >&2
    fi
    exit 1
}

checks=()
passed() {
    checks+=("$*")
}

# ---- the fake TX2

sys=$tmp/sys
gpu=$sys/class/devfreq/17000000.gp10b
ina=$sys/bus/i2c/drivers/ina3221x
journal=$tmp/clocks.journal
mkdir -p "$gpu" "$ina/0-0040/iio:device0" "$ina/0-0041/iio:device1" "$tmp/repo" "$tmp/cwd"

# The frequencies of the TX2 profiles (ascending), checked against the profile itself.
freqs=(114750000 216750000 318750000 420750000 522750000 624750000 726750000 854250000
    930750000 1032750000 1122000000 1236750000 1300500000)
for f in "${freqs[@]}"; do
    grep -q "\"$f\"" "$src/data/tx2/resnet18_profile.json" ||
        die "data/tx2/resnet18_profile.json lacks frequency $f"
done
lo=114750000
hi=1300500000
f_low=726750000
governor=nvhost_podgov

echo "${freqs[*]}" >"$gpu/available_frequencies"
echo "wmark_active nvhost_podgov userspace performance" >"$gpu/available_governors"
echo "$governor" >"$gpu/governor"
echo "$lo" >"$gpu/min_freq"
echo "$hi" >"$gpu/max_freq"
echo "$hi" >"$gpu/cur_freq"
# A second devfreq node the controller must leave alone.
mkdir -p "$sys/class/devfreq/13e10000.host1x"
echo 408000000 >"$sys/class/devfreq/13e10000.host1x/cur_freq"
# Two INA3221 on iio, as on a TX2; the GPU rail is VDD_SYS_GPU at a constant 1500 mW.
: >"$ina/bind"
: >"$ina/uevent"
rails0=(VDD_SYS_GPU VDD_SYS_SOC VDD_4V0_WIFI)
rails1=(VDD_IN VDD_SYS_CPU VDD_SYS_DDR)
mw0=(1500 800 0)
mw1=(5000 300 600)
for k in 0 1 2; do
    echo "${rails0[$k]}" >"$ina/0-0040/iio:device0/rail_name_$k"
    echo "${mw0[$k]}" >"$ina/0-0040/iio:device0/in_power${k}_input"
    echo "${rails1[$k]}" >"$ina/0-0041/iio:device1/rail_name_$k"
    echo "${mw1[$k]}" >"$ina/0-0041/iio:device1/in_power${k}_input"
done

cp "$src/data/tx2/resnet18_profile.json" "$src/data/tx2/resnet50_profile.json" "$tmp/repo/"

# A read end that never gets data: `read -t` on it sleeps without a fork.
mkfifo "$tmp/idle.fifo"
exec {idle_fd}<>"$tmp/idle.fifo"
nap() {
    read -r -t "$1" -u "$idle_fd" _ || true
}

# ---- the follower: cur_freq := max_freq, about every millisecond
#
# etfd waits at most 50 ms for cur_freq to show a new clock, so the follower must not lag:
# where python3 exists it does the work without forking (a fork and exec can take 20 ms on
# a small VM), under SCHED_FIFO or a raised priority where the system allows (it sleeps a
# millisecond every round, so it cannot starve anything). Else a bash loop with mv.

if command -v python3 >/dev/null 2>&1; then
    python3 - "$gpu" "$tmp" <<'PY' &
import os, sys, time
gpu, tmp = sys.argv[1], sys.argv[2]
src, dst = gpu + "/max_freq", gpu + "/cur_freq"
part, stop, ready = tmp + "/cur_freq.tmp", tmp + "/follower.stop", tmp + "/follower.ready"
try:
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
except (OSError, AttributeError):
    try:
        os.nice(-10)
    except OSError:
        pass
last = None
while not os.path.exists(stop):
    try:
        with open(src) as f:
            v = f.read().strip()
    except OSError:
        v = ""
    if v.isdigit() and v != last:
        with open(part, "w") as f:
            f.write(v + "\n")
        os.replace(part, dst)
        last = v
    if not os.path.exists(ready):
        open(ready, "w").close()
    time.sleep(0.001)
PY
    follower_pid=$!
else
    follow() {
        local v last=""
        while [ ! -e "$tmp/follower.stop" ]; do
            if read -r v <"$gpu/max_freq" 2>/dev/null && [[ $v =~ ^[0-9]+$ ]] &&
                [ "$v" != "$last" ]; then
                printf '%s\n' "$v" >"$tmp/cur_freq.tmp" &&
                    mv -f "$tmp/cur_freq.tmp" "$gpu/cur_freq" && last=$v
            fi
            [ -e "$tmp/follower.ready" ] || : >"$tmp/follower.ready"
            nap 0.001
        done
    }
    follow &
    follower_pid=$!
fi
# Python can take seconds to start on a loaded machine: etfd must not switch before then.
n=0
while [ ! -e "$tmp/follower.ready" ] && [ "$n" -lt 200 ] && kill -0 "$follower_pid" 2>/dev/null; do
    sleep 0.1
    n=$((n + 1))
done
[ -e "$tmp/follower.ready" ] || die "the cur_freq follower did not start within 20 s"

# ---- helpers

# read_node: sets node_min, node_max, node_gov from the tree ("" for a value being written).
read_node() {
    node_min="" node_max="" node_gov=""
    read -r node_min <"$gpu/min_freq" || true
    read -r node_max <"$gpu/max_freq" || true
    read -r node_gov <"$gpu/governor" || true
}

node_text() {
    echo "min_freq=$node_min max_freq=$node_max governor=$node_gov"
}

# assert_initial WHAT: the node holds the settings it had before any etfd ran.
assert_initial() {
    read_node
    [ "$node_min" = "$lo" ] && [ "$node_max" = "$hi" ] && [ "$node_gov" = "$governor" ] ||
        die "$1: the node is at $(node_text), expected min_freq=$lo max_freq=$hi governor=$governor"
}

assert_no_journal() {
    [ ! -e "$journal" ] || die "$1: the journal is still there: $(cat "$journal")"
}

# wait_exit PID SECONDS: waits for PID to exit, at most SECONDS; sets $status (124 when
# it was still running).
wait_exit() {
    local n=0
    while kill -0 "$1" 2>/dev/null && [ "$n" -lt $(($2 * 10)) ]; do
        sleep 0.1
        n=$((n + 1))
    done
    if kill -0 "$1" 2>/dev/null; then
        status=124
    else
        status=0
        wait "$1" 2>/dev/null || status=$?
    fi
}

# start_etfd NAME: starts etfd on an ephemeral port, output in $tmp/NAME.{out,err}; sets
# etfd_pid and server once it listens (at most 20 s).
start_etfd() {
    local name=$1 port="" n=0
    out=$tmp/$name.out
    err=$tmp/$name.err
    (cd "$tmp/cwd" && exec "$etfd" --quantum-us 20000 --phi 0.5 --device sim --freq devfreq \
        --meter ina3221 --sysfs-root "$sys" --journal "$journal" --models "$tmp/repo" \
        --listen 127.0.0.1:0 >"$out" 2>"$err") &
    etfd_pid=$!
    pids+=("$etfd_pid")
    while [ -z "$port" ] && [ "$n" -lt 200 ] && kill -0 "$etfd_pid" 2>/dev/null; do
        sleep 0.1
        n=$((n + 1))
        port=$(sed -n 's/^etfd: listening on 127\.0\.0\.1:\([0-9][0-9]*\) .*/\1/p' "$out")
    done
    [ -n "$port" ] || die "etfd ($name) did not start within 20 s: $(cat "$out" "$err")"
    grep -q "meter ina3221, freq devfreq" "$out" ||
        die "etfd ($name) does not use the sysfs backends: $(cat "$out")"
    server=127.0.0.1:$port
}

# stop_etfd NAME: SIGINT, exit 0 within 30 s.
stop_etfd() {
    kill -INT "$etfd_pid"
    wait_exit "$etfd_pid" 30
    [ "$status" -ne 124 ] || die "etfd ($1) still running 30 s after SIGINT"
    [ "$status" -eq 0 ] || die "etfd ($1) exited $status after SIGINT: $(tail -n 20 "$err")"
}

# crash_etfd NAME: kill -9.
crash_etfd() {
    kill -9 "$etfd_pid"
    wait_exit "$etfd_pid" 10 2>/dev/null # without bash's "Killed" notice
    [ "$status" -ne 124 ] || die "etfd ($1) survived kill -9"
}

# bench NAME MODEL FREQ SECONDS: starts `etf bench` in the background; sets bench_pid.
bench() {
    timeout 120 "$etf" bench "$2" --freq "$3" --threads 2 --duration "$4" --server "$server" \
        >"$tmp/$1.out" 2>"$tmp/$1.err" &
    bench_pid=$!
    pids+=("$bench_pid")
}

# bench_ok NAME PID: the bench exited 0 within 60 s and finished requests.
bench_ok() {
    wait_exit "$2" 60
    [ "$status" -ne 124 ] || die "bench $1 still running after 60 s"
    [ "$status" -eq 0 ] || die "bench $1 exited $status: $(tail -n 5 "$tmp/$1.err")"
    grep -qE "Request count: [1-9]" "$tmp/$1.out" ||
        die "bench $1 finished no request: $(tail -n 12 "$tmp/$1.out")"
}

# run_low_and_crash NAME: one client ~1 s at $f_low, then kill -9 etfd; the journal stays
# and the node stays pinned at $f_low.
run_low_and_crash() {
    start_etfd "$1"
    bench "$1-bench" resnet18_profile.json "$f_low" 1
    bench_ok "$1-bench" "$bench_pid"
    read_node
    [ "$node_min" = "$f_low" ] && [ "$node_max" = "$f_low" ] ||
        die "$1: after a bench at $f_low the node is at $(node_text)"
    crash_etfd "$1"
    [ -f "$journal" ] || die "$1: no journal after kill -9"
    read_node
    [ "$node_min" != "$lo" ] || [ "$node_max" != "$hi" ] ||
        die "$1: after kill -9 the node is at its initial settings already"
}

started=$(date +%s)

# ---- 1. two clients at different clocks: the limits follow the one running

assert_initial "before etfd"
assert_no_journal "before etfd"
start_etfd etfd1
[ -f "$journal" ] || die "etfd1: no journal once listening"
grep -qxF "root $sys" "$journal" || die "etfd1: the journal lacks 'root $sys': $(cat "$journal")"
grep -qxF "devfreq class/devfreq/17000000.gp10b governor=$governor min_hz=$lo max_hz=$hi" \
    "$journal" || die "etfd1: the journal does not hold the initial settings: $(cat "$journal")"
passed "the journal holds the initial settings while etfd runs"

bench low resnet18_profile.json "$f_low" 3
low_pid=$bench_pid
bench high resnet50_profile.json "$hi" 3
high_pid=$bench_pid

declare -A seen_max=() seen_min=()
samples=0
no_journal=0
n=0
while { kill -0 "$low_pid" 2>/dev/null || kill -0 "$high_pid" 2>/dev/null; } && [ "$n" -lt 12000 ]; do
    n=$((n + 1))
    if read -r v <"$gpu/max_freq" 2>/dev/null && [[ $v =~ ^[0-9]+$ ]]; then
        seen_max[$v]=1
        samples=$((samples + 1))
    fi
    if read -r v <"$gpu/min_freq" 2>/dev/null && [[ $v =~ ^[0-9]+$ ]]; then
        seen_min[$v]=1
    fi
    [ -f "$journal" ] || no_journal=$((no_journal + 1))
    nap 0.005
done
bench_ok low "$low_pid"
bench_ok high "$high_pid"
[ "$samples" -ge 100 ] || die "only $samples samples of max_freq during the benches"
[ "$no_journal" -eq 0 ] || die "the journal was missing in $no_journal samples during the benches"
for f in "${!seen_max[@]}" "${!seen_min[@]}"; do
    [ "$f" = "$lo" ] || [ "$f" = "$f_low" ] || [ "$f" = "$hi" ] ||
        die "the limits took $f Hz, which neither client asked for"
done
[ -n "${seen_max[$f_low]:-}" ] && [ -n "${seen_max[$hi]:-}" ] ||
    die "max_freq took ${!seen_max[*]} in $samples samples, expected both $f_low and $hi"
[ -n "${seen_min[$f_low]:-}" ] && [ -n "${seen_min[$hi]:-}" ] ||
    die "min_freq took ${!seen_min[*]}, expected both $f_low and $hi"
passed "two benches at $f_low and $hi Hz: min/max_freq switched between both ($samples samples), journal present throughout"

# ---- 2. SIGINT puts the node back and removes the journal

stop_etfd etfd1
assert_initial "etfd1 after SIGINT"
assert_no_journal "etfd1 after SIGINT"
passed "SIGINT: exit 0, node back to min=$lo max=$hi governor=$governor, journal removed"

# ---- 3. kill -9, then the next etfd restores at start

run_low_and_crash etfd2
passed "kill -9: the journal stays and the node stays pinned at $f_low"
start_etfd etfd3
assert_initial "etfd3 once listening (after etfd2's kill -9)"
grep -qxF "devfreq class/devfreq/17000000.gp10b governor=$governor min_hz=$lo max_hz=$hi" \
    "$journal" || die "etfd3: the journal does not hold the initial settings: $(cat "$journal")"
stop_etfd etfd3
assert_initial "etfd3 after SIGINT"
assert_no_journal "etfd3 after SIGINT"
passed "the next etfd restores the node before listening, and exits 0 on SIGINT leaving no journal"

# ---- 4. kill -9, then etfd --restore-clocks

run_low_and_crash etfd4
restore() {
    status=0
    timeout 60 "$etfd" --restore-clocks --sysfs-root "$sys" --journal "$journal" \
        >"$tmp/restore.out" 2>"$tmp/restore.err" || status=$?
}
restore
[ "$status" -eq 0 ] || die "etfd --restore-clocks exited $status: $(cat "$tmp/restore.err")"
assert_initial "etfd --restore-clocks"
assert_no_journal "etfd --restore-clocks"
restore
[ "$status" -eq 0 ] || die "etfd --restore-clocks without a journal exited $status: $(cat "$tmp/restore.err")"
assert_initial "etfd --restore-clocks without a journal"
passed "kill -9 then etfd --restore-clocks: exit 0, node restored, journal removed; again without a journal: exit 0"

# The other devfreq node and the meter's files were never written.
[ "$(cat "$sys/class/devfreq/13e10000.host1x/cur_freq")" = 408000000 ] ||
    die "the host1x node was changed"
[ "$(cat "$sys/class/devfreq/17000000.gp10b/available_frequencies")" = "${freqs[*]}" ] ||
    die "available_frequencies was changed"
passed "other devfreq nodes and the node's frequency list untouched"

# ---- 5. --freq nvml stays off without --allow-gpu-clock-changes (and never reaches a real
# NVML here: the library named does not exist)

status=0
ETF_NVML_LIBRARY=/nonexistent/libnvidia-ml.so.1 timeout 60 "$etfd" --quantum-us 20000 --phi 0.5 \
    --device sim --freq nvml --models "$tmp/repo" --listen 127.0.0.1:0 \
    >"$tmp/nvml.out" 2>"$tmp/nvml.err" || status=$?
[ "$status" -eq 2 ] || die "etfd --freq nvml without the flag exited $status: $(cat "$tmp/nvml.err")"
grep -q "changing GPU clocks is off.*--allow-gpu-clock-changes" "$tmp/nvml.err" ||
    die "etfd --freq nvml without the flag: $(cat "$tmp/nvml.err")"
passed "--freq nvml without --allow-gpu-clock-changes: exit 2, saying how to allow it"

echo "test_etfd_sysfs: all passed in $(($(date +%s) - started)) s:"
for c in "${checks[@]}"; do
    echo "  ok: $c"
done
