"""BENCHMARKS.md and its figures, from the results dict that run_benchmarks.py builds."""
import os

from bench_models import FINETUNE_EPOCHS, IMG_SIZE, LR0, SPEED_PER_FLOP, finetune_lr0
from yoloslim.io import atomic_write
from yoloslim.pipeline.stages import machine_line, markdown_table
from yoloslim.plots import pyplot, save_png

# The earlier toolkits' published figures (REFERENCE.md): Oxford hand data set, 416 px. Their
# timing hardware is not given there; 11.7 ms for full yolov3 at 416 is GPU territory.
PUBLISHED = [
    # toolkit and method, model, params before and after (M), mAP@0.5 before and after, ms before and after
    ("complete-pruning, normal", "yolov3", 61.5, 10.9, 0.7924, 0.7712, 11.7, 5.92),
    ("complete-pruning, regular", "yolov3", 61.5, 15.31, 0.7924, 0.7832, 11.7, 6.01),
    ("complete-pruning, extreme (shortcut)", "yolov3", 61.5, 7.13, 0.7924, 0.7382, 11.7, 5.90),
    ("complete-pruning, tiny", "yolov3-tiny", 8.7, 4.4, 0.6378, 0.6132, 2.2, 2.0),
    ("channel-and-layer, 0.93 (fine-tuned)", "yolov3-spp", 62.6, 1.19, 0.84, 0.793, 16.4, 6.3),
]
# which of our rows answers which published row: (our model, our method) by published method
OURS_FOR = {"complete-pruning, normal": ("narrow", "normal"),
            "complete-pruning, regular": ("narrow", "regular x8"),
            "complete-pruning, extreme (shortcut)": ("narrow", "shortcut"),
            "complete-pruning, tiny": ("tiny", "tiny (= normal)"),
            "channel-and-layer, 0.93 (fine-tuned)": ("narrow", "layer+channel")}

CONVERGED_MAP50 = 0.5   # the bar for the narrow model; below it accuracy rows are not evidence
FIGURES = {"sweep": "ratio_sweep.png", "gammas": "gamma_before_after.png"}


def fmt(value, spec=".4f"):
    return "-" if value is None or value != value else format(value, spec)


# ----------------------------------------------------------------------------- judging rows
def best_finetune(row):
    """(mAP, recipe) of the better fine-tune: a user keeps whichever recipe scored higher."""
    kd, plain = row.get("mAP50_kd", float("nan")), row.get("mAP50_plain", float("nan"))
    return (kd, "distilled") if kd >= plain or plain != plain else (plain, "plain")


def judge(row, original, targets):
    """Each target of a row as (name, wanted, measured, met)."""
    cut = 1 - row["params"] / original["params"]
    speed = row["opencv_ms_original"] / row["opencv_ms"]
    flop_cut = original["GFLOPs"] / row["GFLOPs"]
    tuned, recipe = best_finetune(row)
    change = tuned - original["mAP50"]
    return [("fewer parameters", f">= {targets['params_cut']:.0%}", f"{cut:.1%}", cut >= targets["params_cut"]),
            ("OpenCV speed-up", f">= x{targets['speedup']:.1f}", f"x{speed:.2f}", speed >= targets["speedup"]),
            ("mAP@0.5 change after fine-tune", f">= -{targets['max_drop']}",
             f"{change:+.4f} ({recipe})", change >= -targets["max_drop"]),
            ("speed-up / FLOP cut", f">= {SPEED_PER_FLOP}", f"{speed / flop_cut:.2f}", speed / flop_cut >= SPEED_PER_FLOP)]


