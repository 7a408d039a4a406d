"""Own data, deployed: a ratio against a latency budget on real photographs, at the trained and the deploy size, and INT8.

    python benchmarks/photos_deploy.py                        # from nothing: data, both jobs, measurements
    python benchmarks/photos_deploy.py --ratio-run runs/photos-ratio --budget-run runs/photos-budget
                                                             # measure two finished slim runs again

1. Data: scripts/photo_data.py's set of real photographs (10 classes, 1000 train / 250 val, 256 px)
   in --data-dir, made once; or --data.
2. The ratio job: ``slim.py --data D --img-size 256 --threads 1`` (COCO yolov3-tiny transferred
   with sparsity, --percent auto, distilled fine-tune); its run folder is copied to --ratio-run.
3. The budget job: the same command with ``--target-ms M --runtime R``, M the ratio job's own
   measured ms on R: the latency-aware planner at the same latency, fine-tuned the same way. It
   runs in the same run folder, so the transfer stage is taken from the cache; copied to --budget-run.
4. mAP@0.5 on the validation set of the base and both final models, at the trained size and at
   each --deploy-size; the same for int8 copies of both (export.py --int8's recipe, calibrated on
   --calib-images training images).
5. Speed: the base and both finals interleaved run by run on every installed runtime at each size,
   the int8 copies beside them in ONNX Runtime and OpenVINO (yoloslim/deploy/latency.py).
6. The frontier before fine-tuning: at each of --frontier-ratios, the ratio's plan, the planner's
   plan at the ratio plan's predicted ms (as plan_to_budget makes it: only channels under the
   lowest |gamma| threshold that meets it), and the same search unbounded; all timed interleaved
   on --runtime and scored, with a figure (photos_deploy_frontier.png).

Writes benchmarks/results/photos_deploy.md and .json. Pin it to one idle core for clean timings
(``taskset -c 0``): the ratios hold on a busy machine, the absolute ms do not.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from results_file import rewrite_from
from yoloslim.cli import checks
from yoloslim.errors import SlimError, cli_main
from yoloslim.io import atomic_write
from yoloslim.pipeline.stages import file_digest, markdown_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
INT8_RUNTIMES = ("onnxruntime", "openvino")     # the runtimes that run ONNX Runtime's QDQ model as int8
LABELS = {"torch": "PyTorch", "opencv": "OpenCV DNN", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
MODELS = ("base", "ratio", "budget")
# issue 20's goals that this benchmark can judge (the residual ones need a residual model with accuracy)
TINY_SPEEDUP, INT8_SPEEDUP, MAX_LOSS, BUDGET_SLACK = 2.0, 1.5, 0.01, 0.10


def parse_args(argv=None):
    p = checks.parser(__doc__.split("\n\n")[0], prog="benchmarks/photos_deploy.py")
    p.add_argument("--data", type=checks.input_file, help="a .data file of yours (default: the photo set, made once)")
    p.add_argument("--data-dir", default=os.path.join(ROOT, "data", "photos10"), type=checks.output_dir,
                   help="where the photo set is made when --data is not given")
    p.add_argument("--run", default=os.path.join(ROOT, "runs", "photos-deploy"), type=checks.output_dir,
                   help="the slim run folder both jobs share (the transfer stage is cached there)")
    p.add_argument("--ratio-run", default=os.path.join(ROOT, "runs", "photos-ratio"), type=checks.output_dir,
                   help="copy of the ratio job's run folder; when it holds a finished run (report.json), that run "
                        "is measured and the job is not run again")
    p.add_argument("--budget-run", default=os.path.join(ROOT, "runs", "photos-budget"), type=checks.output_dir,
                   help="the same for the budget job")
    p.add_argument("--img-size", type=checks.img_size, default=256, help="the size the jobs train at")
    p.add_argument("--deploy-size", type=checks.img_size, action="append", default=None,
                   help="further sizes to evaluate and time at (repeatable; default 416)")
    p.add_argument("--runtime", default="onnxruntime", choices=("opencv", "onnxruntime", "openvino"),
                   help="the runtime the budget job's --target-ms is on")
    p.add_argument("--threads", type=checks.positive_int, default=1)
    p.add_argument("--runs", type=checks.positive_int, default=30, help="timed runs per model (after 5 warm-up)")
    p.add_argument("--calib-images", type=checks.positive_int, default=100, help="int8 calibration images")
    p.add_argument("--frontier-ratios", type=ratio_list, default=[0.3, 0.4, 0.45, 0.5, 0.55, 0.6],
                   help="comma-separated ratios the frontier compares the planner at (empty: skip it)")
    p.add_argument("--out", type=checks.output_file, default=os.path.join(RESULTS, "photos_deploy.md"))
    p.add_argument("--report-only", action="store_true",
                   help="write the page and figure again from the .json beside --out; nothing is run or measured")
    args = p.parse_args(argv)
    args.deploy_size = args.deploy_size or [416]
    for key in ("data", "data_dir", "run", "ratio_run", "budget_run", "out"):   # the jobs run from the repository
        if getattr(args, key):
            setattr(args, key, os.path.abspath(getattr(args, key)))
    return args


def ratio_list(text):
    return [checks.open_fraction(t) for t in text.split(",") if t.strip()]


# ----------------------------------------------------------------------------- the jobs
def photo_set(args):
    """The .data file: --data, or the photo set in --data-dir (made when absent)."""
    if args.data:
        return args.data
    data = os.path.join(args.data_dir, "photos.data")
    if not os.path.isfile(data):
        run(["scripts/photo_data.py", "--out", args.data_dir, "--classes", "10", "--n-train", "1000",
             "--n-val", "250", "--img-size", "256", "--quiet"])
    return data


def run(cmd):
    """A script of ours as a user runs it; its output streams through."""
    print("$ python " + " ".join(cmd), flush=True)
    proc = subprocess.run([sys.executable, *cmd], cwd=ROOT)
    if proc.returncode:
        raise SlimError(f"python {' '.join(cmd)} exited with {proc.returncode}; its output is above")


def job(args, data, copy_to, extra=()):
    """Run slim.py (unless ``copy_to`` holds a finished run) and keep a copy of its run folder."""
    if not os.path.isfile(os.path.join(copy_to, "report.json")):
        run(["slim.py", "--data", data, "--img-size", str(args.img_size), "--threads", str(args.threads),
             "--out", args.run, *extra])
        if os.path.exists(copy_to):
            shutil.rmtree(copy_to)
        shutil.copytree(args.run, copy_to, ignore=shutil.ignore_patterns("*.pt", "gamma_epoch*.png"))
    with open(os.path.join(copy_to, "report.json")) as f:
        report = json.load(f)
    if "command" not in report:     # a report written before report.json named its command
        with open(os.path.join(copy_to, "report.md")) as f:
            report["command"] = next(line.split("`")[1] for line in f if line.startswith("Command: `"))
    return report


def pairs(run_dir):
    """The base (the pruned model's unpruned self) and the final pair of a slim run folder."""
    stage = "sparse" if os.path.isdir(os.path.join(run_dir, "sparse")) else "train"
    final = os.path.join(run_dir, "final")
    cfg = next((f for f in sorted(os.listdir(final)) if f.endswith(".cfg")), None) if os.path.isdir(final) else None
    base = os.path.join(run_dir, stage, "last.weights")
    if cfg is None or not os.path.isfile(base):
        raise SlimError(f"{run_dir}: not a finished slim.py run folder (no final/*.cfg or {stage}/last.weights); "
                        f"point --ratio-run / --budget-run at copies of finished runs, or at new folders")
    return ((os.path.join(run_dir, stage, "model.cfg"), os.path.join(run_dir, stage, "last.weights")),
            (os.path.join(final, cfg), os.path.join(final, cfg[:-4] + ".weights")))


# ----------------------------------------------------------------------------- measurements
def measure_all(args, data, named, calib):
    """{size: {"mAP": {name: mAP@0.5}, "ms": {runtime: {name: Timing dict}}, "flops": {name: FLOPs}}}."""
    from yoloslim.darknet.load import load_model
    from yoloslim.deploy.exported import ExportedDetector
    from yoloslim.deploy.int8 import quantize
    from yoloslim.deploy.latency import Deployable, compare, default_runtimes, installed
    from yoloslim.deploy.measure import count_flops
    from yoloslim.deploy.onnx_export import export_onnx
    from yoloslim.eval.evaluate import evaluate
    runtimes = [r for r in (*default_runtimes(), "openvino") if installed(r)]
    results = {}
    for size in [args.img_size, *args.deploy_size]:
        models = {name: load_model(*pair, size).eval() for name, pair in named.items()}
        out = results[size] = {"mAP": {}, "ms": {}, "flops": {n: count_flops(m, size) for n, m in models.items()},
                               "params": {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}}
        with tempfile.TemporaryDirectory(prefix="photos-int8-") as work:
            int8 = {}
            for name in ("ratio", "budget"):
                fp32 = os.path.join(work, f"{name}.onnx")
                export_onnx(models[name], fp32, size)
                int8[f"{name} int8"] = quantize(fp32, os.path.join(work, f"{name}-int8.onnx"), calib, size,
                                                args.calib_images)
            scored = {**models, **{n: ExportedDetector(p, models["base"].nc, args.threads) for n, p in int8.items()}}
            for name, model in scored.items():
                print(f"mAP@0.5 of {name} at {size} px ...", flush=True)
                out["mAP"][name] = float(evaluate(model, data, img_size=size, verbose=False, progress=False)["mAP50"])
            for runtime in runtimes:
                print(f"timing at {size} px on {runtime}, {args.runs} interleaved runs ...", flush=True)
                specs = {n: Deployable(models[n], *named[n]) for n in MODELS}
                if runtime in INT8_RUNTIMES:
                    specs.update(int8)
                timed = compare(specs, runtime, size, args.threads, args.runs)
                out["ms"][runtime] = {n: {"median": t.median, "p10": t.p10, "p90": t.p90} for n, t in timed.items()}
                out.setdefault("load", []).append(os.getloadavg()[0])
    return results


def frontier(args, data, base_pair):
    """[row] of the frontier before fine-tuning: per ratio, its plan and the planner's two plans at
    its predicted ms on --runtime, timed interleaved with the base and scored at the trained size."""
    from yoloslim.darknet.load import load_model
    from yoloslim.deploy.latency import compare
    from yoloslim.deploy.layer_latency import LatencyCache, RuntimeTimer, build_tables
    from yoloslim.deploy.measure import count_flops
    from yoloslim.eval.evaluate import evaluate
    from yoloslim.pipeline.starting_point import choose_method
    from yoloslim.prune.engine import POLICIES, prune
    from yoloslim.prune.latency_plan import RUNTIME_MULTIPLE, BudgetPlanner, table_grids
    size = args.img_size
    model = load_model(*base_pair, size).eval()
    policy = POLICIES[choose_method([model.hyperparams, *model.module_defs])[0]]
    planner = BudgetPlanner(model, policy, None, 0.05, RUNTIME_MULTIPLE.get(args.runtime, 1), size)
    planner.tables = build_tables(model, args.runtime, table_grids(planner), size, args.threads,
                                  RuntimeTimer(args.runtime, args.threads), LatencyCache(args.runtime, args.threads),
                                  progress=False)
    plans, kinds = {}, {}
    for ratio in args.frontier_ratios:
        compact, (plan, *_) = prune(model, policy, ratio, 0.05)
        kept = planner.kept_of(plan)
        goal = {"ms": planner.cost(kept, "ms")}
        bounded, unbounded = planner.search_below_threshold(goal)[0], planner.search(goal)[0]
        for kind, (m, k) in (("ratio", (compact, kept)), ("planner", (planner.build(bounded)[0], bounded)),
                             ("planner, unbounded", (planner.build(unbounded)[0], unbounded))):
            plans[f"{kind} {ratio:g}"], kinds[f"{kind} {ratio:g}"] = m, (kind, ratio, planner.cost(k, "ms"),
                                                                        planner.removed_importance(k))
    print(f"frontier: {len(plans)} plans timed interleaved on {args.runtime} ...", flush=True)
    timed = compare({"base": model, **plans}, args.runtime, size, args.threads, args.runs)
    rows = []
    for name, m in plans.items():
        kind, ratio, predicted, removed = kinds[name]
        print(f"frontier: mAP@0.5 of {name} ...", flush=True)
        rows.append({"kind": kind, "ratio": ratio, "predicted_ms": predicted, "ms": timed[name].median,
                     "base_ms": timed["base"].median, "removed_importance": removed / planner.total_importance(),
                     "flops": count_flops(m, size), "params": sum(p.numel() for p in m.parameters()),
                     "mAP": float(evaluate(m, data, img_size=size, verbose=False, progress=False)["mAP50"])})
    return rows


def plot_frontier(rows, base_map, path, runtime):
    from yoloslim.plots import pyplot, save_png
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for kind, marker in (("ratio", "o"), ("planner", "s"), ("planner, unbounded", "^")):
        pts = sorted((r["ms"], r["mAP"]) for r in rows if r["kind"] == kind)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=kind)
    ax.axhline(base_map, color="grey", linestyle=":", label="base (unpruned)")
    ax.set_xlabel(f"measured ms on {LABELS.get(runtime, runtime)} (interleaved)")
    ax.set_ylabel("mAP@0.5 before fine-tuning")
    ax.legend()
    fig.tight_layout()
    save_png(fig, path)


