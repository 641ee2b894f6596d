#!/usr/bin/env bash
# vmta beside its peers on workload (a): 2 KiB messages, one recipient each, 1,000 domains over 10 MX
# hosts (sinks of `vmta world` on 127.0.0.11-20, DNS on 127.0.0.10), in one run and one table.
#
#   benches/compare.sh [--quick] [--messages N] [--postfix-messages M] [--connections-per-host C]
#                      [--transactions-in-flight T] [--only vmta,blast,lettre,postfix] [--out DIR]
#                      [--timeout S] [--no-build]
#
# Rows (each against a fresh `vmta world --expect COUNT`, which reports the receivers' view: seconds
# from the first accepted connection to the COUNT-th message, and connections opened):
#   vmta     vmta bench --workload a --messages N --dns .. --port .. --hosts .. --json
#   blast    the same with --blast (the ceiling: pipelined bytes, no queue)
#   (both with --transactions-in-flight T when given; by default vmta runs at the engine's default,
#   up to 8 behind each other per connection and adaptive, and the blast sends one at a time)
#   lettre   benches/peers/lettre (pooled SmtpTransport, C connections per host)
#   postfix  benches/peers/postfix.sh (private Postfix relay, C connections per host, fed by smtp-feed)
# Client CPU: the `vmta bench` process, the lettre process, the Postfix instance's daemons (the
# feeder's CPU is reported beside it, not added). Connections per host for the peers: --connections-
# per-host, else what vmta opened per host in its row, else 4.
#
# Writes DIR/compare.json (all raw reports) and DIR/compare.md (the table for BENCHMARKS.md), default
# DIR target/compare. --quick: 5,000 messages (1,000 for Postfix), for a check by hand in about a
# minute once built. Every run is bounded in count and in time (--timeout per run, default 600 s).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
messages=200000 postfix_messages=20000 per_host="" only="vmta,blast,lettre,postfix" in_flight=""
out=$root/target/compare timeout=600 build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) messages=5000 postfix_messages=1000 timeout=120; shift ;;
        --messages) messages=$2; shift 2 ;;
        --postfix-messages) postfix_messages=$2; shift 2 ;;
        --connections-per-host) per_host=$2; shift 2 ;;
        --transactions-in-flight) in_flight=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --timeout) timeout=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
for n in "$messages" "$postfix_messages" "$timeout" ${in_flight:+"$in_flight"} ${per_host:+"$per_host"}; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: counts, timeouts and connections must be positive integers, not '$n'" >&2; exit 2; }
done
wants() { case ",$only," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

vmta=$root/target/release/vmta
lettre=$root/benches/peers/lettre/target/release/lettre-peer
feed=$root/benches/peers/feed/target/release/smtp-feed
if [ $build = 1 ]; then
    echo "== building (release)" >&2
    (cd "$root" && cargo build --release -q -p vmta-cli)
    if wants lettre; then (cd "$root/benches/peers/lettre" && cargo build --release -q); fi
    if wants postfix; then (cd "$root/benches/peers/feed" && cargo build --release -q); fi
fi
[ -x "$vmta" ] || { echo "compare.sh: $vmta is missing (run without --no-build)" >&2; exit 2; }

mkdir -p "$out"
work=$(mktemp -d /tmp/vmta-compare.XXXXXX)
world_pid="" client_pid=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # `timeout` passes the signal on to the client (postfix.sh then stops its instance).
    if [ -n "$client_pid" ]; then kill -TERM "$client_pid" 2>/dev/null || true; wait "$client_pid" 2>/dev/null || true; fi
    if [ -n "$world_pid" ]; then kill -TERM "$world_pid" 2>/dev/null || true; wait "$world_pid" 2>/dev/null || true; fi
    rm -rf "$work"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_world NAME COUNT: a fresh world expecting COUNT messages; sets world_pid, dns, port, hosts.
start_world() {
    local name=$1 count=$2
    rm -f "$work/ready.json" "$work/routes"
    "$vmta" world --expect "$count" --timeout "$timeout" --ready "$work/ready.json" \
        --routes "$work/routes" >"$work/$name.world.json" 2>"$work/$name.world.log" &
    world_pid=$!
    for _ in $(seq 1 200); do
        [ -f "$work/ready.json" ] && break
        kill -0 "$world_pid" 2>/dev/null || { cat "$work/$name.world.log" >&2; return 1; }
        sleep 0.05
    done
    [ -f "$work/ready.json" ] || { echo "compare.sh: vmta world did not start" >&2; return 1; }
    dns=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["dns"])' "$work/ready.json")
    port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["smtp_port"])' "$work/ready.json")
    hosts=$(python3 -c 'import json,sys; print(",".join(json.load(open(sys.argv[1]))["hosts"]))' "$work/ready.json")
}

