#!/usr/bin/env bash
# etf-profile end to end on fake hardware: the simulated device running a tiny profile, a
# fake cpufreq policy whose clock the cpufreq controller sets (scaling_cur_freq is a hard link
# to scaling_setspeed, so a write shows at once), a fake INA3221 rail at a constant 1500 mW,
# and the fake NVML. Checks the profile written (frequencies, kernels, power present or
# absent), usage errors (exit 2), an interruption by SIGTERM (progress kept, clock put back,
# the same command resumes), a kill -9 (the next run restores the clock from the journal and
# resumes), progress of another setup refused unless --restart, the bar on a terminal, and,
# where the build has it, the cpu device on an ONNX model.
#
# usage: test_etf_profile.sh PATH-TO-ETF-PROFILE SOURCE-DIR PATH-TO-FAKE-NVML
set -euo pipefail
LC_ALL=C
export LC_ALL

if [ $# -ne 3 ]; then
    echo "usage: $0 PATH-TO-ETF-PROFILE SOURCE-DIR PATH-TO-FAKE-NVML" >&2
    exit 2
fi
prof=$1
src=$2
# Whatever loads NVML here loads the fake: never the real library, whose clocks are not ours.
export ETF_NVML_LIBRARY=$3
tmp=$(mktemp -d "${TMPDIR:-/tmp}/etf_profile_test.XXXXXX")
tmp=$(cd "$tmp" && pwd -P) # the journal and the sysfs root must be absolute
bg_pid=""

cleanup() {
    set +e
    [ -z "$bg_pid" ] || kill -9 "$bg_pid" 2>/dev/null
    [ -z "$bg_pid" ] || wait "$bg_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

die() {
    echo "FAIL: $*" >&2
    exit 1
}
checks=()
passed() {
    checks+=("$*")
}

# ---- fake hardware and models

sys=$tmp/sys
pol=$sys/devices/system/cpu/cpufreq/policy0
ina=$sys/bus/i2c/drivers/ina3221x/0-0040/iio:device0
journal=$tmp/clocks.journal
mkdir -p "$pol" "$ina"
echo "2000000 1500000 1000000" >"$pol/scaling_available_frequencies"
echo "userspace performance" >"$pol/scaling_available_governors"
echo userspace >"$pol/scaling_governor"
echo 1000000 >"$pol/scaling_min_freq"
echo 2000000 >"$pol/scaling_max_freq"
echo 2000000 >"$pol/scaling_setspeed"
ln "$pol/scaling_setspeed" "$pol/scaling_cur_freq"
echo VDD_SYS_GPU >"$ina/rail_name_0"
echo 1500 >"$ina/in_power0_input"

# tiny_profile FILE NAME K1 K2 K3 FREQ...: a profile of three kernels of 2, 3 and 1 ms at
# every frequency, for the simulated device to run.
tiny_profile() {
    local file=$1 name=$2 k1=$3 k2=$4 k3=$5
    shift 5
    local times="" f
    for f in "$@"; do
        times="$times${times:+, }\"$f\": %s"
    done
    {
        printf '{"model_name": "%s", "kernel_profile": {\n' "$name"
        # shellcheck disable=SC2059
        printf "  \"$k1\": {\"exec_time\": {${times//%s/2000}}},\n"
        # shellcheck disable=SC2059
        printf "  \"$k2\": {\"exec_time\": {${times//%s/3000}}},\n"
        # shellcheck disable=SC2059
        printf "  \"$k3\": {\"exec_time\": {${times//%s/1000}}}}}\n"
    } >"$file"
}
cpu_hz=(1000000000 1500000000 2000000000)
nvml_hz=(345000000 900000000 1410000000 1980000000)
tiny_profile "$tmp/tiny.json" tiny conv_0 relu_1 gemm_2 "${cpu_hz[@]}"
tiny_profile "$tmp/other.json" other a b c "${cpu_hz[@]}"
tiny_profile "$tmp/tiny_gpu.json" tiny_gpu conv_0 relu_1 gemm_2 "${nvml_hz[@]}"

# check_json FILE MODEL POWER(yes|no) KERNELS FREQS: the profile holds these kernels in this
# order at these frequencies, with power (about 1500 mW everywhere) or without.
check_json() {
    /usr/bin/python3 - "$@" <<'PY' || die "$1: $(cat "$1")"
import json, sys
path, model, power, kernels, freqs = sys.argv[1:6]
p = json.load(open(path))
assert p["model_name"] == model, p["model_name"]
assert list(p["kernel_profile"]) == kernels.split(), list(p["kernel_profile"])
want = freqs.split()
assert list(p["exec_time"]) == want, list(p["exec_time"])
for name, k in p["kernel_profile"].items():
    assert k["kernel_name"] == name
    assert list(k["exec_time"]) == want, (name, k["exec_time"])
    assert all(v > 0 for v in k["exec_time"].values()), (name, k["exec_time"])
    if power == "yes":
        assert all(abs(v - 1500) < 15 for v in k["gpu_power"].values()), (name, k["gpu_power"])
        assert set(k["energy"]) == set(want)
    else:
        assert "gpu_power" not in k and "energy" not in k, name
assert ("gpu_power" in p) == (power == "yes")
PY
}

setspeed() {
    cat "$pol/scaling_setspeed"
}

# run_prof NAME ARGS...: runs etf-profile with output in $tmp/NAME.{out,err}; sets $status.
run_prof() {
    local name=$1
    shift
    status=0
    "$prof" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" || status=$?
}

# expect_usage MESSAGE ARGS...: exit 2 and the message on stderr.
expect_usage() {
    local msg=$1
    shift
    run_prof usage "$@"
    [ "$status" -eq 2 ] || die "etf-profile $*: exit $status, expected 2: $(cat "$tmp/usage.err")"
    grep -qF -- "$msg" "$tmp/usage.err" ||
        die "etf-profile $*: stderr lacks '$msg': $(cat "$tmp/usage.err")"
}

sim=(--device sim --min-time-ms 30 --warmup 1)
hw=(--sysfs-root "$sys" --journal "$journal")
started=$(date +%s)

# ---- 1. usage errors

expect_usage "expected exactly one MODEL" --out "$tmp/x.json"
expect_usage "--out PROFILE.json is required" "$tmp/tiny.json" --device sim
expect_usage "--out: expected a file name, found ''" "$tmp/tiny.json" --device sim --out ""
expect_usage "unknown or incomplete option '--bogus'" "$tmp/tiny.json" --bogus --out "$tmp/x.json"
expect_usage "--freqs: expected 'all' or frequencies in Hz" "$tmp/tiny.json" --freqs 1,,2 --out "$tmp/x.json"
expect_usage "--freqs: expected 'all'" "$tmp/tiny.json" --freqs 0 --out "$tmp/x.json"
expect_usage "--min-time-ms: expected 1..3600000, found '0'" "$tmp/tiny.json" --min-time-ms 0 --out "$tmp/x.json"
expect_usage "cannot open" "$tmp/missing.json" "${sim[@]}" --out "$tmp/x.json"
expect_usage "device 'nodev' is not available" "$tmp/tiny.json" --device nodev --out "$tmp/x.json"
expect_usage "meter 'bogus' is not available" "$tmp/tiny.json" "${sim[@]}" --meter bogus --out "$tmp/x.json"
expect_usage "frequency controller 'fast' is not available" "$tmp/tiny.json" "${sim[@]}" --freq fast --out "$tmp/x.json"
expect_usage "1200000000 Hz is not on offer (the sim controller has: 1000000000 1500000000 2000000000)" \
    "$tmp/tiny.json" "${sim[@]}" --freqs 1000000000,1200000000 --out "$tmp/x.json"
expect_usage "the none controller cannot set the clock: one frequency at most" \
    "$tmp/tiny.json" "${sim[@]}" --freq none --freqs 1000000000,2000000000 --out "$tmp/x.json"
expect_usage "the clock of the sim device is unknown" "$tmp/tiny.json" "${sim[@]}" --freq none --out "$tmp/x.json"
expect_usage "changing GPU clocks is off" "$tmp/tiny_gpu.json" "${sim[@]}" --freq nvml --out "$tmp/x.json"
[ ! -e "$tmp/x.json" ] && [ ! -e "$tmp/x.json.partial" ] || die "a usage error left a file"
passed "usage errors exit 2 and say what was expected"

# ---- 2. every frequency of a controller, with power and without

run_prof all "$tmp/tiny.json" "${sim[@]}" "${hw[@]}" --freq cpufreq --freqs all --meter ina3221 \
    --out "$tmp/all.json"
[ "$status" -eq 0 ] || die "--freqs all: exit $status: $(cat "$tmp/all.err")"
check_json "$tmp/all.json" tiny yes "conv_0 relu_1 gemm_2" "${cpu_hz[*]}"
[ ! -e "$tmp/all.json.partial" ] || die "the progress file stays after a complete run"
[ "$(setspeed)" = 2000000 ] || die "the clock stays at $(setspeed) kHz after the run"
[ ! -e "$journal" ] || die "the journal stays after the run"
grep -q "power from the ina3221 meter" "$tmp/all.err" || die "no word of the meter: $(cat "$tmp/all.err")"
grep -q "^etf-profile: 2000000000 Hz (3/3): done (9/9 measurements), model .* ms at 1[45][0-9][0-9]\.[0-9] mW" \
    "$tmp/all.err" || die "no line per frequency: $(cat "$tmp/all.err")"
grep -q "^profile $tmp/all.json: tiny, 3 kernels at 3 frequencies, with power" "$tmp/all.out" ||
    die "summary: $(cat "$tmp/all.out")"
grep -qE "^ +1500000000 +[0-9.]+ +1[45][0-9][0-9]\.[0-9] +[0-9.]+$" "$tmp/all.out" ||
    die "summary row: $(cat "$tmp/all.out")"
passed "--freq cpufreq --freqs all: 3 frequencies x 3 kernels at ~1500 mW, clock and journal put back"

run_prof nopower "$tmp/tiny.json" "${sim[@]}" --freqs 1500000000,1000000000 --out "$tmp/nopower.json"
[ "$status" -eq 0 ] || die "no meter: exit $status: $(cat "$tmp/nopower.err")"
check_json "$tmp/nopower.json" tiny no "conv_0 relu_1 gemm_2" "1000000000 1500000000"
grep -q "no power figures (no meter: --meter none)" "$tmp/nopower.err" || die "$(cat "$tmp/nopower.err")"
grep -q "(no meter: gpu_power and energy are omitted)" "$tmp/nopower.out" || die "$(cat "$tmp/nopower.out")"
run_prof model "$tmp/tiny.json" "${sim[@]}" --meter model --out "$tmp/model.json"
[ "$status" -eq 0 ] || die "model meter: exit $status: $(cat "$tmp/model.err")"
check_json "$tmp/model.json" tiny no "conv_0 relu_1 gemm_2" 2000000000
grep -q "the model meter measures nothing" "$tmp/model.err" || die "$(cat "$tmp/model.err")"
grep -q "measuring at the clock in force, as the sim controller reads it" "$tmp/model.err" ||
    die "$(cat "$tmp/model.err")"
passed "no meter or the model meter: no power figures, and it says so; no --freqs: the clock in force"

# ---- 3. SIGTERM mid-run: progress kept, clock put back; the same command resumes

slow=(--device sim --min-time-ms 150 --warmup 1 "${hw[@]}" --freq cpufreq --freqs all --meter ina3221)
# wait_partial N: waits (at most 30 s) for the progress file to hold N measurements.
wait_partial() {
    local n=0 have=0
    while [ "$n" -lt 300 ] && kill -0 "$bg_pid" 2>/dev/null; do
        if [ -s "$tmp/r.json.partial" ]; then
            have=$(/usr/bin/python3 -c 'import json,sys
try:
    print(sum(len(m["exec_time"]) for m in json.load(open(sys.argv[1]))["measured"]))
except Exception:
    print(0)' "$tmp/r.json.partial")
            [ "$have" -lt "$1" ] || return 0
        fi
        sleep 0.1
        n=$((n + 1))
    done
    die "the progress file did not reach $1 measurements (it has $have): $(cat "$tmp/r.err")"
}
"$prof" "$tmp/tiny.json" "${slow[@]}" --out "$tmp/r.json" >"$tmp/r.out" 2>"$tmp/r.err" &
bg_pid=$!
wait_partial 4
kill -TERM "$bg_pid"
status=0
wait "$bg_pid" || status=$?
bg_pid=""
[ "$status" -eq 143 ] || die "SIGTERM: exit $status, expected 143: $(cat "$tmp/r.err")"
grep -q "^etf-profile: SIGTERM: interrupted: [4-8] of 9 measurements saved in $tmp/r.json.partial; the same command resumes" \
    "$tmp/r.err" || die "SIGTERM: $(cat "$tmp/r.err")"
[ ! -e "$tmp/r.json" ] || die "a profile was written by an interrupted run"
[ "$(setspeed)" = 2000000 ] || die "after SIGTERM the clock stays at $(setspeed) kHz"
[ ! -e "$journal" ] || die "after SIGTERM the journal stays: $(cat "$journal")"
saved=$(sed -n 's/.*interrupted: \([0-9]*\) of 9.*/\1/p' "$tmp/r.err")
passed "SIGTERM after $saved of 9 measurements: exit 143, progress kept, clock and journal put back"

# Another model, or another setup, is refused; --restart is not used yet.
expect_usage "is of another run (model_name: \"tiny\" there, \"other\" here)" \
    "$tmp/other.json" "${slow[@]}" --out "$tmp/r.json"
expect_usage "is of another run (min_time_ns: 150000000 there, 100000000 here)" \
    "$tmp/tiny.json" "${slow[@]}" --min-time-ms 100 --out "$tmp/r.json"
expect_usage "(frequencies: [1000000000,1500000000,2000000000] there, [1000000000] here)" \
    "$tmp/tiny.json" "${slow[@]}" --freqs 1000000000 --out "$tmp/r.json"
[ -s "$tmp/r.json.partial" ] || die "a refused run removed the progress file"
passed "progress of another model, min time or frequency list is refused with exit 2, naming the difference"

run_prof resume "$tmp/tiny.json" "${slow[@]}" --out "$tmp/r.json"
[ "$status" -eq 0 ] || die "resume: exit $status: $(cat "$tmp/resume.err")"
grep -q "resuming $tmp/r.json.partial: $saved of 9 measurements done, skipping them" "$tmp/resume.err" ||
    die "resume: $(cat "$tmp/resume.err")"
check_json "$tmp/r.json" tiny yes "conv_0 relu_1 gemm_2" "${cpu_hz[*]}"
[ ! -e "$tmp/r.json.partial" ] && [ ! -e "$journal" ] && [ "$(setspeed)" = 2000000 ] ||
    die "after the resumed run: partial, journal or clock left"
passed "the same command resumes: skips $saved, measures the rest, writes the whole profile"

# ---- 4. kill -9: the journal stays; the next run puts the clock back and resumes

rm -f "$tmp/r.json"
"$prof" "$tmp/tiny.json" "${slow[@]}" --out "$tmp/r.json" >"$tmp/r.out" 2>"$tmp/r.err" &
bg_pid=$!
wait_partial 1
kill -9 "$bg_pid"
{ wait "$bg_pid"; } 2>/dev/null || true # without bash's "Killed" notice
bg_pid=""
[ -e "$journal" ] || die "no journal after kill -9"
[ "$(setspeed)" != 2000000 ] || die "after kill -9 the clock is back at 2000000 kHz already"
run_prof crash "$tmp/tiny.json" "${slow[@]}" --out "$tmp/r.json"
[ "$status" -eq 0 ] || die "after kill -9: exit $status: $(cat "$tmp/crash.err")"
grep -q "resuming $tmp/r.json.partial: [1-8] of 9 measurements done" "$tmp/crash.err" ||
    die "after kill -9: $(cat "$tmp/crash.err")"
check_json "$tmp/r.json" tiny yes "conv_0 relu_1 gemm_2" "${cpu_hz[*]}"
[ ! -e "$journal" ] && [ "$(setspeed)" = 2000000 ] || die "after kill -9 and a rerun: clock $(setspeed)"
passed "kill -9: journal kept and clock pinned; the rerun restores it, resumes and puts it back"

# --restart starts over, whatever the progress file holds.
"$prof" "$tmp/tiny.json" "${slow[@]}" --out "$tmp/r.json" >"$tmp/r.out" 2>"$tmp/r.err" &
bg_pid=$!
wait_partial 1
kill -INT "$bg_pid"
status=0
wait "$bg_pid" || status=$?
bg_pid=""
[ "$status" -eq 130 ] || die "SIGINT: exit $status: $(cat "$tmp/r.err")"
run_prof restart "$tmp/other.json" "${sim[@]}" --freqs 1000000000 --restart --out "$tmp/r.json"
[ "$status" -eq 0 ] || die "--restart: exit $status: $(cat "$tmp/restart.err")"
! grep -q resuming "$tmp/restart.err" || die "--restart resumed: $(cat "$tmp/restart.err")"
check_json "$tmp/r.json" other no "a b c" 1000000000
passed "SIGINT: exit 130; --restart starts over with another model"

# ---- 5. the nvml controller through the fake NVML

run_prof nvml "$tmp/tiny_gpu.json" "${sim[@]}" --journal "$journal" --freq nvml \
    --allow-gpu-clock-changes --freqs all --out "$tmp/gpu.json"
[ "$status" -eq 0 ] || die "--freq nvml: exit $status: $(cat "$tmp/nvml.err")"
check_json "$tmp/gpu.json" tiny_gpu no "conv_0 relu_1 gemm_2" "${nvml_hz[*]}"
[ ! -e "$journal" ] || die "--freq nvml left the journal"
passed "--freq nvml --allow-gpu-clock-changes --freqs all: the fake GPU's 4 clocks"

# ---- 6. a bar on a terminal, one line per frequency otherwise (section 2)

if command -v script >/dev/null 2>&1; then
    script -qec "'$prof' '$tmp/tiny.json' --device sim --min-time-ms 30 --freqs all --out '$tmp/tty.json'" \
        /dev/null >"$tmp/tty.out" 2>&1 </dev/null || die "on a terminal: $(cat "$tmp/tty.out")"
    grep -qF "] 100% 9/9  2000000000 Hz  gemm_2" "$tmp/tty.out" || die "no bar: $(cat -v "$tmp/tty.out")"
    ! grep -q "(1/3): measuring" "$tmp/tty.out" || die "plain lines on a terminal: $(cat -v "$tmp/tty.out")"
    passed "a progress bar on a terminal"
fi

# ---- 7. the cpu device on an ONNX model, where the build has it

onnx=$src/tests/fuzz/seeds/fuzz_onnx/resblock.onnx
run_prof cpu "$onnx" --device cpu --threads 1 --min-time-ms 20 --warmup 1 "${hw[@]}" \
    --freq cpufreq --freqs 1000000000,2000000000 --meter ina3221 --out "$tmp/cpu.json"
if [ "$status" -eq 2 ] && grep -q "device 'cpu' is not available" "$tmp/cpu.err"; then
    echo "test_etf_profile: no cpu device in this build: its part is skipped"
else
    [ "$status" -eq 0 ] || die "--device cpu: exit $status: $(cat "$tmp/cpu.err")"
    check_json "$tmp/cpu.json" resblock yes "conv_bias_relu_0 conv_bias_sum_relu_1" \
        "1000000000 2000000000"
    [ "$(setspeed)" = 2000000 ] && [ ! -e "$journal" ] || die "--device cpu: clock $(setspeed)"
    passed "--device cpu on resblock.onnx: its 2 kernels at 2 frequencies with power"
fi

echo "test_etf_profile: all passed in $(($(date +%s) - started)) s:"
for c in "${checks[@]}"; do
    echo "  ok: $c"
done