# ----------------------------------------------------------------------------- the report
def speed_rows(res, names):
    rows = []
    for name in names:
        flops = res["flops"].get(name)
        cells = [name, f"{res['mAP'][name]:.4f}", f"{res['params'][name]:,}" if name in res["params"] else "-",
                 f"{flops / 1e9:.3f}" if flops else "-"]
        for runtime, timed in res["ms"].items():
            t, base = timed.get(name), timed["base"]["median"]
            cells.append("-" if t is None else f"{t['median']:.2f} (x{base / t['median']:.2f})")
        rows.append(cells)
    return rows


def best_within_loss(res, candidates):
    """(speed-up, runtime, model, loss) of the fastest (runtime, model, reference) candidate among
    those losing at most MAX_LOSS mAP@0.5 against the base (else the fastest of all); None if none."""
    rows = [(res["ms"][r][ref]["median"] / res["ms"][r][n]["median"], r, n, res["mAP"]["base"] - res["mAP"][n])
            for r, n, ref in candidates if n in res["ms"].get(r, {})]
    within = [row for row in rows if row[3] <= MAX_LOSS + 1e-12]
    return max(within or rows, default=None)


def verdicts(results, img_size, budget):
    """Issue 20's goals this benchmark measures: (goal, verdict, measured). A goal is met by the
    fastest model or runtime that stays within the loss, as a user would deploy it."""
    out = []
    for size, res in results.items():
        best = best_within_loss(res, [(r, n, "base") for r in res["ms"] for n in ("ratio", "budget")])
        if best:
            out.append((f"yolov3-tiny >= x{TINY_SPEEDUP:g} on its best runtime at <= {MAX_LOSS} loss, {size} px",
                        "met" if best[0] >= TINY_SPEEDUP and best[3] <= MAX_LOSS + 1e-12 else "not met",
                        f"x{best[0]:.2f} ({best[2]}, {LABELS.get(best[1], best[1])}), mAP {-best[3]:+.4f}"))
        best = best_within_loss(res, [(r, f"{n} int8", n) for r in INT8_RUNTIMES for n in ("ratio", "budget")])
        if best:
            out.append((f"INT8 >= x{INT8_SPEEDUP:g} over the float pruned model at <= {MAX_LOSS} loss (vs the base), "
                        f"{size} px", "met" if best[0] >= INT8_SPEEDUP and best[3] <= MAX_LOSS + 1e-12 else "not met",
                        f"x{best[0]:.2f} ({best[2]}, {LABELS.get(best[1], best[1])}), mAP {-best[3]:+.4f}"))
    res = results[img_size]
    diff = res["mAP"]["budget"] - res["mAP"]["ratio"]
    out.append(("latency-aware against the ratio at the same budget, after the same fine-tune",
                "better" if diff > 0 else "not better", f"mAP {res['mAP']['budget']:.4f} against "
                f"{res['mAP']['ratio']:.4f} ({diff:+.4f}) at {img_size} px"))
    if budget:
        target, measured = budget["target"], budget["measured"]
        ok = abs(measured / target - 1) <= BUDGET_SLACK
        timed = res["ms"].get(budget.get("runtime"), {})
        same = (f"; in this page's interleaved rounds it runs at x{timed['ratio']['median'] / timed['budget']['median']:.2f} "
                f"the ratio model's speed" if "ratio" in timed and "budget" in timed else "")
        out.append((f"--target-ms lands within {BUDGET_SLACK:.0%} of the budget", "met" if ok else "not met",
                    f"{measured:.2f} ms for {target:.2f} ms ({measured / target - 1:+.1%}, the budget job's report)"
                    + same))
    return out


