#!/usr/bin/env bash
# What pipelining and BDAT buy over a real round trip: the same 2 KiB messages to one MX host
# behind a latency proxy (benches/peers/latency-proxy: every chunk held RTT/2 in each direction,
# since this kernel has no netem), at several round trips, with a fixed number of connections.
#
#   benches/wan.sh [--rtt-ms 0,10,50,100] [--messages N] [--peer-messages M] [--connections C]
#                  [--in-flight T] [--only vmta-1,vmta-T,postfix,lettre] [--out DIR] [--timeout S]
#                  [--no-build]
#
# Per round trip, each row against a fresh `vmta world --hosts 1 --domains 1 --expect COUNT` (its
# sink on 127.0.0.11, DNS 127.0.0.10), with the proxy on 127.0.0.61 in front of the sink and
# dnsmasq on 127.0.0.60 answering d0.vmta.test's MX with the proxy's address:
#   vmta-1   vmta bench --workload a, one transaction in flight per connection
#   vmta-T   the same with T transactions in flight (--in-flight, default 8)
#   postfix  benches/peers/postfix.sh (its smtp client, C connections to the host, via transport map)
#   lettre   benches/peers/lettre (pooled SmtpTransport, C connections)
# every one limited to C connections (default 4). The proxy is checked first at each round trip (a
# one-byte ping-pong through it must measure the configured RTT within 5%).
# Prints a table and writes DIR/results.jsonl (one JSON object per system and RTT: system, rtt_ms,
# connections, messages, msg_per_s, msg_per_s_per_conn, msg_per_rtt_per_conn, cpu_us_per_msg,
# connections_opened) and DIR/wan.md; default DIR target/wan. Defaults: 2,000 messages for vmta,
# 400 for the peers (Postfix needs several round trips a message). Every run is bounded in count
# and in time (--timeout per row, default 600 s); loopback only.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
rtts=0,10,50,100 messages=2000 peer_messages=400 conns=4 in_flight=8
only="vmta-1,vmta-T,postfix,lettre" out=$root/target/wan timeout=600 build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --rtt-ms) rtts=$2; shift 2 ;;
        --messages) messages=$2; shift 2 ;;
        --peer-messages) peer_messages=$2; shift 2 ;;
        --connections) conns=$2; shift 2 ;;
        --in-flight) in_flight=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --timeout) timeout=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "wan.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
for n in "$messages" "$peer_messages" "$conns" "$in_flight" "$timeout"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "wan.sh: counts must be positive integers, not '$n'" >&2; exit 2; }
done
[[ "$rtts" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "wan.sh: --rtt-ms takes milliseconds like 0,10,50" >&2; exit 2; }
wants() { case ",$only," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

vmta=$root/target/release/vmta
proxy=$root/benches/peers/latency-proxy/target/release/latency-proxy
lettre=$root/benches/peers/lettre/target/release/lettre-peer
feed=$root/benches/peers/feed/target/release/smtp-feed
if [ $build = 1 ]; then
    echo "== building (release)" >&2
    (cd "$root" && cargo build --release -q -p vmta-cli)
    (cd "$root/benches/peers/latency-proxy" && cargo build --release -q)
    if wants lettre; then (cd "$root/benches/peers/lettre" && cargo build --release -q); fi
    if wants postfix; then (cd "$root/benches/peers/feed" && cargo build --release -q); fi
fi
for b in "$vmta" "$proxy"; do [ -x "$b" ] || { echo "wan.sh: $b is missing (run without --no-build)" >&2; exit 2; }; done
command -v dnsmasq >/dev/null || { echo "wan.sh: dnsmasq is missing (.ci/deps installs it)" >&2; exit 2; }

mkdir -p "$out"
rm -f "$out/results.jsonl" "$out/checks.jsonl"
work=$(mktemp -d /tmp/vmta-wan.XXXXXX)
world_pid="" client_pid="" proxy_pid="" dns_pid=""
stop() { if [ -n "$1" ]; then kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; fi; }
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop "$client_pid"; stop "$proxy_pid"; stop "$world_pid"; stop "$dns_pid"
    rm -rf "$work"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

dns_addr=127.0.0.60 dns_port=5360 proxy_ip=127.0.0.61

# start_world NAME COUNT RTT: a fresh world, the proxy in front of its sink, dnsmasq pointing at it.
start_world() {
    local name=$1 count=$2 rtt=$3
    rm -f "$work/ready.json" "$work/routes"
    "$vmta" world --hosts 1 --domains 1 --expect "$count" --timeout "$timeout" --ready "$work/ready.json" \
        --routes "$work/routes" >"$work/$name.world.json" 2>"$work/$name.world.log" &
    world_pid=$!
    for _ in $(seq 1 200); do
        [ -f "$work/ready.json" ] && break
        kill -0 "$world_pid" 2>/dev/null || { cat "$work/$name.world.log" >&2; return 1; }
        sleep 0.05
    done
    [ -f "$work/ready.json" ] || { echo "wan.sh: vmta world did not start" >&2; return 1; }
    port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["smtp_port"])' "$work/ready.json")
    sink=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["hosts"][0])' "$work/ready.json")
    echo "d0.vmta.test $proxy_ip $port" >"$work/proxy-routes"
    "$proxy" --listen "$proxy_ip:$port" --upstream "$sink:$port" --rtt-ms "$rtt" \
        --duration-s "$((timeout + 60))" >"$work/proxy.out" 2>&1 &
    proxy_pid=$!
    for _ in $(seq 1 100); do grep -q ready "$work/proxy.out" 2>/dev/null && break; sleep 0.05; done
    grep -q ready "$work/proxy.out" || { echo "wan.sh: the proxy did not start: $(cat "$work/proxy.out")" >&2; return 1; }
}

