"""Write BENCHMARKS.md's third edition (deployment speed) and benchmarks/results/deploy_*, from nothing.

    python benchmarks/deploy_benchmarks.py                 # the full run (see BENCHMARKS.md for its wall time)
    python benchmarks/deploy_benchmarks.py --quick --models tiny --img-size 128   # a smoke run under runs/

Models: yolov3-tiny with the real COCO weights at 416 px; the narrow residual yolov3 at 416 px,
sparsity-trained by the second edition's cached training stage (runs/bench; from nothing a
shortened recipe trains, and the report says so); full yolov3 at 608 px with seeded random
weights and shrunk gammas standing in for sparsity training (speed only). Every prune method the
graph allows at the second edition's ratios, timed on every installed runtime (OpenCV DNN, ONNX
Runtime, OpenVINO, PyTorch) interleaved with its original; INT8 of the x8 prune; the latency-aware
planner against the gamma-only prune at the same measured ms; the per-layer profile of the narrow
model. The issue's speed goals are judged; mAP goals are not measured here.
"""
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the second edition's stage keys hold its paths as written from the repo root (runs/bench/...):
# the same relative paths from the same folder are what lets its cached training be reused
os.chdir(ROOT)

from deploy_report import write_all  # noqa: E402
from results_file import rewrite_from  # noqa: E402
from yoloslim.cli import checks  # noqa: E402
from yoloslim.errors import SlimError, cli_main  # noqa: E402
from yoloslim.io import atomic_write  # noqa: E402

MODEL_NAMES = ("tiny", "narrow", "yolov3")
RESULTS = "deploy_results.json"
FULL_RUNS = 10