def what_was_tried(name, row, result, sweep):
    """For a not-met target: what the run tried, from its own numbers."""
    original = result["original"]
    if name == "fewer parameters" or name == "OpenCV speed-up":
        ok = [p for p in (sweep or {}).get("points", []) if "mAP50" in p and original["mAP50"] - p["mAP50"] <= 0.05]
        reach = max(ok, key=lambda p: p["percent"]) if ok else None
        return (f"the fixed ratio {row['percent']}" + (f" with {row['blocks']} blocks removed" if row["blocks"] else "")
                + (f"; the {sweep['policy']} sweep kept mAP within 0.05 before fine-tuning up to {reach['percent']} "
                   f"({1 - reach['params'] / original['params']:.0%} fewer parameters)" if reach else ""))
    if name.startswith("mAP"):
        return (f"{row['finetune_epochs']} fine-tune epochs with distillation ({fmt(row.get('mAP50_kd'))}) and without "
                f"({fmt(row.get('mAP50_plain'))}) from {fmt(row['mAP50'])} right after pruning, starting at lr0 "
                f"{finetune_lr0(result['lrf']):g}")
    return (f"OpenCV {row['opencv_ms_original']:.2f} -> {row['opencv_ms']:.2f} ms for a FLOP cut of "
            f"x{original['GFLOPs'] / row['GFLOPs']:.2f}; likely the per-layer cost that removing channels "
            f"does not remove")


def tried_lines(row, missed, result, sweep):
    """One line per distinct explanation: targets missed for the same reason share it."""
    by_text = {}
    for target in missed:
        by_text.setdefault(what_was_tried(target, row, result, sweep), []).append(target)
    return [f"- {row['method']}, not met ({', '.join(targets)}): tried {text}" for text, targets in by_text.items()]


def targets_section(results):
    """Per model, one table row per method with each target's measured value and verdict, then
    what was tried for every target not met."""
    parts = []
    for name, result in results["models"].items():
        sweep, header, rows, tried = results.get("sweep", {}).get(name), None, [], []
        for row in result["rows"]:
            if "error" in row:
                tried.append(f"- {row['method']}: not measured ({row['error']})")
                continue
            verdicts = judge(row, result["original"], result["targets"])
            header = header or ["method"] + [f"{target} {wanted}" for target, wanted, _, _ in verdicts]
            rows.append([row["method"]] + [f"{got}, **{'met' if met else 'not met'}**" for _, _, got, met in verdicts])
            tried += tried_lines(row, [t for t, _, _, met in verdicts if not met], result, sweep)
        caveat = (" Under-trained (mAP@0.5 below 0.5): the mAP column is not evidence about pruning."
                  if under_trained(result) else "")
        parts.append(f"### {result['title']} ({result['targets']['label']} targets)\n\nUnpruned mAP@0.5 "
                     f"{result['original']['mAP50']:.4f}.{caveat}\n\n"
                     + (markdown_table(header, rows) if rows else "No method pruned this model.") + "\n\n"
                     + "\n".join(tried) + "\n")
    return "\n".join(parts)


# ----------------------------------------------------------------------------- tables
def method_table(result):
    o = result["original"]
    rows = [[o["method"], f"{o['params']:,}", f"{o['GFLOPs']:.3f}", fmt(o.get("opencv_ms"), ".2f"),
             fmt(o.get("torch_ms"), ".2f"), "-", fmt(o["mAP50"]), "1.0000", "-", "-", "-"]]
    for r in result["rows"]:
        if "error" in r:
            rows.append([r["method"], f"not pruned: {r['error']}"] + ["-"] * 9)
            continue
        speed, flop_cut = r["opencv_ms_original"] / r["opencv_ms"], o["GFLOPs"] / r["GFLOPs"]
        label = f"{r['method']} {r['percent']}" + (f" + {r['blocks']} blocks" if r["blocks"] else "")
        rows.append([label, f"{r['params']:,} (-{1 - r['params'] / o['params']:.0%})", f"{r['GFLOPs']:.3f}",
                     f"{r['opencv_ms']:.2f} (x{speed:.2f})",
                     f"{r['torch_ms']:.2f} (x{r['torch_ms_original'] / r['torch_ms']:.2f})",
                     f"{speed / flop_cut:.2f}", fmt(r["mAP50"]), fmt(r["agreement"]), fmt(r["mAP50_kd"]),
                     fmt(r["mAP50_plain"]), fmt(r["agreement_kd"])])
    return markdown_table(["method, ratio", "params", "GFLOPs", "OpenCV ms", "PyTorch ms", "speed-up / FLOP cut",
                           "mAP@0.5 pruned", "agreement pruned", "mAP@0.5 fine-tuned (KD)",
                           "fine-tuned (no KD)", "agreement (KD)"], rows)