finish_world() {
    local rc=0
    wait "$world_pid" || rc=$?
    world_pid=""
    stop "$proxy_pid"; proxy_pid=""
    return $rc
}

# run NAME RTT COUNT CLIENT...: one row; @DNS@, @PORT@, @PROXY@, @ROUTES@, @WORLD@ are replaced.
run() {
    local name=$1 rtt=$2 count=$3 rc=0 wrc=0 a
    shift 3
    echo "== rtt $rtt ms, $name: $count messages" >&2
    start_world "$name" "$count" "$rtt" || return 1
    local args=()
    for a in "$@"; do
        a=${a//@DNS@/$dns_addr:$dns_port}; a=${a//@PORT@/$port}; a=${a//@PROXY@/$proxy_ip}
        a=${a//@ROUTES@/$work/proxy-routes}; a=${a//@WORLD@/$world_pid}
        args+=("$a")
    done
    timeout --kill-after=10 "$timeout" "${args[@]}" >"$work/$name.client.json" 2>"$work/$name.client.log" &
    client_pid=$!
    wait "$client_pid" || rc=$?
    client_pid=""
    if [ $rc -ne 0 ]; then
        echo "wan.sh: $name client failed ($rc):" >&2
        tail -20 "$work/$name.client.log" >&2
        kill -TERM "$world_pid" 2>/dev/null || true
    fi
    finish_world || wrc=$?
    [ $wrc -ne 0 ] && [ $rc -eq 0 ] && echo "wan.sh: $name: the world did not receive $count messages in ${timeout}s" >&2
    mkdir -p "$out/rtt-$rtt"
    cp "$work/$name.world.json" "$work/$name.client.json" "$work/$name.client.log" "$out/rtt-$rtt/" 2>/dev/null || true
    echo "   world:  $(cat "$work/$name.world.json")" >&2
    [ $rc -eq 0 ] && [ $wrc -eq 0 ]
}

# dnsmasq: d0.vmta.test's MX is the proxy.
cat >"$work/dnsmasq.conf" <<EOF
port=$dns_port
listen-address=$dns_addr
bind-interfaces
no-resolv
no-hosts
no-poll
keep-in-foreground
local=/test/
mx-host=d0.vmta.test,mx.wan.test,10
host-record=mx.wan.test,$proxy_ip
pid-file=$work/dnsmasq.pid
user=root
EOF
dnsmasq -C "$work/dnsmasq.conf" >"$work/dnsmasq.log" 2>&1 &
dns_pid=$!
sleep 0.3
kill -0 "$dns_pid" 2>/dev/null || { echo "wan.sh: dnsmasq did not start: $(cat "$work/dnsmasq.log")" >&2; exit 1; }

failed=0
rows=()
IFS=, read -ra rtt_list <<<"$rtts"
for rtt in "${rtt_list[@]}"; do
    if ! "$proxy" --check --rtt-ms "$rtt" --rounds 40 >>"$out/checks.jsonl"; then
        echo "wan.sh: the proxy misses its RTT of $rtt ms: $(tail -1 "$out/checks.jsonl")" >&2
        failed=1
        continue
    fi
    echo "== proxy check: $(tail -1 "$out/checks.jsonl")" >&2
    for t in 1 "$in_flight"; do
        sys=vmta-$t; [ "$t" = 1 ] || sys=vmta-T
        wants "$sys" || continue
        [ "$sys" = vmta-T ] && [ "$in_flight" = 1 ] && continue
        if run "vmta-$t" "$rtt" "$messages" "$vmta" bench --workload a --messages "$messages" --dns @DNS@ \
            --port @PORT@ --hosts @PROXY@ --domains 1 --connections-per-host "$conns" \
            --transactions-in-flight "$t" --json; then rows+=("$rtt:vmta-$t"); else failed=1; fi
    done
    if wants lettre && [ -x "$lettre" ]; then
        if run lettre "$rtt" "$peer_messages" "$lettre" --routes @ROUTES@ --messages "$peer_messages" \
            --connections-per-host "$conns"; then rows+=("$rtt:lettre"); else failed=1; fi
    fi
    if wants postfix && [ -x "$feed" ]; then
        if run postfix "$rtt" "$peer_messages" "$root/benches/peers/postfix.sh" --routes @ROUTES@ \
            --messages "$peer_messages" --feeder "$feed" --world-pid @WORLD@ --connections-per-host "$conns" \
            --timeout "$timeout"; then rows+=("$rtt:postfix"); else failed=1; fi
    fi
done
python3 "$root/benches/wan.py" --dir "$out" --connections "$conns" "${rows[@]}"
exit $failed
