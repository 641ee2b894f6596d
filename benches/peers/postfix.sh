#!/usr/bin/env bash
# Benchmark peer: a private Postfix instance (Debian's postfix package) relaying vmta's workload (a)
# to the sinks of `vmta world`, fed over SMTP by benches/peers/feed (smtp-feed).
#
#   postfix.sh --routes FILE --messages N --feeder PATH [--world-pid PID]
#              [--connections-per-host C] [--feed-connections F] [--addr 127.0.0.90] [--keep-log FILE]
#
# - The instance lives in a temporary directory: its own config_directory (main.cf, master.cf,
#   transport map), queue_directory and data_directory; no chroot; it listens only on --addr (one of
#   127.0.0.90-99) on a free port, sends from that address, delivers nothing locally and relays every
#   domain of the routes file through transport_maps (`smtp:[ip]:port`). Postfix cannot be told to ask
#   a private DNS server (it uses the system resolver), so the MX lookups are replaced by that map.
# - Started before the clock runs; the CPU of the instance (master plus every daemon it spawned,
#   live ones from /proc/PID/stat, exited ones through the master's cutime/cstime) is sampled just
#   before feeding starts and again when the world process (--world-pid, which exits at its N-th
#   message) is gone, or when the queue is empty if no world pid is given.
# - Prints one JSON line: {"system":"postfix","messages","postfix_cpu_s","postfix_cpu_us_per_msg",
#   "seconds" (from the start of feeding to the world's exit or an empty queue), "feed_seconds","feed_cpu_s","feed_msg_per_s","queue_left","cpu_s_by_process"} where the last is
#   the CPU of the daemons alive at the end, per program, since they started. Stops the instance and removes the
#   directory on every exit path (trap). Exit 1 if feeding failed or the wait timed out.
set -euo pipefail

routes="" messages=0 feeder="" world_pid="" per_host=4 feed_conns=10 addr=127.0.0.90 keep_log=""
timeout=600
while [ $# -gt 0 ]; do
    case "$1" in
        --routes) routes=$2; shift 2 ;;
        --messages) messages=$2; shift 2 ;;
        --feeder) feeder=$2; shift 2 ;;
        --world-pid) world_pid=$2; shift 2 ;;
        --connections-per-host) per_host=$2; shift 2 ;;
        --feed-connections) feed_conns=$2; shift 2 ;;
        --addr) addr=$2; shift 2 ;;
        --keep-log) keep_log=$2; shift 2 ;;
        --timeout) timeout=$2; shift 2 ;;
        *) echo "postfix.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "$routes" ] && [ -x "$feeder" ] || {
    echo "usage: postfix.sh --routes FILE --messages N --feeder PATH [--world-pid PID] ..." >&2
    exit 2
}
for n in "$messages" "$per_host" "$feed_conns" "$timeout"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "postfix.sh: counts, connections and timeout must be positive integers, not '$n'" >&2; exit 2; }
done
case "$addr" in 127.0.0.9[0-9]) ;; *) echo "postfix.sh: --addr must be in 127.0.0.90-99" >&2; exit 2 ;; esac
for p in postfix postmap postconf python3; do
    command -v "$p" >/dev/null || { echo "postfix.sh: $p is missing (apt-get install postfix)" >&2; exit 2; }
done
id postfix >/dev/null 2>&1 || { echo "postfix.sh: no postfix user (install Debian's postfix package)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "postfix.sh: Postfix must be started as root" >&2; exit 2; }

dir=$(mktemp -d /tmp/vmta-postfix.XXXXXX)
chmod 755 "$dir"   # the postfix user must reach the queue below it
etc=$dir/etc spool=$dir/spool data=$dir/data
mkdir -p "$etc" "$spool" "$data"
chown postfix "$data"

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -f "$spool/pid/master.pid" ]; then
        local master
        master=$(tr -d ' \n' <"$spool/pid/master.pid")
        postfix -c "$etc" stop >/dev/null 2>&1 || true
        for _ in $(seq 1 100); do
            [ -n "$master" ] && kill -0 "$master" 2>/dev/null || break
            sleep 0.1
        done
        if [ -n "$master" ] && kill -0 "$master" 2>/dev/null; then
            postfix -c "$etc" abort >/dev/null 2>&1 || true
            sleep 0.5
            kill -KILL "$master" 2>/dev/null || true
        fi
    fi
    if [ -n "$keep_log" ] && [ -f "$dir/maillog" ]; then cp "$dir/maillog" "$keep_log"; fi
    rm -rf "$dir"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$(python3 -c "import socket; s=socket.socket(); s.bind(('$addr', 0)); print(s.getsockname()[1])")
hosts=$(awk 'NF==3 {print $2":"$3}' "$routes" | sort -u | wc -l)
procs=$(( hosts * per_host + feed_conns + 50 ))

# Every domain to its sink, like an MX lookup would.
awk 'NF==3 {printf "%s smtp:[%s]:%s\n", $1, $2, $3}' "$routes" >"$etc/transport"

cat >"$etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $spool
data_directory = $data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-vmta-bench
maillog_file = $dir/maillog
maillog_file_prefixes = $dir

# Identity and relaying: accept from loopback, deliver nothing locally, relay by transport_maps.
myhostname = relay.vmta.test
mydomain = vmta.test
myorigin = sender.vmta.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relay_domains =
mynetworks = 127.0.0.0/8
# Only 127.0.0.1 is configured on lo, so Postfix refuses 127.0.0.9x as an interface name; the smtpd
# service in master.cf binds to $addr:$port explicitly instead, and nothing else listens on inet.
inet_interfaces = all
inet_protocols = ipv4
smtp_bind_address = $addr
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions =
smtpd_client_connection_count_limit = 0
smtpd_peername_lookup = no
transport_maps = hash:$etc/transport
default_transport = error:not in the benchmark's transport map
local_transport = error:no local delivery
biff = no

