#!/usr/bin/env python3
"""The table of benches/compare.sh: reads DIR/<system>.world.json (what the sinks saw) and
DIR/<system>.client.json (the client's own JSON line) for each system named on the command line,
prints the table and the ratios, and writes DIR/compare.json and DIR/compare.md.

Rates come from the world for every row (first accepted connection to the last expected message), so
all systems are timed by the same clock on the receiving side. Client CPU: `cpu_s` of `vmta bench`
and of the lettre peer, `postfix_cpu_s` of the Postfix instance (its feeder is listed apart).
"""

import argparse
import json
import os
import sys

GOALS = {  # workload (a) on this machine
    "vmta_over_postfix": 20.0,
    "vmta_pct_of_blast": 80.0,
    "vmta_cpu_us_per_msg": 10.0,
    # At the engine's and the bench's default settings, against the blast in the same run:
    "vmta_pct_of_blast_defaults": 65.0,
    "vmta_cpu_over_blast": 2.0,
}


def last_json_line(path):
    with open(path) as f:
        lines = [l for l in f.read().splitlines() if l.strip().startswith("{")]
    if not lines:
        raise ValueError(f"no JSON line in {path}")
    return json.loads(lines[-1])


def row(directory, system):
    world = last_json_line(os.path.join(directory, f"{system}.world.json"))
    client = last_json_line(os.path.join(directory, f"{system}.client.json"))
    n = world["received"]
    seconds = world["seconds"]
    if system == "postfix":
        cpu = client["postfix_cpu_s"]
        note = (
            f"feeder {client['feed_cpu_us_per_msg']:.1f} µs/msg apart; "
            f"{client['connections_per_host']} conns/host"
        )
    else:
        cpu = client["cpu_s"]
        note = ""
        if system in ("vmta", "blast"):
            bits = []
            for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
                if client.get(key):
                    bits.append(f"{label} {client[key]} ms")
            if client.get("peak_rss_mb"):
                bits.append(f"peak RSS {client['peak_rss_mb']} MB")
            note = ", ".join(bits)
        elif system == "lettre":
            note = f"{client.get('mode', '')} mode"
    return {
        "system": system,
        "messages": n,
        "seconds": seconds,
        "msg_per_s": n / seconds if seconds > 0 else 0.0,
        "connections": world["connections"],
        "client_cpu_s": cpu,
        "client_cpu_us_per_msg": cpu * 1e6 / n if n else 0.0,
        "note": note,
        "world": world,
        "client": client,
    }


def ratios(rows):
    by = {r["system"]: r for r in rows}
    out = {}
    v = by.get("vmta")
    if v is None:
        return out
    if "postfix" in by and by["postfix"]["msg_per_s"] > 0:
        out["vmta_over_postfix"] = v["msg_per_s"] / by["postfix"]["msg_per_s"]
        out["postfix_cpu_over_vmta"] = (
            by["postfix"]["client_cpu_us_per_msg"] / v["client_cpu_us_per_msg"]
            if v["client_cpu_us_per_msg"] > 0
            else None
        )
    if "blast" in by and by["blast"]["msg_per_s"] > 0:
        out["vmta_pct_of_blast"] = 100.0 * v["msg_per_s"] / by["blast"]["msg_per_s"]
        if by["blast"]["client_cpu_us_per_msg"] > 0:
            out["vmta_cpu_over_blast"] = v["client_cpu_us_per_msg"] / by["blast"]["client_cpu_us_per_msg"]
    if "lettre" in by and by["lettre"]["msg_per_s"] > 0:
        out["vmta_over_lettre"] = v["msg_per_s"] / by["lettre"]["msg_per_s"]
    out["vmta_cpu_us_per_msg"] = v["client_cpu_us_per_msg"]
    return out


def table(rows):
    head = ["system", "messages", "seconds", "msg/s", "connections", "client CPU s", "client CPU µs/msg", "note"]
    body = [
        [
            r["system"],
            f"{r['messages']:,}",
            f"{r['seconds']:.2f}",
            f"{r['msg_per_s']:,.0f}",
            str(r["connections"]),
            f"{r['client_cpu_s']:.2f}",
            f"{r['client_cpu_us_per_msg']:.1f}",
            r["note"],
        ]
        for r in rows
    ]
    return head, body


def ratio_lines(rt):
    lines = []
    if "vmta_over_postfix" in rt:
        goal = GOALS["vmta_over_postfix"]
        ok = "met" if rt["vmta_over_postfix"] >= goal else "NOT met"
        lines.append(f"vmta / Postfix msg/s: {rt['vmta_over_postfix']:.1f}x (goal >= {goal:.0f}x: {ok})")
        if rt.get("postfix_cpu_over_vmta"):
            lines.append(f"Postfix CPU per message / vmta's: {rt['postfix_cpu_over_vmta']:.1f}x")
    if "vmta_pct_of_blast" in rt:
        goal = GOALS["vmta_pct_of_blast"]
        ok = "met" if rt["vmta_pct_of_blast"] >= goal else "NOT met"
        d = GOALS["vmta_pct_of_blast_defaults"]
        ok_d = "met" if rt["vmta_pct_of_blast"] >= d else "NOT met"
        lines.append(
            f"vmta as % of blast: {rt['vmta_pct_of_blast']:.0f}% (goal >= {goal:.0f}%: {ok}; "
            f"at the default settings >= {d:.0f}%: {ok_d})"
        )
    if "vmta_cpu_over_blast" in rt:
        goal = GOALS["vmta_cpu_over_blast"]
        ok = "met" if rt["vmta_cpu_over_blast"] <= goal else "NOT met"
        lines.append(f"vmta client CPU per message / blast's: {rt['vmta_cpu_over_blast']:.2f}x (goal <= {goal:.0f}x: {ok})")
    if "vmta_over_lettre" in rt:
        lines.append(f"vmta / lettre msg/s: {rt['vmta_over_lettre']:.1f}x")
    if "vmta_cpu_us_per_msg" in rt:
        goal = GOALS["vmta_cpu_us_per_msg"]
        ok = "met" if rt["vmta_cpu_us_per_msg"] <= goal else "NOT met"
        lines.append(f"vmta client CPU: {rt['vmta_cpu_us_per_msg']:.1f} µs/msg (goal <= {goal:.0f}: {ok})")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--machine", default="")
    ap.add_argument("--per-host", default="")
    ap.add_argument("systems", nargs="*")
    a = ap.parse_args()
    rows = []
    for s in a.systems:
        try:
            rows.append(row(a.dir, s))
        except (OSError, ValueError, KeyError) as e:
            print(f"compare.py: no row for {s}: {e}", file=sys.stderr)
    if not rows:
        print("compare.py: no results", file=sys.stderr)
        return 1
    rt = ratios(rows)
    head, body = table(rows)
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for b in body:
        print("  ".join(c.ljust(w) for c, w in zip(b, widths)))
    print()
    for l in ratio_lines(rt):
        print(l)
    md = [
        f"Workload (a): 2 KiB, 1 recipient, 1,000 domains over 10 MX hosts. Machine: {a.machine}. "
        f"Peers at {a.per_host} connections per MX host.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    md += ["| " + " | ".join(b) + " |" for b in body]
    md += [""] + [f"- {l}" for l in ratio_lines(rt)]
    with open(os.path.join(a.dir, "compare.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(a.dir, "compare.json"), "w") as f:
        json.dump({"machine": a.machine, "per_host": a.per_host, "rows": rows, "ratios": rt}, f, indent=1)
    print(f"\n(written: {os.path.join(a.dir, 'compare.md')}, compare.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
