#!/usr/bin/env python3
"""Medians of bench/compare.sh results, and Parley's ratio to each peer.

usage: bench/summarize.py RESULTS.jsonl
"""
import json
import statistics
import sys

THROUGHPUT = ("fanout", "rooms")


def load(path):
    runs = {}
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            runs.setdefault((row["bench"], row["server"]), []).append(row["report"])
    return runs


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def cpu_per_delivery(report):
    cpu, delivered = report.get("server_cpu_seconds"), report.get("delivered")
    return cpu * 1e9 / delivered if cpu and delivered else None


def metrics(bench, reports):
    ok = [r for r in reports if r]
    failed = len(reports) - sum(1 for r in ok if r.get("error_count", 1) == 0 and r.get("lost", 0) == 0 and r.get("failed", 0) == 0)
    if bench.startswith(THROUGHPUT):
        return {
            "deliveries/s": median([r["deliveries_per_second"] for r in ok]),
            "p99 ms": median([r["latency_ms"]["p99"] for r in ok]),
            "ping p99 ms": median([(r.get("ping_ms") or {}).get("p99") for r in ok]),
            "server CPU s": median([r.get("server_cpu_seconds") for r in ok]),
            # CPU time per delivery does not move when the host takes the CPU away; deliveries/s does.
            "server CPU ns/delivery": median([cpu_per_delivery(r) for r in ok]),
            "stolen %": median([r.get("steal_percent") for r in ok]),
            "load CPU s": median([r.get("load_cpu_seconds") for r in ok]),
            "lost": sum(r["lost"] for r in ok),
            "failed runs": failed,
        }
    return {
        "register p99 ms": median([r["register_ms"]["p99"] for r in ok]),
        "bytes/conn": median([r.get("server_bytes_per_connection") for r in ok]),
        "refused or failed": sum(r.get("failed", 0) for r in ok),
        "failed runs": failed,
    }


def fmt(value):
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and value >= 1000:
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def main():
    runs = load(sys.argv[1])
    benches = list(dict.fromkeys(b for b, _ in runs))
    servers = list(dict.fromkeys(s for _, s in runs))
    for bench in benches:
        table = {s: metrics(bench, runs[(bench, s)]) for s in servers if (bench, s) in runs}
        columns = list(next(iter(table.values())).keys())
        rounds = max(len(runs[(bench, s)]) for s in table)
        print(f"\n### {bench} ({rounds} rounds)\n")
        print("| server | " + " | ".join(columns) + " |")
        print("|---|" + "---|" * len(columns))
        for server, row in table.items():
            print(f"| {server} | " + " | ".join(fmt(row[c]) for c in columns) + " |")
        key = "deliveries/s" if "deliveries/s" in columns else "register p99 ms"
        parley = table.get("parley", {}).get(key)
        for peer in ("inspircd", "ngircd"):
            theirs = table.get(peer, {}).get(key)
            if parley and theirs:
                ratio = parley / theirs
                what = "deliveries/s" if key == "deliveries/s" else "register p99 (lower is better)"
                print(f"\nParley (IRC door) / {peer}, {what}: {ratio:.2f}x")
                if key == "deliveries/s":
                    ours, peers = (table[s].get("server CPU ns/delivery") for s in ("parley", peer))
                    if ours and peers:
                        print(f"{peer} / Parley, server CPU per delivery: {peers / ours:.2f}x")


if __name__ == "__main__":
    main()