# finish_world NAME: waits for the world's report; returns its exit status.
finish_world() {
    local rc=0
    wait "$world_pid" || rc=$?
    world_pid=""
    return $rc
}

# run NAME COUNT CLIENT...: one row. @DNS@, @PORT@, @HOSTS@, @ROUTES@ and @WORLD@ in the client's
# arguments become the fresh world's addresses, routes file and pid. The client's stdout (its JSON
# line) goes to NAME.client.json.
run() {
    local name=$1 count=$2 rc=0 wrc=0 a
    shift 2
    echo "== $name: $count messages" >&2
    start_world "$name" "$count" || return 1
    local args=()
    for a in "$@"; do
        a=${a//@DNS@/$dns}; a=${a//@PORT@/$port}; a=${a//@HOSTS@/$hosts}
        a=${a//@ROUTES@/$work/routes}; a=${a//@WORLD@/$world_pid}
        args+=("$a")
    done
    # In the background so that a signal to this script is handled at once (bash runs traps only
    # between foreground commands).
    timeout --kill-after=10 "$timeout" "${args[@]}" >"$work/$name.client.json" 2>"$work/$name.client.log" &
    client_pid=$!
    wait "$client_pid" || rc=$?
    client_pid=""
    if [ $rc -ne 0 ]; then
        echo "compare.sh: $name client failed ($rc):" >&2
        tail -20 "$work/$name.client.log" >&2
        kill -TERM "$world_pid" 2>/dev/null || true
    fi
    finish_world || wrc=$?
    if [ $wrc -ne 0 ] && [ $rc -eq 0 ]; then
        echo "compare.sh: $name: the world did not receive $count messages in ${timeout}s" >&2
    fi
    cp "$work/$name.world.json" "$work/$name.client.json" "$work/$name.client.log" "$out/" 2>/dev/null || true
    echo "   world:  $(cat "$work/$name.world.json")" >&2
    echo "   client: $(tail -1 "$work/$name.client.json")" >&2
    [ $rc -eq 0 ] && [ $wrc -eq 0 ]
}

has_bench=0
if "$vmta" bench --help >/dev/null 2>&1; then has_bench=1; fi
rows=()
failed=0
for system in vmta blast; do
    wants $system || continue
    if [ $has_bench = 0 ]; then
        echo "== $system: skipped, this vmta has no 'bench' command" >&2
        continue
    fi
    extra=(${in_flight:+--transactions-in-flight "$in_flight"})
    [ $system = blast ] && extra+=(--blast)
    if run $system "$messages" "$vmta" bench --workload a --messages "$messages" \
        --dns @DNS@ --port @PORT@ --hosts @HOSTS@ --json "${extra[@]}"; then rows+=($system); else failed=1; fi
done
if [ -z "$per_host" ]; then
    per_host=4
    if [ -f "$out/vmta.world.json" ] && [[ " ${rows[*]} " == *" vmta "* ]]; then
        per_host=$(python3 -c 'import json,sys,math; k=json.load(open(sys.argv[1]))["connections"]; print(max(1, math.ceil(k/10)))' "$out/vmta.world.json")
    fi
fi
echo "== peers use $per_host connections per MX host" >&2
if wants lettre; then
    if run lettre "$messages" "$lettre" --routes @ROUTES@ --messages "$messages" --connections-per-host "$per_host"; then
        rows+=(lettre)
    else failed=1; fi
fi
if wants postfix; then
    if run postfix "$postfix_messages" "$root/benches/peers/postfix.sh" --routes @ROUTES@ --messages "$postfix_messages" \
        --feeder "$feed" --world-pid @WORLD@ --connections-per-host "$per_host" --timeout "$timeout"; then
        rows+=(postfix)
    else failed=1; fi
fi

python3 "$root/benches/compare.py" --dir "$out" --per-host "$per_host" \
    --machine "$(nproc) cores, $(uname -sr), sinks on the same machine" "${rows[@]}"
exit $failed
