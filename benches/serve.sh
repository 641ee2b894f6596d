#!/usr/bin/env bash
# `vmta serve` against Postfix relaying, in one run on one box, both fed the same way (by Postfix's
# smtp-source unless --feeder says otherwise) and both delivering to the same sinks (`vmta world`).
#
#   benches/serve.sh [--messages N] [--postfix-messages M] [--connections C] [--intake-threads I]
#                    [--shards S] [--feeder smtp-source|smtp-feed] [--submission] [--out DIR]
#                    [--http] [--http-connections H] [--batch B] [--no-build]
#
# Rows (each against a fresh `vmta world --expect COUNT`):
#   vmta-serve  smtp-source (C sessions, 2 KiB; it sends MAIL, RCPT, DATA and the body each after the
#               previous reply: four round trips per message) → vmta serve (durable spool: fdatasync,
#               group commit; `250` only once durable) → MX delivery to the world's sinks
#   vmta-api    vmta bench --workload a: the same engine fed through its API (what the C ABI wraps)
#   vmta-api-each  the same with C submitter threads, one message per call (each waits for its
#               message to be durable, as an SMTP client for its 250)
#   postfix     smtp-source → a private Postfix relay (benches/peers/postfix.sh) → the same sinks
# msg/s is end to end: from the first message fed to the COUNT-th message at the sinks. CPU per
# message: the vmta serve process, the vmta bench process (its engine), the Postfix instance's
# daemons; the feeder's CPU is reported beside it, not added. Every run is bounded in count and time.
# --feeder smtp-feed feeds both relays with benches/peers/feed instead (PIPELINING: the body, its dot and
# the next MAIL, RCPT and DATA in one write, one round trip per message).
# --submission (with --feeder smtp-feed): vmta serve listens as a submission server and each feeder
# session says STARTTLS (TLS 1.3, a certificate from examples/serve/make-cert.sh) and logs in with
# AUTH PLAIN before its messages; the Postfix row stays plain (the cost of TLS and AUTH is read
# against a plain run of the same script).
# --http adds a row first: vmta-http, the same daemon fed through its HTTP API by
# benches/peers/feed's http-feed (H keep-alive connections, default 8, each POSTing batches of B
# messages, default 100, to /api/v1/messages and waiting for the 202: durable).
# Writes DIR/serve.json and DIR/serve.md (default target/serve-bench).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
messages=100000 postfix_messages=10000 conns=20 intake=2 shards=0 feeder=smtp-source submission=0 out=$root/target/serve-bench build=1 timeout=600
http=0 http_conns=8 batch=100
while [ $# -gt 0 ]; do
    case "$1" in
        --messages) messages=$2; shift 2 ;;
        --postfix-messages) postfix_messages=$2; shift 2 ;;
        --connections) conns=$2; shift 2 ;;
        --intake-threads) intake=$2; shift 2 ;;
        --shards) shards=$2; shift 2 ;;
        --feeder) feeder=$2; shift 2 ;;
        --submission) submission=1; shift ;;
        --out) out=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        --http) http=1; shift ;;
        --http-connections) http_conns=$2; shift 2 ;;
        --batch) batch=$2; shift 2 ;;
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
        *) echo "serve.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
for n in "$messages" "$postfix_messages" "$conns" "$http_conns" "$batch"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "serve.sh: counts must be positive integers, not '$n'" >&2; exit 2; }
done
vmta=$root/target/release/vmta
case "$feeder" in
    smtp-source) feed=$root/benches/peers/smtp-source-feed.py ;;
    smtp-feed) feed=$root/benches/peers/feed/target/release/smtp-feed
        [ $build = 1 ] && (cd "$root/benches/peers/feed" && cargo build --release -q) ;;
    *) echo "serve.sh: --feeder is smtp-source or smtp-feed" >&2; exit 2 ;;
esac
[ $build = 1 ] && (cd "$root" && cargo build --release -q -p vmta-cli)
http_feed=$root/benches/peers/feed/target/release/http-feed
if [ $http = 1 ] && [ $build = 1 ]; then (cd "$root/benches/peers/feed" && cargo build --release -q); fi
if [ $submission = 1 ] && [ "$feeder" != smtp-feed ]; then
    echo "serve.sh: --submission needs --feeder smtp-feed (smtp-source speaks no TLS)" >&2; exit 2