def parse_args(argv=None):
    import argparse
    from yoloslim.deploy.latency import RUNTIMES, installed, runtime_list
    p = checks.Parser(prog="benchmarks/deploy_benchmarks.py", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 2 timed runs, a 1-epoch narrow model; writes under runs/deploy-bench-quick/")
    p.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES), help="models to measure")
    p.add_argument("--threads", type=checks.positive_int, default=1, help="threads set in every runtime (default 1)")
    p.add_argument("--runs", type=checks.number(int, lo=1, hi=10000), help="timed runs per model (default 30; --quick 2)")
    p.add_argument("--warmup", type=checks.number(int, lo=0, hi=1000), help="warm-up runs (default 5; --quick 1)")
    p.add_argument("--runtimes", type=runtime_list, default=[r for r in RUNTIMES if installed(r)],
                   help="comma-separated runtimes (default: every installed one)")
    p.add_argument("--img-size", type=checks.img_size, help="tiny's and narrow's input size (default 416)")
    p.add_argument("--full-size", type=checks.img_size, help="full yolov3's input size (default 608; --quick 320)")
    p.add_argument("--full-runs", type=checks.number(int, lo=1, hi=10000),
                   help="timed runs of full yolov3's models (default 10: a round of its seven models takes about "
                        "10 s on one thread; --quick: --runs)")
    p.add_argument("--full-shrink", type=checks.number(float, lo=0, hi=1, hi_open=True), default=None,
                   help="share of each prunable layer's channels whose gamma full yolov3's synthetic masks shrink "
                        "(default 0.88, the share the narrow model's sparsity training collapsed)")
    p.add_argument("--narrow-epochs", type=checks.positive_int,
                   help="the narrow model's training epochs (default: the cached 60-epoch stage if --train-cache "
                        "holds it, else 30)")
    p.add_argument("--no-planner", action="store_true",
                   help="skip the latency-aware rows (yoloslim/prune/latency_plan.py, which builds per-layer latency tables)")
    p.add_argument("--planner-models", nargs="+", choices=MODEL_NAMES, default=["tiny", "narrow"],
                   help="models whose latency-aware rows are measured (default tiny narrow: the planner's per-layer "
                        "tables of full yolov3 at 608 px take many minutes to measure on one thread)")
    p.add_argument("--planner-runtime", default="onnxruntime", type=runtime_list,
                   help="the runtime whose measured ms is the planner's budget (default onnxruntime)")
    p.add_argument("--work", type=checks.output_dir,
                   help="pruned models, exports, photos (default runs/deploy-bench; --quick runs/deploy-bench-quick)")
    p.add_argument("--train-cache", type=checks.output_dir,
                   help="the second edition's training cache to reuse (default runs/bench; --quick: <work>)")
    p.add_argument("--out", type=checks.output_file, help="the report (default BENCHMARKS.md; --quick <work>/BENCHMARKS.md)")
    p.add_argument("--figures", type=checks.output_dir,
                   help="folder for deploy_results.json, deploy_benchmarks.md and deploy_profile.png "
                        "(default benchmarks/results; --quick <work>/results)")
    p.add_argument("--report-only", action="store_true",
                   help="measure nothing: write the report again from <figures>/deploy_results.json")
    args = p.parse_args(argv)
    args.root = ROOT
    args.work = args.work or os.path.join("runs", "deploy-bench-quick" if args.quick else "deploy-bench")
    args.train_cache = args.train_cache or (args.work if args.quick else os.path.join("runs", "bench"))
    args.out = args.out or (os.path.join(args.work, "BENCHMARKS.md") if args.quick else "BENCHMARKS.md")
    args.figures = args.figures or (os.path.join(args.work, "results") if args.quick else
                                    os.path.join("benchmarks", "results"))
    args.runs = args.runs or (2 if args.quick else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    args.full_size = args.full_size or (320 if args.quick else 608)
    args.full_runs = args.full_runs or (args.runs if args.quick else min(args.runs, FULL_RUNS))
    args.planner_runtime = args.planner_runtime[0]
    return args


def machine():
    """CPU and cores; the thread count is the run's own (--threads), stated with every timing."""
    from yoloslim.deploy.measure import cpu_model
    return f"{cpu_model()}, {os.cpu_count()} cores"


def load_range():
    return os.getloadavg()[0]


def versions(runtimes):
    import importlib
    modules = {"torch": "torch", "opencv": "cv2", "onnxruntime": "onnxruntime", "openvino": "openvino"}
    return ", ".join(f"{r} {importlib.import_module(modules[r]).__version__}" for r in runtimes)


def measure_all(args, results, load):
    """Every section, model by model, one at a time (timings want the machine to themselves)."""
    import deploy_models as dm
    int8_ok = "onnxruntime" in args.runtimes or "openvino" in args.runtimes
    calib = dm.photo_folders(args) if int8_ok else None
    if not int8_ok:
        results["int8_note"] = "Not measured: neither ONNX Runtime nor OpenVINO is among --runtimes."
    results["minutes"] = {}
    results["int8"], results["planner"] = [], "skipped (--no-planner)" if args.no_planner else []
    for name in args.models:
        t0 = time.time()
        subject = dm.SUBJECTS[name](args)
        result, original, pruned = dm.measure_subject(args, subject)
        results["models"][name] = result
        load.append(load_range())
        if calib and name in dm.INT8_MODELS:
            row = dm.int8_rows(args, subject, original, pruned, *calib)
            if row:
                results["int8"].append(row)
        if not args.no_planner and name in args.planner_models:
            row = dm.planner_rows(args, subject, result, original, pruned)
            if row:
                results["planner"].append(row)
        if name == "narrow":
            results["profile"] = dm.profile_rows(args, subject, original, pruned, result)
        load.append(load_range())
        results["minutes"][name] = (time.time() - t0) / 60     # what each model costs: for planning a rerun
        print(f"[{name}] done in {results['minutes'][name]:.1f} min", flush=True)


def rewrite_report(args):
    path = os.path.join(args.figures, RESULTS)
    rewrite_from(path, lambda results: write_all(results, args.out, args.figures))
    print(f"wrote {args.out} from {path}")


def main(argv=None):
    args = parse_args(argv)
    if args.report_only:
        return rewrite_report(args)
    if not args.no_planner:     # before any work: an hour of timing must not end in a refusal
        if args.planner_runtime not in args.runtimes:
            raise SlimError(f"--planner-runtime {args.planner_runtime} is not among --runtimes "
                            f"{','.join(args.runtimes)}; add it or pass --no-planner")
    t0, load = time.time(), [load_range()]
    results = {"command": " ".join(["python", "benchmarks/deploy_benchmarks.py", *(sys.argv[1:] if argv is None
                                                                                  else argv)]),
               "machine": machine(), "versions": versions(args.runtimes), "runtimes": args.runtimes,
               "threads": args.threads, "planner_models": args.planner_models, "runs": args.runs, "full_runs": args.full_runs, "warmup": args.warmup, "quick": args.quick,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "models": {},
               "second_edition_dir": os.path.join("benchmarks", "results")}
    measure_all(args, results, load)
    results["wall_min"] = (time.time() - t0) / 60
    results["load"] = [min(load), max(load)]
    os.makedirs(args.figures, exist_ok=True)
    with atomic_write(os.path.join(args.figures, RESULTS), "w") as f:
        json.dump(results, f, indent=2, default=str)
    write_all(results, args.out, args.figures)
    print(f"wrote {args.out} and {args.figures}/deploy_* in {results['wall_min']:.1f} min")


if __name__ == "__main__":
    cli_main(main)
