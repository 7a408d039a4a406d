"""Time prune surgery (analysis, masks, compensation, compact build, .cfg/.weights write).

Evaluation is excluded, as in the figures REFERENCE.md gives for earlier toolkits
(0.6-1.2 s on full yolov3, 0.13 s on yolov3-tiny, 2 CPU cores). Random weights.

    python benchmarks/surgery_time.py --runs 5 --out benchmarks/results/surgery.json
"""
import argparse
import json
import os
import statistics
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from yoloslim.darknet.model import Darknet  # noqa: E402
from yoloslim.io import atomic_write  # noqa: E402
from yoloslim.pipeline.stages import machine_line  # noqa: E402
from yoloslim.prune.graph import analyze  # noqa: E402
from yoloslim.prune.engine import POLICIES, build_compact, plan_channels, write_pruned  # noqa: E402
from yoloslim.deploy.measure import randomize_weights  # noqa: E402


def surgery_seconds(model, policy, percent, folder):
    t0 = time.perf_counter()
    graph = analyze(model.module_defs)
    plan = plan_channels(model, graph, POLICIES[policy], percent)
    compact = build_compact(model, plan, graph)
    write_pruned(compact, folder, "pruned")
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "surgery.json"))
    args = p.parse_args()
    rows = []
    for cfg, policy in (("yolov3", "normal"), ("yolov3", "shortcut"), ("yolov3-tiny", "tiny")):
        model = randomize_weights(Darknet(os.path.join(ROOT, "cfg", f"{cfg}.cfg"), img_size=416), seed=0).eval()
        with tempfile.TemporaryDirectory() as folder:
            surgery_seconds(model, policy, 0.5, folder)  # warm-up: first-call allocations
            times = [surgery_seconds(model, policy, 0.5, folder) for _ in range(args.runs)]
        rows.append({"cfg": cfg, "policy": policy, "percent": 0.5, "median_s": statistics.median(times),
                     "min_s": min(times), "max_s": max(times), "runs": args.runs})
        print(f"{cfg:12s} {policy:9s} median {statistics.median(times):.3f} s over {args.runs} runs")
    result = {"machine": machine_line(),
              "command": "python benchmarks/surgery_time.py --runs %d" % args.runs, "rows": rows}
    with atomic_write(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