def under_trained(result):
    return result["original"]["mAP50"] < CONVERGED_MAP50


def model_section(result):
    g = result["gamma_stats"]
    start = "the real COCO yolov3-tiny weights" if result["start"] == "coco-tiny" else "scratch"
    notes = "".join(f" {n[0].upper()}{n[1:]}." for n in result["notes"])
    lr = "a constant LR" if result["lrf"] == 1 else f"a cosine LR to {result['lrf']} x lr0"
    return (f"### {result['title']}\n\nTrained from {start} for {result['epochs']} epochs (batch 8, Adam lr0 {LR0}, "
            f"{lr}) with L1 sparsity s={result['s']} on the prunable BN gammas throughout "
            f"({result['train_minutes']:.1f} min of training, summed over its epochs); its pruned models are "
            f"fine-tuned from the LR its training ended at, {finetune_lr0(result['lrf']):g}. "
            f"Prunable gammas below 1e-2 after training: **{g.get('frac_below_1e-2', 0):.1%}** of {g.get('n', 0)} "
            f"(median |gamma| {g.get('q50', 0):.3f}).{notes}"
            + (f" **Under-trained: mAP@0.5 {result['original']['mAP50']:.4f} is below {CONVERGED_MAP50}, so its "
               f"accuracy columns are not evidence about pruning; its size and speed columns are.**"
               if under_trained(result) else "") + f"\n\n{method_table(result)}\n")


def sweep_section(results, figures_rel):
    rows = []
    for name, sweep in results["sweep"].items():
        o = sweep["original"]
        for p in sweep["points"]:
            if "error" in p:
                rows.append([name, sweep["policy"], p["percent"], "-", "-", f"not pruned: {p['error']}"])
            else:
                rows.append([name, sweep["policy"], p["percent"], f"{p['params']:,} (-{1 - p['params'] / o['params']:.0%})",
                             f"{p['GFLOPs']:.3f}", f"{p['mAP50']:.4f} (unpruned {o['mAP50']:.4f})"])
    return ("## Ratio sweep (no fine-tuning)\n\n"
            f"![mAP@0.5 right after pruning against the share of parameters kept]({figures_rel}/{FIGURES['sweep']})\n\n"
            + markdown_table(["model", "policy", "ratio", "params", "GFLOPs", "mAP@0.5 right after pruning"], rows) + "\n")


def iterative_section(it):
    one, itr = it["one_shot"], it["iterative"]
    rows = [[f"one shot at {it['percent']}, then {one['epochs']} fine-tune epochs", f"{one['params']:,}",
             f"{one['GFLOPs']:.3f}", fmt(one["mAP50"])],
            [f"{it['cycles']} cycles of {it['step_percent']:.3f} + {it['epochs_per_cycle']} epochs each",
             f"{itr['params']:,}", f"{itr['GFLOPs']:.3f}", fmt(itr["mAP50"])]]
    steps = "; ".join(f"cycle {h['cycle']}: {h['params']:,} params, mAP@0.5 {fmt(h['mAP50_pruned'])} pruned, "
                      f"{fmt(h['mAP50_tuned'])} tuned" for h in it["history"])
    return (f"### {it['model']}, {it['policy']} policy\n\n{steps}.\n\n"
            + markdown_table(["schedule", "params", "GFLOPs", "mAP@0.5 final"], rows) + "\n")


def input_size_section(study):
    rows = [[r["model"], r["img_size"], f"{r['GFLOPs']:.3f}", f"{r['opencv_ms']:.2f}", f"{r['torch_ms']:.2f}",
             fmt(r["mAP50"])] for r in study["rows"]]
    return (f"## Input size ({study['model']}, trained at {study['trained_at']} px)\n\nThe validation images are "
            f"{study['trained_at']} px; other sizes letterbox them up or down. Latency medians, not interleaved.\n\n"
            + markdown_table(["model", "input px", "GFLOPs", "OpenCV ms", "PyTorch ms", "mAP@0.5"], rows) + "\n")


