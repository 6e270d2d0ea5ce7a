"""The benchmark suite: every graph in bench/graphs/ (InfiniteSource-fed),
measured in one run, written as one JSON and a bar chart.

    python bench/suite.py [--packets 5000000] [--repeat 5] [--only nat]

For each graph: median Mpps and ns/packet over `repeat` fresh engines
(each warmed up first), the spread, and, where `perf stat` works on this
machine, cycles and instructions per packet. Graphs with a Python element
get fewer packets (they run about 50x slower). Results:
bench/results/suite.json and bench/results/suite.png; bench/README.md
holds the latest table.
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

from middlebox import loader, plan
from middlebox.runtime import Engine

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"

# Click 2.1 userlevel on this machine kind (issue #5), for the ratio column.
CLICK = {
    "classifier-bench": 12.3,
    "ip-path-bench": 10.4,
    "nat-1k-bench": 4.4,
    "nat-churn-bench": 3.0,
    "lb-1k-bench": 4.4,
}


def has_python_element(graph):
    return any(e.kernel == "python" for e in graph.elements.values())


def measure(path, packets, repeat):
    g = loader.load(str(path))
    if has_python_element(g):
        packets = max(packets // 50, 20_000)
    rates = []
    for _ in range(repeat):
        eng = Engine(plan.build(g))
        eng.run_sources(min(packets // 10, 200_000))
        made, secs = eng.run_sources(packets)
        rates.append(made / secs)
    mpps = statistics.median(rates) / 1e6
    row = {"graph": g.name, "file": str(path.relative_to(HERE.parent)), "packets": packets,
           "repeat": repeat, "mpps": round(mpps, 3), "ns_per_packet": round(1e3 / mpps, 2),
           "mpps_min": round(min(rates) / 1e6, 3), "mpps_max": round(max(rates) / 1e6, 3),
           "python_element": has_python_element(g)}
    row.update(perf_counters(path, packets))
    if g.name in CLICK:
        row["click_mpps"] = CLICK[g.name]
        row["vs_click"] = round(mpps / CLICK[g.name], 2)
    return row


def perf_counters(path, packets):
    """Cycles and instructions per packet from `perf stat`, if it works here."""
    probe = subprocess.run(["perf", "stat", "-x,", "-e", "instructions", "true"],
                           capture_output=True, text=True) if _which("perf") else None
    if not probe or probe.returncode or "not supported" in probe.stderr:
        return {}
    code = ("import sys; from middlebox import loader, plan; from middlebox.runtime import Engine;"
            f"e = Engine(plan.build(loader.load({str(path)!r}))); e.run_sources({packets})")
    base = ("import sys; from middlebox import loader, plan; from middlebox.runtime import Engine;"
            f"e = Engine(plan.build(loader.load({str(path)!r}))); e.run_sources(1)")
    counts = []
    for c in (code, base):
        r = subprocess.run(["perf", "stat", "-x,", "-e", "cycles,instructions", sys.executable,
                            "-c", c], capture_output=True, text=True)
        vals = {}
        for line in r.stderr.splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[0].strip().isdigit():
                vals[parts[2]] = int(parts[0])
        counts.append(vals)
    run, idle = counts
    if "cycles" not in run or "cycles" not in idle:
        return {}
    return {"cycles_per_packet": round((run["cycles"] - idle["cycles"]) / packets, 1),
            "instructions_per_packet": round((run["instructions"] - idle["instructions"]) / packets, 1)}


def _which(name):
    return any(os.access(os.path.join(d, name), os.X_OK)
               for d in os.environ.get("PATH", "").split(os.pathsep))


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    names = [r["graph"] for r in rows]
    ax.barh(names, [r["mpps"] for r in rows], color="#2a7", label="middlebox")
    clicks = [(i, r["click_mpps"]) for i, r in enumerate(rows) if "click_mpps" in r]
    if clicks:
        ax.scatter([c for _, c in clicks], [i for i, _ in clicks], color="#c33", marker="|",
                   s=300, label="Click 2.1 userlevel", zorder=3)
    ax.set_xlabel("Mpps, one core, 64-byte packets")
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=5_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--only", help="substring of the graph files to run")
    ap.add_argument("--json", default=str(RESULTS / "suite.json"))
    ap.add_argument("--plot", default=str(RESULTS / "suite.png"))
    a = ap.parse_args(argv)
    rows = []
    for path in sorted((HERE / "graphs").glob("*.yaml")):
        if a.only and a.only not in path.name:
            continue
        row = measure(path, a.packets, a.repeat)
        rows.append(row)
        vs = f"  {row['vs_click']:.2f}x Click" if "vs_click" in row else ""
        cyc = f"  {row['cycles_per_packet']} cycles" if "cycles_per_packet" in row else ""
        print(f"{row['graph']:<28} {row['mpps']:7.2f} Mpps {row['ns_per_packet']:8.1f} ns/packet"
              f"{cyc}{vs}", flush=True)
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                          "python": sys.version.split()[0]},
              "packet_size": 64, "batch": 32, "graphs": rows}
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {a.json}")
    if rows and a.plot:
        plot(rows, a.plot)
        print(f"wrote {a.plot}")


if __name__ == "__main__":
    main()