def render(results, meta, goals):
    """The markdown page; ``goals``: verdicts' rows."""
    parts = [f"# Own data, deployed: ratio against latency budget, sizes, INT8\n\n"
             f"Written by `python benchmarks/photos_deploy.py{meta['argv']}` in **{meta['minutes']:.1f} min** "
             f"({meta['when']}), measuring two slim.py jobs that took {meta['job_minutes']['ratio']:.1f} and "
             f"{meta['job_minutes']['budget']:.1f} min by their own reports ([ratio](photos_runs/ratio.md), "
             f"[budget](photos_runs/budget.md); they share the cached transfer stage). Machine: {meta['machine']}. Every timing: batch 1, {meta['threads']} "
             f"thread(s) set in each runtime, median of {meta['runs']} timed runs after 5 warm-up, the models of a "
             f"runtime interleaved run by run; speed-ups over the base in the same rounds. 1-minute load average "
             f"during the timings: {meta['load'][0]:.1f} to {meta['load'][1]:.1f}.\n\n"
             f"Data: {meta['data']}. The jobs train at {meta['img_size']} px; the other sizes evaluate and time the "
             f"same weights (not retrained there).\n\n"
             f"- **ratio**: `{meta['ratio_command']}` (--percent auto: {meta['ratio_percent']})\n"
             f"- **budget**: `{meta['budget_command']}` (the latency-aware planner at the ratio job's own measured "
             f"ms on {LABELS.get(meta['runtime'], meta['runtime'])})\n"
             f"- **base**: the sparsity-trained model both were pruned from; **int8**: ONNX Runtime static "
             f"quantization of the final model (export.py --int8's recipe, {meta['calib_images']} training images)\n",
             "## Goals (issue 20)\n\n" + markdown_table(["goal", "verdict", "measured"], goals)]
    if meta.get("frontier"):
        rows = meta["frontier"]
        body = [[r["kind"], f"{r['ratio']:g}", f"{r['predicted_ms']:.2f}", f"{r['ms']:.2f} (x{r['base_ms'] / r['ms']:.2f})",
                 f"{r['flops'] / 1e9:.3f}", f"{r['removed_importance']:.4f}", f"{r['mAP']:.4f}"] for r in rows]
        parts.append(f"## The frontier before fine-tuning, at {meta['img_size']} px on "
                     f"{LABELS.get(meta['runtime'], meta['runtime'])}\n\nAt each ratio, the planner is asked for the "
                     f"ratio plan's own predicted ms (the same tables): *planner* as `--target-ms` runs it (only "
                     f"channels under the lowest |gamma| threshold that meets it), *unbounded* the same greedy search "
                     f"over every channel. All timed interleaved with the base; mAP@0.5 on the validation set, no "
                     f"fine-tuning.\n\n![frontier](photos_deploy_frontier.png)\n\n"
                     + markdown_table(["plan", "ratio", "predicted ms", "measured ms (speed-up)", "GFLOPs",
                                       "|gamma| removed (share)", "mAP@0.5"], body))
    for size, res in results.items():
        names = [n for n in res["mAP"]]
        header = ["model", "mAP@0.5", "params", "GFLOPs"] + [f"{LABELS.get(r, r)} ms (speed-up)" for r in res["ms"]]
        parts.append(f"## At {size} px\n\n" + markdown_table(header, speed_rows(res, names)))
    return "\n\n".join(parts) + "\n"