def surgery_section(s):
    return (f"## Prune surgery time\n\nAnalysis, masks, compensation, compact build and .cfg/.weights write, random "
            f"weights, 416 px; `{s['command']}` on {s['machine']}. Earlier toolkits: 0.6-1.2 s on yolov3, 0.13 s on "
            f"yolov3-tiny (REFERENCE.md).\n\n" + markdown_table(
                ["cfg", "policy", "median s", "min s", "max s", "runs"],
                [[r["cfg"], r["policy"], f"{r['median_s']:.3f}", f"{r['min_s']:.3f}", f"{r['max_s']:.3f}", r["runs"]]
                 for r in s["rows"]]) + "\n")


def published_section(results):
    rows = []
    for label, model, p0, p1, m0, m1, t0, t1 in PUBLISHED:
        rows.append([f"{label} (published)", model, f"{p1 / p0:.1%}", f"x{t0 / t1:.2f}", f"{m1 - m0:+.4f}",
                     "Oxford hand, 416 px, their hardware (not named in REFERENCE.md)"])
        ours = OURS_FOR.get(label)
        result = results["models"].get(ours[0]) if ours else None
        row = next((r for r in (result or {}).get("rows", []) if r["method"] == ours[1] and "error" not in r), None)
        if row:
            o = result["original"]
            tuned, recipe = best_finetune(row)
            rows.append([f"this run: {row['method']} {row['percent']}", ours[0], f"{row['params'] / o['params']:.1%}",
                         f"x{row['opencv_ms_original'] / row['opencv_ms']:.2f}", f"{tuned - o['mAP50']:+.4f} ({recipe})",
                         f"synthetic shapes, {IMG_SIZE} px, OpenCV DNN on this CPU"])
    return ("## Beside the earlier toolkits' published figures\n\nRatios only: their rows are full yolov3 / -spp / "
            "-tiny on the Oxford hand data set at 416 px, timed on hardware REFERENCE.md does not name; ours are "
            "this run's models on the synthetic set at 160 px on the CPU above. Different models, data and machines: "
            "read the ratios, not the absolute figures.\n\n"
            + markdown_table(["method", "model", "params kept", "speed-up", "mAP@0.5 change after fine-tune",
                              "data, hardware"], rows) + "\n")


def finetune_epochs(results):
    return next((r["finetune_epochs"] for m in results["models"].values() for r in m["rows"] if "finetune_epochs" in r),
                FINETUNE_EPOCHS)


def stage_line(results):
    if "jobs" not in results:
        return ""
    return (f"Training and fine-tuning stages ran {results['jobs']} at a time, each in its own process on "
            f"{results['stage_threads']} thread(s); pruning, timing and the input-size study ran alone. ")


