#!/bin/sh
# End-to-end tests of `etf`, the client, against a real etfd: every subcommand, the bench
# (the original run_client's lines and a report), errors with their exit status and gRPC
# status names, a client killed mid-bench beside a second one, and etfd's exit on SIGINT.
#
# usage: test_etf_client.sh PATH-TO-ETF PATH-TO-ETFD SOURCE-DIR
#
# etfd runs on an ephemeral port with the simulated device and a temporary repository
# holding the two TX2 profiles. Every wait is bounded; whatever is left runs is killed on
# exit.
set -u
LC_ALL=C
export LC_ALL

etf=$1
etfd=$2
src=$3
tmp=$(mktemp -d "${TMPDIR:-/tmp}/etf_client_test.XXXXXX") || exit 1
pids=""
failures=0
checks=0

cleanup() {
    for p in $pids; do
        kill -9 "$p" 2>/dev/null
    done
    for p in $pids; do
        wait "$p" 2>/dev/null
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

# Background jobs of a non-interactive shell start with SIGINT ignored; etfd and the
# clients must see it as a user's ^C would.
if env --default-signal=INT true 2>/dev/null; then
    fg_sig="env --default-signal=INT"
else
    fg_sig=""
fi

# wait_pid PID SECONDS: waits for PID to exit, at most SECONDS; sets $status (124 when it
# was still running).
wait_pid() {
    n=0
    while kill -0 "$1" 2>/dev/null && [ "$n" -lt $(($2 * 10)) ]; do
        sleep 0.1
        n=$((n + 1))
    done
    if kill -0 "$1" 2>/dev/null; then
        status=124
    else
        wait "$1"
        status=$?
    fi
}

# run ARGS...: runs etf against the test server with a deadline; stdout in $tmp/out,
# stderr in $tmp/err, exit status in $status.
run() {
    timeout 60 "$etf" "$@" --server "$server" >"$tmp/out" 2>"$tmp/err"
    status=$?
    checks=$((checks + 1))
}

# ok ARGS...: etf succeeds.
ok() {
    run "$@"
    [ "$status" -eq 0 ] || fail "etf $*: exit $status, expected 0 ($(cat "$tmp/err"))"
}

# expect STATUS MESSAGE ARGS...: etf exits STATUS with MESSAGE on stderr.
expect() {
    want_status=$1
    want_msg=$2
    shift 2
    run "$@"
    if [ "$status" -ne "$want_status" ]; then
        fail "etf $*: exit $status, expected $want_status ($(cat "$tmp/err"))"
    elif ! grep -qF -- "$want_msg" "$tmp/err"; then
        fail "etf $*: stderr lacks '$want_msg': $(cat "$tmp/err")"
    fi
}

# has PATTERN WHAT: the last stdout matches the extended regex PATTERN.
has() {
    checks=$((checks + 1))
    grep -qE -- "$1" "$tmp/out" || fail "$2: stdout lacks /$1/: $(head -c 2000 "$tmp/out")"
}

# ---- the server

mkdir "$tmp/repo" "$tmp/cwd"
cp "$src/data/tx2/resnet18_profile.json" "$src/data/tx2/resnet50_profile.json" "$tmp/repo/"
(cd "$tmp/cwd" && exec $fg_sig "$etfd" --quantum-us 40000 --phi 0.5 --device sim \
    --models "$tmp/repo" --listen 127.0.0.1:0 >"$tmp/etfd.out" 2>"$tmp/etfd.err") &
etfd_pid=$!
pids="$etfd_pid"
port=""
n=0
while [ -z "$port" ] && [ "$n" -lt 100 ] && kill -0 "$etfd_pid" 2>/dev/null; do
    sleep 0.1
    n=$((n + 1))
    port=$(sed -n 's/^etfd: listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$tmp/etfd.out")
done
if [ -z "$port" ]; then
    echo "FAIL: etfd did not start: $(cat "$tmp/etfd.out" "$tmp/etfd.err")" >&2
    exit 1
fi
server="127.0.0.1:$port"

# ---- help

timeout 10 "$etf" --help >"$tmp/out" 2>&1 && grep -q "usage: etf" "$tmp/out" || fail "etf --help"
for cmd in create-entity set-priority load-model infer unload-model delete-entity stats bench; do
    if ! timeout 10 "$etf" "$cmd" --help >"$tmp/out" 2>&1 ||
        ! grep -q "usage: etf $cmd" "$tmp/out"; then
        fail "etf $cmd --help"
    fi
done

# ---- every subcommand

ok create-entity --priority 5
eid=$(cat "$tmp/out")
case "$eid" in
'' | *[!0-9]*) fail "create-entity printed '$eid', expected an id" ;;
esac
ok set-priority "$eid" -3
has "priority -3" "set-priority"

ok load-model resnet18_profile.json --entity "$eid"
has '^mid [0-9]+$' "load-model"
has '^frequency [0-9]+ Hz$' "load-model"
mid=$(sed -n 's/^mid \([0-9][0-9]*\)$/\1/p' "$tmp/out")
ok load-model resnet50_profile.json --entity "$eid" --freq 726750000
has '^frequency 726750000 Hz$' "load-model --freq"
mid50=$(sed -n 's/^mid \([0-9][0-9]*\)$/\1/p' "$tmp/out")

ok infer "$mid"
for key in tid service energy queue latency "round trip"; do
    has "^$key [0-9.]+( µs| µJ)?$" "infer"
done

ok stats
has "^device " "stats"
has "^$eid +-3 " "stats (entity row)"
has "^  model $mid +resnet18 " "stats (model row)"
ok stats "$eid"
has "^$eid " "stats EID"

ok unload-model "$mid50"
expect 1 "NOT_FOUND" infer "$mid50"

# ---- bench: the original's lines, then the report

ok bench resnet18_profile.json --threads 4 --duration 2 --priority 2
has '^Created entity #[0-9]+$' "bench"
has '^Loaded model #[0-9]+$' "bench"
has '^Infer finished in [0-9]+ µs task id [0-9]+$' "bench"
for key in "Request count: [1-9]" "Throughput: [0-9.]+ infer/s" "p50 latency: [0-9]+ µs" \
    "p90 latency: [0-9]+ µs" "p99 latency: [0-9]+ µs" "Avg service time" "Avg queue time"; do
    has "$key" "bench report"
done
lines=$(grep -c '^Infer finished in' "$tmp/out")
count=$(sed -n 's/^ *Request count: \([0-9]*\).*/\1/p' "$tmp/out")
[ "$lines" = "$count" ] || fail "bench: $lines request lines, report says $count"

# ---- errors

expect 1 "NOT_FOUND" infer 999999
expect 1 "NOT_FOUND" set-priority 999999 0
expect 1 "NOT_FOUND" unload-model 999999
expect 1 "NOT_FOUND" delete-entity 999999
expect 1 "NOT_FOUND" stats 999999
expect 1 "NOT_FOUND" load-model resnet18_profile.json --entity 999999
expect 1 "etf: load-model: " load-model no_such_model.json --entity "$eid"
expect 2 "priority: expected an integer in -20..19, found '99'" set-priority "$eid" 99
expect 2 "--priority: expected an integer in -20..19, found '99'" create-entity --priority 99
expect 2 "--priority: expected an integer in -20..19" bench resnet18_profile.json --priority 99
expect 2 "--input $tmp/missing.bin: No such file or directory" infer "$mid" --input "$tmp/missing.bin"
printf 'abc' >"$tmp/odd.bin"
expect 2 "the file has 3 bytes" infer "$mid" --input "$tmp/odd.bin"
printf '0123456789ab' >"$tmp/three.bin"
expect 2 "--shape 2,2 is 4 fp32 values, the file holds 3" infer "$mid" --input "$tmp/three.bin" --shape 2,2
expect 2 "--shape: expected" infer "$mid" --input "$tmp/three.bin" --shape 1,,3
expect 2 "--shape needs --input" infer "$mid" --shape 3
# The sim device runs profiles: a tensor for it is the server's to refuse.
expect 1 "INVALID_ARGUMENT" infer "$mid" --input "$tmp/three.bin" --shape 3
expect 2 "--output $tmp/no/dir/out.bin" infer "$mid" --output "$tmp/no/dir/out.bin"
expect 2 "EID: expected an id" set-priority abc 0
expect 2 "MID: expected an id" infer -1
expect 2 "--entity EID is required" load-model resnet18_profile.json
expect 2 "--batch: expected an integer in 1..65536" load-model x.json --entity 1 --batch 0
expect 2 "--freq: expected a frequency" load-model x.json --entity 1 --freq fast
expect 2 "--threads: expected an integer in 1..1024" bench x.json --threads 0
expect 2 "--duration: expected seconds" bench x.json --duration -1
expect 2 "--delay: expected seconds" bench x.json --delay nan
expect 2 "--timeout: expected seconds" stats --timeout 0
expect 2 "unknown option '--bogus'" stats --bogus
expect 2 "unexpected argument 'extra'" unload-model 1 extra
expect 2 "missing argument" set-priority 1
expect 2 "--priority given twice" create-entity --priority 1 --priority 2
timeout 10 "$etf" frobnicate >"$tmp/out" 2>"$tmp/err"
[ $? -eq 2 ] && grep -q "unknown command 'frobnicate'" "$tmp/err" || fail "unknown command"
timeout 10 "$etf" stats --server nowhere >"$tmp/out" 2>"$tmp/err"
[ $? -eq 2 ] && grep -q "expected HOST:PORT" "$tmp/err" || fail "bad --server"

# An unreachable server fails at once with UNAVAILABLE, not at the deadline.
start=$(date +%s)
timeout 20 "$etf" stats --server 127.0.0.1:1 >"$tmp/out" 2>"$tmp/err"
status=$?
took=$(($(date +%s) - start))
[ "$status" -eq 1 ] || fail "unreachable server: exit $status, expected 1"
grep -q "UNAVAILABLE" "$tmp/err" || fail "unreachable server: stderr lacks UNAVAILABLE: $(cat "$tmp/err")"
[ "$took" -le 5 ] || fail "unreachable server: took $took s"

# ---- a client killed mid-bench leaves a concurrent one undisturbed

$fg_sig "$etf" bench resnet18_profile.json --threads 2 --duration 8 --server "$server" \
    >"$tmp/a.out" 2>"$tmp/a.err" &
a_pid=$!
$fg_sig "$etf" bench resnet50_profile.json --threads 2 --duration 4 --server "$server" \
    >"$tmp/b.out" 2>"$tmp/b.err" &
b_pid=$!
pids="$pids $a_pid $b_pid"
n=0
while ! grep -q '^Infer finished' "$tmp/a.out" 2>/dev/null && [ "$n" -lt 100 ]; do
    sleep 0.1
    n=$((n + 1))
done
grep -q '^Infer finished' "$tmp/a.out" || fail "bench A never finished a request: $(cat "$tmp/a.err")"
kill -9 "$a_pid"
wait_pid "$a_pid" 10
wait_pid "$b_pid" 30
[ "$status" -eq 0 ] || fail "bench B beside a killed client: exit $status ($(cat "$tmp/b.err"))"
grep -q "p99 latency: [0-9]" "$tmp/b.out" || fail "bench B: no report"
after_kill=$(grep -c '^Infer finished' "$tmp/b.out")
[ "$after_kill" -gt 0 ] || fail "bench B: no request finished"
ok stats
checks=$((checks + 3))

# ---- clean up through the client, then the server exits 0 on SIGINT

ok unload-model "$mid"
ok delete-entity "$eid"
expect 1 "NOT_FOUND" infer "$mid"

kill -INT "$etfd_pid"
wait_pid "$etfd_pid" 20
checks=$((checks + 1))
if [ "$status" -eq 124 ]; then
    fail "etfd still running 20 s after SIGINT"
elif [ "$status" -ne 0 ]; then
    fail "etfd exited $status after SIGINT, expected 0 ($(tail -n 5 "$tmp/etfd.err"))"
fi

passed=$((checks - failures))
[ "$passed" -ge 0 ] || passed=0
echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
