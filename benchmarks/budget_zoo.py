"""Does --target-ms land on every graph? The prune scripts run to a latency budget on each cfg of the zoo.

    python benchmarks/budget_zoo.py                              # every cfg/*.cfg, 64 px, ONNX Runtime, 1 thread
    python benchmarks/budget_zoo.py --cfgs cfg/yolov4-tiny.cfg --runtime openvino --img-size 128

For each cfg: seeded random weights (a dense conv runs at the same speed whatever its values;
BN gammas spread down to near zero, so the |gamma| ranking has something to rank), the latency tables
of the planner (the machine's cache), and the fastest plan the policy allows at --layer-keep, as
the tables predict it (the floor). The budget lies --between of the way from that floor to the
unpruned model, both scaled by how the machine runs the unpruned model (timed as the scripts'
check times it, interleaved with a second model) against the tables' prediction: a budget that
needs pruning and that every graph can meet, whatever its size. Then normal_prune.py, and shortcut_prune.py where
the graph has prunable convs meeting at a [shortcut], run as a user runs them, with --target-ms;
their summary.json says what the written model measured against its original, interleaved.

This checks the planner and its calibration across graphs (routes, groups, SPP, reorg, several
heads), at a toy size that keeps the whole zoo to minutes; deploy-size speed is
benchmarks/deploy_benchmarks.py's and photos_deploy.py's. Writes benchmarks/results/budget_zoo.md
and .json. Pin it to one idle core for clean timings.
"""
import glob
import json
import os
import subprocess
import sys
import time

from results_file import rewrite_from
from yoloslim.cli import checks
from yoloslim.errors import SlimError, cli_main
from yoloslim.io import atomic_write
from yoloslim.pipeline.stages import markdown_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
SCRIPTS = {"normal": "normal_prune.py", "shortcut": "shortcut_prune.py"}
LANDS = 0.10   # the goal: the written model within 10% of the budget
GAMMAS = (1e-3, 1.0)   # BN gammas down to near zero, as after sparsity training: a ranking to prune by


def parse_args(argv=None):
    p = checks.parser(__doc__.split("\n\n")[0], prog="benchmarks/budget_zoo.py")
    p.add_argument("--cfgs", nargs="+", type=checks.input_file, default=None,
                   help="the cfgs to run (default: every cfg/*.cfg)")
    p.add_argument("--runtime", choices=["opencv", "onnxruntime", "openvino", "torch"], default="onnxruntime")
    p.add_argument("--img-size", type=checks.img_size, default=64)
    p.add_argument("--threads", type=checks.positive_int, default=1)
    p.add_argument("--between", type=checks.number(float, lo=0, hi=1, lo_open=True, hi_open=True), default=0.5,
                   help="the budget: this far from the floor (0) to the unpruned model (1)")
    p.add_argument("--layer-keep", type=checks.number(float, lo=0, hi=1, lo_open=True), default=0.05)
    p.add_argument("--latency-runs", type=checks.positive_int, default=10,
                   help="timed runs of each script's final check")
    p.add_argument("--work", type=checks.output_dir, default=os.path.join(ROOT, "runs", "budget_zoo"),
                   help="the weights and the scripts' output folders")
    p.add_argument("--out", type=checks.output_file, default=os.path.join(RESULTS, "budget_zoo.md"))
    p.add_argument("--report-only", action="store_true", help="write the page again from the .json of a finished run")
    args = p.parse_args(argv)
    args.cfgs = args.cfgs or sorted(glob.glob(os.path.join(ROOT, "cfg", "*.cfg")))
    return args


def budget_for(model, policy, args):
    """(predicted floor ms, predicted unpruned ms, unpruned ms as timed, the budget): the fastest
    plan of ``policy`` and the unpruned model as the planner's tables predict them."""
    from yoloslim.cli.budget import measure_original
    from yoloslim.deploy.layer_latency import LatencyCache, RuntimeTimer, build_tables
    from yoloslim.prune.latency_plan import RUNTIME_MULTIPLE, BudgetPlanner, table_grids
    planner = BudgetPlanner(model, policy, None, args.layer_keep, RUNTIME_MULTIPLE.get(args.runtime, 1),
                            args.img_size)
    timer = RuntimeTimer(args.runtime, args.threads)
    planner.tables = build_tables(model, args.runtime, table_grids(planner), args.img_size, args.threads, timer,
                                  LatencyCache(args.runtime, args.threads), progress=False)
    floor = planner.cost(planner.floor(), "ms")
    original = planner.cost({}, "ms")
    timed = measure_original(model, args.runtime, args.img_size, args.threads)
    return floor, original, timed, round(timed / original * (floor + args.between * (original - floor)), 3)


def policies_of(model):
    """The prune scripts whose policy differs on this graph: shortcut only where convs meet at one."""
    from yoloslim.prune.graph import analyze
    graph = analyze(model.module_defs, model.in_channels)
    return ["normal"] + (["shortcut"] if graph.prunable_meet_at_shortcut() else [])