def write_report(args, results):
    figures_rel = os.path.relpath(args.figures, os.path.dirname(os.path.abspath(args.out)) or ".")
    d = results["data"]
    quick = ("\n**This is a --quick smoke run: its models are barely trained and its numbers mean nothing.**\n"
             if results.get("quick", args.quick) else "")
    runs = results.get("latency_runs", args.latency_runs)
    parts = [f"# Benchmarks (second edition)\n{quick}\nThe accuracy edition: trained at 160 px, timed in OpenCV DNN and "
             f"PyTorch. The deployment-speed edition (third) is BENCHMARKS.md, written by "
             f"`python benchmarks/deploy_benchmarks.py`.\n\nWritten by `{results['command']}` in "
             f"{results['wall_min']:.0f} min (this invocation; training stages found in its cache are reused, not "
             f"re-timed: each model's own training time is given below). Machine: "
             f"{results.get('machine') or machine_line()}. {stage_line(results)}"
             f"Data: the built-in synthetic shapes set, {d['n_train']} training and {d['n_val']} validation images at "
             f"{d['img_size']} px; mAP@0.5 on all validation images. Latency: batch 1 on the CPU, median of "
             f"{runs} runs after 5 warm-up runs; each pruned model is timed interleaved with its unpruned "
             f"model (one forward each per round, same process), so speed-ups hold even when the machine's load "
             f"drifts. Agreement: mAP@0.5 of the pruned model against the unpruned model's own detections at conf "
             f"0.25 (`test.py --reference-cfg`), no labels needed. Fine-tuning: {finetune_epochs(results)} epochs, with "
             f"distillation from the unpruned model (KD) and without.\n",
             "## Targets\n\nEach pruned row against its model's targets; the mAP change is that of the better of "
             "the two fine-tunes (a user keeps whichever scored higher), against the unpruned model.\n\n"
             + targets_section(results),
             "## Methods\n\n" + "\n".join(model_section(r) for r in results["models"].values()),
             f"![|gamma| before and after sparsity training]({figures_rel}/{FIGURES['gammas']})\n"]
    if "sweep" in results:
        parts.append(sweep_section(results, figures_rel))
    if "iterative" in results:
        parts.append("## Iterative against one-shot\n\nEach cycle removes the share of what is left that would reach the "
                     "one-shot channel count (the global threshold over a retrained model lands elsewhere: compare the "
                     "params); the same number of fine-tune epochs; distillation from the unpruned model in both; the sparsity penalty stays on between "
                     "cycles.\n\n" + "\n".join(iterative_section(it) for it in results["iterative"]))
    if "input_size" in results:
        parts.append(input_size_section(results["input_size"]))
    if "surgery" in results:
        parts.append(surgery_section(results["surgery"]))
    parts.append(published_section(results))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with atomic_write(args.out, "w") as f:
        f.write("\n".join(parts))


# ----------------------------------------------------------------------------- figures
def plot_sweep(results, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, sweep in results["sweep"].items():
        o, pts = sweep["original"], [p for p in sweep["points"] if "mAP50" in p]
        line, = ax.plot([p["params"] / o["params"] for p in pts], [p["mAP50"] for p in pts], "o-",
                        label=f"{name} ({sweep['policy']})")
        ax.axhline(o["mAP50"], color=line.get_color(), linestyle=":", linewidth=1)
        for p in pts:
            ax.annotate(f"{p['percent']}", (p["params"] / o["params"], p["mAP50"]), fontsize=7)
    ax.set_xlabel("share of parameters kept")
    ax.set_ylabel("mAP@0.5 right after pruning")
    ax.set_title("Ratio sweep (labels: ratio; dotted: unpruned)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def plot_gammas(results, path):
    """Per model, |gamma| before and after sparsity training on a log axis, where a collapse shows
    as a pile at the left edge (values below 1e-4 are drawn in the first bin)."""
    plt = pyplot()
    models = list(results["models"].values())
    fig, axes = plt.subplots(len(models), 2, figsize=(8, 2.2 * len(models)), squeeze=False)
    for row_axes, r in zip(axes, models):
        h = r["gamma_histograms"]
        origin = "with the COCO weights" if r["start"] == "coco-tiny" else "at initialisation"
        for ax, counts, share, when in zip(row_axes, h["counts"], h["below_1e-2"], ("before", "after")):
            ax.stairs(counts, h["edges"], fill=True, color="#3b6ea8" if when == "before" else "#c0504d")
            ax.set_title(f"{r['spec']}: {origin if when == 'before' else 'after sparsity training'} "
                         f"({share:.0%} < 1e-2)", fontsize=9)
            ax.set_xscale("log")
            ax.axvline(1e-2, color="k", linestyle=":", linewidth=1)
            ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("|gamma| of the prunable BNs (dotted: 1e-2)", fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def write_figures(results, folder):
    os.makedirs(folder, exist_ok=True)
    if results["models"]:
        plot_gammas(results, os.path.join(folder, FIGURES["gammas"]))
    if results.get("sweep"):
        plot_sweep(results, os.path.join(folder, FIGURES["sweep"]))