def write_page(args, results, meta):
    """The page, the .json beside it and the frontier figure, from measured results."""
    goals = verdicts(results, meta["img_size"], meta["budget"])
    if meta.get("frontier"):
        plot_frontier(meta["frontier"], results[meta["img_size"]]["mAP"]["base"],
                      os.path.join(os.path.dirname(args.out), "photos_deploy_frontier.png"), meta["runtime"])
    text = render(results, meta, goals)
    with atomic_write(args.out, "w") as f:
        f.write(text)
    with atomic_write(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({"results": {str(k): v for k, v in results.items()}, "meta": meta, "verdicts": goals}, f, indent=2)
    return text


def rewrite_page(args):
    return rewrite_from(os.path.splitext(args.out)[0] + ".json", lambda found: write_page(
        args, {int(k): v for k, v in found["results"].items()}, found["meta"]))


def main(argv=None):
    args = parse_args(argv)
    if args.report_only:
        print(rewrite_page(args) + f"\nwrote {args.out}")
        return
    t0 = time.time()
    from yoloslim.deploy.measure import cpu_model
    data = photo_set(args)
    ratio = job(args, data, args.ratio_run)
    ratio_ms = ratio["rows"]["pruned + fine-tuned"].get(f"{args.runtime}_ms")
    if ratio_ms is None:
        raise SlimError(f"{args.ratio_run}/report.json: the ratio job did not time {args.runtime}; rerun it with "
                        f"--runtime {args.runtime} among its runtimes")
    budget = job(args, data, args.budget_run, ["--target-ms", f"{ratio_ms:.2f}", "--runtime", args.runtime])
    (base, ratio_final), (budget_base, budget_final) = pairs(args.ratio_run), pairs(args.budget_run)
    if file_digest(base[1]) != file_digest(budget_base[1]):
        raise SlimError(f"{args.ratio_run} and {args.budget_run} pruned different base models ({base[1]}, "
                        f"{budget_base[1]}): compare jobs that share --run's transfer stage, or move both away")
    for name, run_dir in (("ratio", args.ratio_run), ("budget", args.budget_run)):    # the jobs' own reports
        os.makedirs(os.path.join(os.path.dirname(args.out), "photos_runs"), exist_ok=True)
        shutil.copy(os.path.join(run_dir, "report.md"), os.path.join(os.path.dirname(args.out), "photos_runs",
                                                                     f"{name}.md"))
    named = {"base": base, "ratio": ratio_final, "budget": budget_final}
    calib = os.path.join(os.path.dirname(os.path.abspath(data)), "images", "train")
    results = measure_all(args, data, named, calib if os.path.isdir(calib) else os.path.dirname(data))
    loads = [x for r in results.values() for x in r.pop("load", [])]
    rows = frontier(args, data, base) if args.frontier_ratios else []
    measured = budget["rows"]["pruned + fine-tuned"].get(f"{args.runtime}_ms")
    meta = {"argv": "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv)),
            "minutes": (time.time() - t0) / 60, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "job_minutes": {"ratio": ratio.get("job_seconds", 0) / 60, "budget": budget.get("job_seconds", 0) / 60},
            "machine": f"{cpu_model()}, {os.cpu_count()} cores", "threads": args.threads, "runs": args.runs,
            "load": [min(loads), max(loads)], "data": data, "img_size": args.img_size, "runtime": args.runtime,
            "ratio_command": ratio["command"], "budget_command": budget["command"],
            "ratio_percent": ratio.get("percent", "see its report"), "calib_images": args.calib_images,
            "frontier": rows,
            "budget": {"target": budget["budget"]["target"]["ms"], "measured": measured, "runtime": args.runtime}
            if budget.get("budget") and measured else None}
    text = write_page(args, results, meta)
    print(text + f"\nwrote {args.out}")


if __name__ == "__main__":
    cli_main(main)