def run_cfg(cfg, args):
    """Rows of one cfg: each applicable prune script run to a budget between its floor and the model."""
    from yoloslim.darknet.model import Darknet
    from yoloslim.deploy.measure import randomize_weights
    from yoloslim.prune.engine import POLICIES
    name = os.path.splitext(os.path.basename(cfg))[0]
    model = randomize_weights(Darknet(cfg), seed=0, gamma_range=GAMMAS).eval()
    weights = os.path.join(args.work, f"{name}.weights")
    model.save_darknet_weights(weights)
    rows = []
    for policy in policies_of(model):
        floor, original, timed, target = budget_for(model, POLICIES[policy], args)
        out = os.path.join(args.work, f"{name}-{policy}")
        print(f"{name}, {SCRIPTS[policy]}: predicted {original:.2f} ms, floor {floor:.2f} ms; timed {timed:.2f} ms; "
              f"--target-ms {target:g} ...", flush=True)
        t0 = time.time()
        proc = subprocess.run([sys.executable, os.path.join(ROOT, SCRIPTS[policy]), "--cfg", cfg, "--weights", weights,
                               "--img-size", str(args.img_size), "--target-ms", str(target), "--runtime", args.runtime,
                               "--threads", str(args.threads), "--layer-keep", str(args.layer_keep),
                               "--latency-runs", str(args.latency_runs), "--out", out],
                              capture_output=True, text=True)
        row = {"cfg": name, "policy": policy, "floor_ms": floor, "predicted_original_ms": original,
               "timed_ms": timed, "target_ms": target, "seconds": time.time() - t0, "returncode": proc.returncode}
        if proc.returncode == 0:
            with open(os.path.join(out, "summary.json")) as f:
                budget = json.load(f)["budget"]
            row.update({k: budget[k] for k in ("measured_ms", "original_measured_ms", "predicted_ms", "original_ms")})
            row["removed"] = budget["removed_importance"] / budget["total_importance"]
        else:
            row["error"] = next((ln for ln in proc.stderr.splitlines() if ln.startswith("error:")),
                                proc.stderr.strip()[-300:])
        rows.append(row)
    return rows


def verdict(row):
    if row["returncode"] != 0:
        return "refused: " + row["error"].removeprefix("error: ")
    off = row["measured_ms"] / row["target_ms"] - 1
    return "met" if off <= 0 else f"missed by {off:.1%}"


def render(rows, meta):
    header = ["cfg", "script", "predicted ms: unpruned / floor", "unpruned ms, timed", "--target-ms", "measured ms",
              "off the budget", "unpruned ms in the check", "verdict"]
    body = []
    for r in rows:
        ran = r["returncode"] == 0
        body.append([r["cfg"], SCRIPTS[r["policy"]], f"{r['predicted_original_ms']:.2f} / {r['floor_ms']:.2f}",
                     f"{r['timed_ms']:.2f}", f"{r['target_ms']:g}", f"{r['measured_ms']:.2f}" if ran else "-",
                     f"{r['measured_ms'] / r['target_ms'] - 1:+.1%}" if ran else "-",
                     f"{r['original_measured_ms']:.2f}" if ran else "-", verdict(r)])
    ran = [r for r in rows if r["returncode"] == 0]
    met = sum(r["measured_ms"] <= r["target_ms"] for r in ran)
    close = sum(abs(r["measured_ms"] / r["target_ms"] - 1) <= LANDS for r in ran)
    # the same unpruned model timed twice in one run: before planning and in the script's check
    drift = sorted(abs(r["original_measured_ms"] / r["timed_ms"] - 1) for r in ran) or [0.0]
    return (f"# --target-ms across the zoo\n\nWritten by `python benchmarks/budget_zoo.py{meta['argv']}` in "
            f"{meta['minutes']:.1f} min ({meta['when']}). Machine: {meta['machine']}. {meta['runtime']}, "
            f"{meta['img_size']} px, {meta['threads']} thread(s); each budget lies {meta['between']:g} of the way from "
            f"the floor the tables predict (every prunable layer at --layer-keep {meta['layer_keep']:g}) to the "
            f"unpruned model, scaled by the unpruned model as timed over its prediction; each script's final "
            f"check is the median of {meta['latency_runs']} runs, interleaved with the original; 1-minute load "
            f"average {meta['load'][0]:.1f} to {meta['load'][1]:.1f}.\n\n"
            f"**{met} of {len(ran)} budgets met; {close} of {len(ran)} within {LANDS:.0%} of the budget; "
            f"{len(rows) - len(ran)} refused.** The unpruned model, timed twice in each row (before planning and "
            f"in the script's check, a minute or two apart), differed by a median {drift[len(drift) // 2]:.1%} and "
            f"up to {drift[-1]:.1%}: no verdict is finer than that, and the figure to read is how the plans spread "
            f"around the budget, not one row.\n\n" + markdown_table(header, body) + "\n")


def write(results, out):
    text = render(results["rows"], results["meta"])
    with atomic_write(out, "w") as f:
        f.write(text)
    return text


def main(argv=None):
    args = parse_args(argv)
    json_path = os.path.splitext(args.out)[0] + ".json"
    if args.report_only:
        print(rewrite_from(json_path, lambda results: write(results, args.out)) + f"\nwrote {args.out}")
        return
    from yoloslim.deploy.latency import require
    from yoloslim.deploy.measure import cpu_model
    require(args.runtime)
    os.makedirs(args.work, exist_ok=True)
    if os.listdir(args.work):
        raise SlimError(f"{args.work}: not empty; pass an empty or new --work folder")
    t0, load, rows = time.time(), [os.getloadavg()[0]], []
    for cfg in args.cfgs:
        rows += run_cfg(cfg, args)
        load.append(os.getloadavg()[0])
    meta = {"argv": "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv)),
            "minutes": (time.time() - t0) / 60, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{cpu_model()}, {os.cpu_count()} cores", "runtime": args.runtime, "img_size": args.img_size,
            "threads": args.threads, "between": args.between, "layer_keep": args.layer_keep,
            "latency_runs": args.latency_runs, "load": [min(load), max(load)]}
    results = {"rows": rows, "meta": meta}
    text = write(results, args.out)
    with atomic_write(json_path, "w") as f:
        json.dump(results, f, indent=2)
    print(text + f"\nwrote {args.out}")


if __name__ == "__main__":
    cli_main(main)
