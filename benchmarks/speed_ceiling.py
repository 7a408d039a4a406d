"""The ceiling of channel pruning: how fast each policy's fastest plan runs on each runtime.

    python benchmarks/speed_ceiling.py                       # tiny, narrow and yolov3 at 416 px, 1 thread
    python benchmarks/speed_ceiling.py --models narrow --img-size 608

Every prunable unit at the floor of its ladder (--layer-keep of its width, rounded to the
runtime's multiple: yoloslim/prune/latency_plan.py, plan_at_floor) is the fastest plan a policy
allows: no ratio, budget or fine-tune can make that model faster by removing channels. Each
floor model is timed interleaved with its original on every installed runtime. Weights are
seeded random (dense convs run at the same speed whatever their values). A speed goal above a
ceiling cannot be met by channel pruning under that policy, whatever the accuracy.

Writes benchmarks/results/speed_ceiling.md and .json. Pin it to one idle core for clean timings.
"""
import json
import os
import sys
import time

from yoloslim.cli import checks
from yoloslim.errors import cli_main
from yoloslim.io import atomic_write
from yoloslim.pipeline.stages import markdown_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
MODELS = {   # name: (cfg, the policies its graph allows that differ)
    "tiny": ("cfg/yolov3-tiny.cfg", ("tiny",)),
    "narrow": ("cfg/yolov3-narrow.cfg", ("normal", "shortcut")),
    "yolov3": ("cfg/yolov3.cfg", ("normal", "shortcut")),
}
LABELS = {"torch": "PyTorch", "opencv": "OpenCV DNN", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}


def parse_args(argv=None):
    p = checks.parser(__doc__.split("\n\n")[0], prog="benchmarks/speed_ceiling.py")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--img-size", type=checks.img_size, default=416)
    p.add_argument("--threads", type=checks.positive_int, default=1)
    p.add_argument("--runs", type=checks.positive_int, default=15, help="timed runs per model (after 5 warm-up)")
    p.add_argument("--layer-keep", type=checks.number(float, lo=0, hi=1, lo_open=True), default=0.05,
                   help="the floor: the share of each prunable layer's channels every plan keeps")
    p.add_argument("--out", type=checks.output_file, default=os.path.join(RESULTS, "speed_ceiling.md"))
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        p.error(f"--models {','.join(unknown) or '(none)'}: choose from {', '.join(MODELS)}")
    return args


def ceilings(name, args, runtimes):
    """Rows of one model: per runtime and policy, the original and its floor plan, timed interleaved."""
    from yoloslim.darknet.model import Darknet
    from yoloslim.deploy.latency import compare
    from yoloslim.deploy.measure import count_flops, randomize_weights
    from yoloslim.prune.engine import POLICIES
    from yoloslim.prune.latency_plan import RUNTIME_MULTIPLE, plan_at_floor
    cfg, policies = MODELS[name]
    model = randomize_weights(Darknet(os.path.join(ROOT, cfg)), seed=0).eval()
    flops = count_flops(model, args.img_size)
    rows = []
    for runtime in runtimes:
        # the planner's multiple on this runtime, and free rounding: what the multiple costs at the floor
        floors = {(p, k): plan_at_floor(model, POLICIES[p], args.layer_keep, k)[0]
                  for p in policies for k in sorted({RUNTIME_MULTIPLE.get(runtime, 1), 1}, reverse=True)}
        print(f"{name} on {runtime}: original and {len(floors)} floor plan(s), {args.runs} interleaved runs ...",
              flush=True)
        timed = compare({"original": model, **{f"{p} x{k}": m for (p, k), m in floors.items()}}, runtime,
                        args.img_size, args.threads, args.runs)
        for (policy, multiple), floor in floors.items():
            t = timed[f"{policy} x{multiple}"]
            rows.append({"model": name, "cfg": cfg, "policy": policy, "runtime": runtime, "multiple": multiple,
                         "planner_multiple": RUNTIME_MULTIPLE.get(runtime, 1),
                         "flops": flops, "floor_flops": count_flops(floor, args.img_size),
                         "params": sum(p.numel() for p in model.parameters()),
                         "floor_params": sum(p.numel() for p in floor.parameters()),
                         "original_ms": timed["original"].median, "floor_ms": t.median, "floor_p10": t.p10,
                         "floor_p90": t.p90})
    return rows


def render(rows, meta):
    header = ["model", "policy", "runtime", "floor rounded to", "GFLOPs: original -> floor (cut)",
              "original ms", "floor ms (p10-p90)", "ceiling speed-up", "ceiling / FLOP cut"]
    body = []
    for r in rows:
        cut, speed = r["flops"] / r["floor_flops"], r["original_ms"] / r["floor_ms"]
        rounding = f"{r['multiple']}" + (" (the planner's)" if r["multiple"] == r["planner_multiple"] else "")
        body.append([r["model"], r["policy"], LABELS.get(r["runtime"], r["runtime"]), rounding,
                     f"{r['flops'] / 1e9:.3f} -> {r['floor_flops'] / 1e9:.3f} (x{cut:.1f})", f"{r['original_ms']:.2f}",
                     f"{r['floor_ms']:.2f} ({r['floor_p10']:.2f}-{r['floor_p90']:.2f})", f"x{speed:.2f}",
                     f"{speed / cut:.2f}"])
    return (f"# The ceiling of channel pruning\n\nWritten by `python benchmarks/speed_ceiling.py{meta['argv']}` in "
            f"{meta['minutes']:.1f} min ({meta['when']}). Machine: {meta['machine']}. At {meta['img_size']} px, batch "
            f"1, {meta['threads']} thread(s) set in each runtime, median of {meta['runs']} timed runs after 5 "
            f"warm-up, each floor model interleaved run by run with its original; 1-minute load average "
            f"{meta['load'][0]:.1f} to {meta['load'][1]:.1f}.\n\n"
            f"The floor: every prunable layer of the policy keeps {meta['layer_keep']:g} of its channels (at least "
            f"one), rounded up to the multiple the planner uses on that runtime (8 on ONNX Runtime, OpenVINO and "
            f"PyTorch, whose blocked kernels run multiples of 8 faster per FLOP) and, where that is not 1, to 1 as "
            f"well: what the planner's rounding costs at the floor; the layers the policy cannot prune "
            f"(the first conv's 3 input channels, the convs before [yolo], and what shortcut/route sharing pins) "
            f"stay whole. No plan of that policy runs faster, so a speed goal above the ceiling cannot be met by "
            f"channel pruning, whatever the accuracy.\n\n" + markdown_table(header, body) + "\n")


def main(argv=None):
    args = parse_args(argv)
    from yoloslim.deploy.latency import installed
    from yoloslim.deploy.measure import cpu_model
    t0 = time.time()
    runtimes = [r for r in ("opencv", "onnxruntime", "openvino", "torch") if installed(r)]
    load = [os.getloadavg()[0]]
    rows = []
    for name in args.models:
        rows += ceilings(name, args, runtimes)
        load.append(os.getloadavg()[0])
    meta = {"argv": "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv)),
            "minutes": (time.time() - t0) / 60, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{cpu_model()}, {os.cpu_count()} cores", "img_size": args.img_size, "threads": args.threads,
            "runs": args.runs, "layer_keep": args.layer_keep, "load": [min(load), max(load)]}
    text = render(rows, meta)
    with atomic_write(args.out, "w") as f:
        f.write(text)
    with atomic_write(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({"rows": rows, "meta": meta}, f, indent=2)
    print(text + f"\nwrote {args.out}")


if __name__ == "__main__":
    cli_main(main)
