"""Packet rate of InfiniteSource -> Classifier(3 patterns) -> Counter/Discard.

Runs the C path and the same graph with a Python pass-through element in
the middle, in the same process, and reports Mpps, ns/packet and their
ratio. Writes bench/results/classifier.json (and --plot FILE.png).

    python bench/classifier.py [--packets 20000000] [--repeat 5]
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

from middlebox import loader, plan
from middlebox.runtime import Engine

HERE = pathlib.Path(__file__).resolve().parent
# Click 2.1 userlevel on this machine kind, same graph (issue #5's figures).
CLICK_MPPS = 12.3


def measure(graph_file, packets, repeat):
    g = loader.load(str(graph_file))
    rates = []
    for _ in range(repeat):
        eng = Engine(plan.build(g))
        eng.run_sources(min(packets // 10, 200_000))      # warm up
        made, secs = eng.run_sources(packets)
        rates.append(made / secs)
        stats = eng.stats()
    mpps = statistics.median(rates) / 1e6
    return {"graph": g.name, "packets": packets, "repeat": repeat,
            "mpps": round(mpps, 3), "mpps_all": [round(r / 1e6, 3) for r in rates],
            "ns_per_packet": round(1e3 / mpps, 2), "packet_size": 64, "batch": 32,
            "flows": 1000, "counted": stats["count"]["count"]}


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=20_000_000)
    ap.add_argument("--python-packets", type=int, default=None,
                    help="packets for the Python variant (default packets/50)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default=str(HERE / "results" / "classifier.json"))
    ap.add_argument("--plot", help="write a bar chart PNG")
    a = ap.parse_args(argv)
    c = measure(HERE / "graphs" / "classifier.yaml", a.packets, a.repeat)
    py = measure(HERE / "graphs" / "classifier-python.yaml",
                 a.python_packets or max(a.packets // 50, 10_000), a.repeat)
    result = {
        "bench": "classifier",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": sys.version.split()[0]},
        "c_path": c,
        "python_element": py,
        "c_over_python": round(c["mpps"] / py["mpps"], 1),
        "click_userlevel_mpps": CLICK_MPPS,
        "c_over_click": round(c["mpps"] / CLICK_MPPS, 2),
    }
    print(f"C path:          {c['mpps']:7.2f} Mpps  {c['ns_per_packet']:8.1f} ns/packet")
    print(f"Python element:  {py['mpps']:7.2f} Mpps  {py['ns_per_packet']:8.1f} ns/packet")
    print(f"C / Python: {result['c_over_python']}x;  C / Click userlevel ({CLICK_MPPS} Mpps): "
          f"{result['c_over_click']}x")
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {a.json}")
    if a.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(5, 3))
        names = ["C path", "Python element", "Click userlevel"]
        vals = [c["mpps"], py["mpps"], CLICK_MPPS]
        ax.bar(names, vals, color=["#2a7", "#c73", "#777"])
        ax.set_ylabel("Mpps (64-byte packets, 1 core)")
        ax.set_title("Classifier, 3 patterns")
        fig.tight_layout()
        fig.savefig(a.plot, dpi=120)
        print(f"wrote {a.plot}")


if __name__ == "__main__":
    main()