# No DNS and no TLS: the sinks are addressed as [ip]:port and speak plain SMTP, as for vmta.
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtputf8_enable = no

# Throughput: the same connections per MX host as vmta, opened at once (no slow start), kept in the
# connection cache (always, not only when the active queue has a backlog) and reused without a
# count limit; no input throttling; long-lived daemons.
default_destination_concurrency_limit = $per_host
smtp_destination_concurrency_limit = $per_host
initial_destination_concurrency = $per_host
smtp_connection_cache_on_demand = yes
# (relay host names as in the transport map, without [] or port: see postconf(5))
smtp_connection_cache_destinations = $(awk 'NF==3 {print $2}' "$routes" | sort -u | tr '\n' ' ')
smtp_connection_cache_time_limit = 10s
connection_cache_ttl_limit = 10s
smtp_connection_reuse_count_limit = 0
in_flow_delay = 0
max_use = 100000
default_process_limit = $procs
EOF

cat >"$etc/master.cf" <<EOF
# service type  private unpriv  chroot  wakeup  maxproc command
$addr:$port inet n    -       n       -       -       smtpd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF

postmap -c "$etc" "hash:$etc/transport"
if ! postfix -c "$etc" start >"$dir/start.log" 2>&1; then
    echo "postfix.sh: postfix did not start:" >&2
    cat "$dir/start.log" >&2
    [ -f "$dir/maillog" ] && tail -20 "$dir/maillog" >&2
    exit 1
fi
for _ in $(seq 1 100); do
    [ -f "$spool/pid/master.pid" ] && python3 - "$addr" "$port" <<'EOF' 2>/dev/null && break
import socket, sys
socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.2).close()
EOF
    sleep 0.1
done
master=$(tr -d ' \n' <"$spool/pid/master.pid")

# CPU seconds of the instance: the master and its children, live and exited. With --by-process, a
# JSON object of the live processes' CPU since they started, summed per program name.
instance_cpu() {
    python3 - "$master" "${1:-}" <<'EOF'
import json, os, sys
master, by_process = sys.argv[1], sys.argv[2] == "--by-process"
hz = os.sysconf("SC_CLK_TCK")
total, per = 0, {}
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        continue
    comm = s[s.index("(") + 1:s.rindex(")")]
    f = s[s.rindex(")") + 2:].split()  # fields from `state` on: ppid is [1], utime [11]
    if pid == master or f[1] == master:
        # utime, stime, and the children this process has reaped (cutime, cstime)
        total += sum(int(x) for x in f[11:15])
        per[comm] = per.get(comm, 0) + int(f[11]) + int(f[12])
if by_process:
    print(json.dumps({k: round(v / hz, 2) for k, v in sorted(per.items(), key=lambda kv: -kv[1])}))
else:
    print(total / hz)
EOF
}

cpu0=$(instance_cpu)
t0=$(python3 -c 'import time; print(time.monotonic())')
feed_out=$dir/feed.json
feed_rc=0
"$feeder" --server "$addr:$port" --routes "$routes" --messages "$messages" \
    --connections "$feed_conns" >"$feed_out" || feed_rc=$?
if [ $feed_rc -ne 0 ]; then
    echo "postfix.sh: the feeder failed ($feed_rc)" >&2
    cat "$feed_out" >&2 || true
    [ -f "$dir/maillog" ] && grep -E "warning|error|fatal|reject" "$dir/maillog" | tail -10 >&2
    exit 1
fi

queue_files() {
    find "$spool/incoming" "$spool/active" "$spool/deferred" "$spool/maildrop" -type f 2>/dev/null | wc -l
}
deadline=$(( $(date +%s) + timeout ))
waited=0
if [ -n "$world_pid" ]; then
    while kill -0 "$world_pid" 2>/dev/null; do
        [ "$(date +%s)" -lt $deadline ] || { waited=1; break; }
        sleep 0.02
    done
else
    while [ "$(queue_files)" -gt 0 ]; do
        [ "$(date +%s)" -lt $deadline ] || { waited=1; break; }
        sleep 0.02
    done
fi
t1=$(python3 -c 'import time; print(time.monotonic())')
cpu1=$(instance_cpu)
instance_cpu --by-process >"$dir/by_process.json"
left=$(queue_files)
if [ $waited -ne 0 ]; then
    echo "postfix.sh: timeout after ${timeout}s, $left messages still queued" >&2
    grep -E "status=(deferred|bounced)" "$dir/maillog" | tail -5 >&2 || true
fi

python3 - "$messages" "$cpu0" "$cpu1" "$feed_out" "$left" "$per_host" "$dir/by_process.json" "$t0" "$t1" <<'EOF'
import json, sys
n, c0, c1, feed, left, per_host, by_process, t0, t1 = sys.argv[1:10]
n = int(n)
f = json.load(open(feed))
cpu = float(c1) - float(c0)
print(json.dumps({
    "system": "postfix",
    "messages": n,
    "connections_per_host": int(per_host),
    "postfix_cpu_s": round(cpu, 3),
    "postfix_cpu_us_per_msg": round(cpu * 1e6 / n, 1),
    "seconds": round(float(t1) - float(t0), 3),
    "feed_seconds": f["seconds"],
    "feed_msg_per_s": f["msg_per_s"],
    "feed_cpu_s": f["cpu_s"],
    "feed_cpu_us_per_msg": f["cpu_us_per_msg"],
    "queue_left": int(left),
    "cpu_s_by_process": json.load(open(by_process)),
}))
EOF
exit $waited