fi
mkdir -p "$out"
work=$(mktemp -d /tmp/vmta-serve-bench.XXXXXX)
world_pid="" serve_pid=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "$serve_pid" ] && { kill -TERM "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; }
    [ -n "$world_pid" ] && { kill -TERM "$world_pid" 2>/dev/null || true; wait "$world_pid" 2>/dev/null || true; }
    rm -rf "$work"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_world() {
    rm -f "$work/ready.json" "$work/routes"
    "$vmta" world --expect "$2" --timeout "$timeout" --ready "$work/ready.json" \
        --routes "$work/routes" >"$work/$1.world.json" 2>"$work/$1.world.log" &
    world_pid=$!
    for _ in $(seq 1 200); do [ -f "$work/ready.json" ] && break; sleep 0.05; done
    [ -f "$work/ready.json" ] || { echo "serve.sh: vmta world did not start" >&2; exit 1; }
    dns=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["dns"])' "$work/ready.json")
    port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["smtp_port"])' "$work/ready.json")
    hosts=$(python3 -c 'import json,sys; print(",".join(json.load(open(sys.argv[1]))["hosts"]))' "$work/ready.json")
}
now() { python3 -c 'import time; print(time.monotonic())'; }
# CPU seconds (user + system) of a process and its reaped children.
cpu_of() { python3 -c '
import os, sys
f = open("/proc/%s/stat" % sys.argv[1]).read()
f = f[f.rindex(")") + 2:].split()
print(sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK"))' "$1"; }

# vmta serve, fed over SMTP (row vmta-serve) or HTTP (row vmta-http).
serve_row() {
local row=$1
echo "== $row: $messages messages" >&2
rm -rf "$work/spool"
start_world "$row" "$messages"
hport=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.9', 0)); print(s.getsockname()[1])")
token=$("$vmta" token --name bench | head -1)
sport=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.9', 0)); print(s.getsockname()[1])")
cat >"$work/vmta.toml" <<EOF
[engine]
spool_dir = "$work/spool"
helo_name = "serve.vmta.test"
durability = "sync"
shards = $shards
[dns]
nameservers = ["$dns"]
[delivery]
port = $port
[shaping]
rules = '''
[defaults]
max_connections = 0
connection_rate = "unlimited"
max_messages_per_connection = 0
message_rate = "unlimited"
'''
[serve]
event_log = ""
intake_threads = $intake
[[listener]]
address = "127.0.0.9:$sport"
role = "relay"
allowed_networks = ["127.0.0.0/8"]
max_connections_per_client = 1000
[http]
address = "127.0.0.9:$hport"
EOF
echo "$token" | "$vmta" token --stdin --name bench | tail -n +2 >>"$work/vmta.toml"
feed_extra=()
if [ $submission = 1 ]; then
    "$root/examples/serve/make-cert.sh" "$work" >/dev/null
    hash=$(echo bench-password | "$vmta" passwd --stdin)
    sed -i 's/^role = "relay"$/role = "submission"\ntls_cert = "localhost.crt"\ntls_key = "localhost.key"/' "$work/vmta.toml"
    cat >>"$work/vmta.toml" <<EOF
[[tenant]]
name = "bench"
pool = "default"
sender_domains = ["sender.vmta.test"]
[[user]]
name = "bench"
password = "$hash"
tenant = "bench"
EOF
    feed_extra=(--tls "$work/localhost.crt" --auth bench:bench-password)
fi
"$vmta" serve --config "$work/vmta.toml" --ready-file "$work/serve.ready" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 1 200); do [ -f "$work/serve.ready" ] && break; sleep 0.05; done
[ -f "$work/serve.ready" ] || { cat "$work/serve.log" >&2; exit 1; }
c0=$(cpu_of "$serve_pid"); t0=$(now)
if [ "$row" = vmta-http ]; then
    "$http_feed" --server "127.0.0.9:$hport" --token "$token" --routes "$work/routes" --messages "$messages" \
        --connections "$http_conns" --batch "$batch" >"$work/$row.feed.json"
else
    "$feed" --server "127.0.0.9:$sport" --routes "$work/routes" --messages "$messages" --connections "$conns" "${feed_extra[@]}" >"$work/$row.feed.json"
fi
wait "$world_pid"; world_pid=""
t1=$(now); c1=$(cpu_of "$serve_pid")
# CPU seconds per thread kind (listener, intake, shard, commit, events...) since the start.
python3 -c '
import collections, json, os, re, sys
hz = os.sysconf("SC_CLK_TCK"); per = collections.Counter()
for t in os.listdir("/proc/%s/task" % sys.argv[1]):
    s = open("/proc/%s/task/%s/stat" % (sys.argv[1], t)).read()
    comm = re.sub(r"-[0-9]+$", "", s[s.index("(") + 1:s.rindex(")")])
    f = s[s.rindex(")") + 2:].split()
    per[comm] += (int(f[11]) + int(f[12])) / hz
print(json.dumps({k: round(v, 2) for k, v in per.most_common()}))' "$serve_pid" >"$work/$row.threads.json"
kill -TERM "$serve_pid"; wait "$serve_pid" || true; serve_pid=""
python3 - "$row" "$messages" "$t0" "$t1" "$c0" "$c1" "$work/$row.feed.json" "$work/$row.world.json" "$work/$row.threads.json" >"$work/$row.json" <<'EOF'
import json, sys
row, n, t0, t1, c0, c1, feed, world, threads = sys.argv[1:]
n = int(n); s = float(t1) - float(t0); cpu = float(c1) - float(c0)
print(json.dumps({"system": row, "messages": n, "seconds": round(s, 3),
    "msg_per_s": round(n / s), "cpu_s": round(cpu, 3), "cpu_us_per_msg": round(cpu * 1e6 / n, 1),
    "feed": json.load(open(feed)), "world": json.load(open(world)),
    "cpu_s_by_thread": json.load(open(threads))}))
EOF
echo "   $(cat "$work/$row.json")" >&2
}
[ $http = 1 ] && serve_row vmta-http
serve_row vmta-serve

# Row 2: the same engine through its API, in bulk (vmta-api: 2 submitters, 64 messages per call, so
# one group commit covers hundreds) and one message per call from as many submitters as there are
# SMTP sessions (vmta-api-each: each waits for its message to be durable, as an SMTP client waits for
# its 250, so group commits are as small as vmta serve's).
api_row() {
local row=$1; shift
echo "== $row: $messages messages" >&2
start_world "$row" "$messages"
"$vmta" bench --workload a --messages "$messages" --dns "$dns" --port "$port" --hosts "$hosts" --json "$@" >"$work/$row.bench.json"
wait "$world_pid"; world_pid=""
python3 - "$row" "$work/$row.bench.json" "$work/$row.world.json" >"$work/$row.json" <<'EOF'
import json, sys
b = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
print(json.dumps({"system": sys.argv[1], "messages": b["messages"], "seconds": b["seconds"],
    "msg_per_s": b["msg_per_s"], "cpu_s": b["cpu_s"], "cpu_us_per_msg": b["cpu_us_per_msg"],
    "world": json.load(open(sys.argv[3]))}))
EOF
echo "   $(cat "$work/$row.json")" >&2
}
api_row vmta-api
api_row vmta-api-each --submitters "$conns" --batch 1

# Row 3: Postfix relaying.
echo "== postfix: $postfix_messages messages" >&2
start_world postfix "$postfix_messages"
"$root/benches/peers/postfix.sh" --routes "$work/routes" --messages "$postfix_messages" --feeder "$feed" \
    --world-pid "$world_pid" --feed-connections "$conns" --timeout "$timeout" >"$work/postfix.peer.json"
wait "$world_pid" || true; world_pid=""
# Timed by postfix.sh from the start of feeding (its instance is started before the clock runs, as
# vmta serve is), to the world's N-th message.
python3 - "$postfix_messages" "$work/postfix.peer.json" "$work/postfix.world.json" >"$work/postfix.json" <<'EOF'
import json, sys
n, peer, world = sys.argv[1:]
n = int(n); p = json.loads(open(peer).read().strip().splitlines()[-1]); s = p["seconds"]
print(json.dumps({"system": "postfix", "messages": n, "seconds": round(s, 3), "msg_per_s": round(n / s),
    "cpu_s": p["postfix_cpu_s"], "cpu_us_per_msg": p["postfix_cpu_us_per_msg"],
    "feed_msg_per_s": p["feed_msg_per_s"], "world": json.load(open(world))}))
EOF
echo "   $(cat "$work/postfix.json")" >&2

python3 - "$work" "$out" <<'EOF'
import json, sys
work, out = sys.argv[1:]
import os
rows = {s: json.load(open(f"{work}/{s}.json")) for s in ("vmta-http", "vmta-serve", "vmta-api", "vmta-api-each", "postfix")
        if os.path.exists(f"{work}/{s}.json")}
json.dump(rows, open(f"{out}/serve.json", "w"), indent=1)
pf, sv, api = rows["postfix"], rows["vmta-serve"], rows["vmta-api"]
lines = ["| system | messages | msg/s end to end | CPU µs/msg | msg/s vs Postfix | CPU/msg vs Postfix |",
         "|---|---|---|---|---|---|"]
for r in [rows[k] for k in ("vmta-http", "vmta-serve", "vmta-api", "vmta-api-each", "postfix") if k in rows]:
    lines.append(f"| {r['system']} | {r['messages']:,} | {r['msg_per_s']:,} | {r['cpu_us_per_msg']:,} | "
                 f"{r['msg_per_s'] / pf['msg_per_s']:.1f}× | 1/{pf['cpu_us_per_msg'] / r['cpu_us_per_msg']:.0f} |")
lines.append("")
each = rows["vmta-api-each"]
lines.append(f"vmta serve's CPU per message is {sv['cpu_us_per_msg'] / api['cpu_us_per_msg']:.2f}× the API path's in bulk "
             f"and {sv['cpu_us_per_msg'] / each['cpu_us_per_msg']:.2f}× its one message per call from as many submitters "
             f"as sessions; the feeder ({sv['feed']['system']}) fed vmta serve at {sv['feed']['msg_per_s']:,} msg/s.")
if "vmta-http" in rows:
    h = rows["vmta-http"]
    lines.append(f"The HTTP path's CPU per message is {h['cpu_us_per_msg'] / api['cpu_us_per_msg']:.2f}× the API path's "
                 f"and {h['cpu_us_per_msg'] / sv['cpu_us_per_msg']:.2f}× the SMTP path's; http-feed sent "
                 f"{h['feed']['requests']:,} requests ({h['feed']['retries']} retried) at {h['feed']['msg_per_s']:,} msg/s.")
open(f"{out}/serve.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
