"""BENCHMARKS.md's third edition (deployment speed) and its figure, from the results dict that
deploy_benchmarks.py builds. A function of that dict alone: ``--report-only`` writes it again.
"""
import json
import os

from yoloslim.io import atomic_write
from yoloslim.pipeline.stages import markdown_table
from yoloslim.plots import pyplot, save_png

SPEED_PER_FLOP = 0.8      # issue 20: every runtime's speed-up at least this share of the FLOP cut
RESIDUAL_ORT = 4.0        # residual yolov3 (narrow and full) on ONNX Runtime
TINY_BEST = 2.0           # yolov3-tiny on its best runtime
INT8_ON_TOP = 1.5         # int8 over the float pruned model
BUDGET_TOLERANCE = 0.10   # --target-ms lands within 10 % of the budget
RESIDUAL = ("narrow", "yolov3")
RUNTIME_NAMES = {"opencv": "OpenCV DNN", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "torch": "PyTorch"}
FIGURE = "deploy_profile.png"
SECOND_EDITION = "second_edition.md"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPANIONS = ("photos_deploy", "speed_ceiling")   # benchmarks whose results files the goals table quotes
KIND_ORDER = ("first conv", "stride-2 conv", "stride-1 3x3 conv", "1x1 conv", "non-conv")


def rt(name):
    return RUNTIME_NAMES.get(name, name)


def speedup(timing):
    return timing["original"]["median"] / timing["pruned"]["median"]


def verdict(ok):
    return "**met**" if ok else "**not met**"


def timed_rows(result):
    return [r for r in result["rows"] if r.get("timing")]


# ----------------------------------------------------------------------------- goals
def goals(results, second_edition=SECOND_EDITION):
    """[(goal, verdict, evidence)] for the issue's speed goals this script measures."""
    models, out = results["models"], []
    ort = [(name, max(((speedup(r["timing"]["onnxruntime"]), r["method"]) for r in timed_rows(models[name])
                       if "onnxruntime" in r["timing"]), default=None)) for name in RESIDUAL if name in models]
    ort = [(n, best) for n, best in ort if best]
    if ort:
        out.append((f"residual yolov3 >= x{RESIDUAL_ORT:g} on ONNX Runtime",
                    verdict(all(b[0] >= RESIDUAL_ORT for _, b in ort)),
                    "; ".join(f"{n}: best x{b[0]:.2f} ({b[1]})" for n, b in ort)))
    cells = [(speedup(t) / r["flop_cut"], name, r["method"], runtime) for name, m in models.items()
             for r in timed_rows(m) for runtime, t in r["timing"].items()]
    if cells:
        low = min(cells)
        ok = [c for c in cells if c[0] >= SPEED_PER_FLOP]
        out.append((f"speed-up >= {SPEED_PER_FLOP} of the FLOP cut on every runtime", verdict(len(ok) == len(cells)),
                    f"{len(ok)} of {len(cells)} method x runtime cells; lowest {low[0]:.2f} ({low[1]} {low[2]}, "
                    f"{rt(low[3])})"))
    if "tiny" in models:
        best = max(((speedup(t), r["method"], runtime) for r in timed_rows(models["tiny"])
                    for runtime, t in r["timing"].items()), default=None)
        if best:
            out.append((f"yolov3-tiny >= x{TINY_BEST:g} on its best runtime", verdict(best[0] >= TINY_BEST),
                        f"best x{best[0]:.2f} ({best[1]}, {rt(best[2])})"))
    int8 = [(on_top(row, runtime), row["model"], runtime) for row in results.get("int8") or []
            for runtime in row["timing"]]
    if int8:
        per_model = {}
        for value, model, runtime in int8:
            per_model[model] = max(per_model.get(model, (0, "")), (value, runtime))
        out.append((f"INT8 >= x{INT8_ON_TOP:g} on top of pruning (on the model's best runtime)",
                    verdict(all(v[0] >= INT8_ON_TOP for v in per_model.values())),
                    "; ".join(f"{m}: x{v[0]:.2f} ({rt(v[1])})" for m, v in per_model.items())))
    planner = [p for p in results.get("planner") or [] if isinstance(p, dict)]
    if planner:
        landed = [p for p in planner if "timing" in p]
        misses = [abs(p["timing"]["latency-aware"]["median"] / p["target_ms"] - 1) for p in landed]
        out.append((f"the planner's plan lands within {BUDGET_TOLERANCE:.0%} of the ms budget",
                    verdict(len(landed) == len(planner) and max(misses) <= BUDGET_TOLERANCE),
                    "; ".join(f"{p['model']}: {p['timing']['latency-aware']['median']:.2f} ms for a "
                              f"{p['target_ms']:.2f} ms budget" if "timing" in p else
                              f"{p['model']}: no plan for a {p['target_ms']:.2f} ms budget" for p in planner)))
    out.append(("mAP@0.5 loss <= 0.01 (every goal above)", "not measured here",
                "this script times; accuracy after pruning and fine-tuning is in the "
                f"[second edition]({second_edition}), in `slim.py`'s reports and, for yolov3-tiny on real "
                "photographs, in the rows marked *own data* below"))
    return out


def read_companions(folder):
    """{name: results} of the companion benchmarks whose results files are in ``folder``."""
    found = {}
    for name in COMPANIONS:
        path = os.path.join(folder, name + ".json")
        if os.path.isfile(path):
            with open(path) as f:
                found[name] = json.load(f)
    return found


def companion_goals(companions, folder_rel):
    """Goal rows the companion benchmarks measured: accuracy after fine-tuning on real photographs
    (photos_deploy) and the fastest any channel plan can run (speed_ceiling)."""
    rows = []
    photos = companions.get("photos_deploy")
    if photos:
        link = f"[own data]({folder_rel}/photos_deploy.md)"
        rows += [(goal, f"**{v}**", f"*own data*: {measured} ({link})") for goal, v, measured in photos["verdicts"]]
    ceiling = companions.get("speed_ceiling")
    if ceiling:
        best = {}
        for r in ceiling["rows"]:
            if r["model"] in RESIDUAL and r["runtime"] == "onnxruntime":
                key = (r["model"], r["multiple"] == r["planner_multiple"])
                best[key] = max(best.get(key, (0.0, "")), (r["original_ms"] / r["floor_ms"], r["policy"]))
        models = sorted({m for m, _ in best})
        if models:
            rows.append((f"x{RESIDUAL_ORT:g} on ONNX Runtime is within the ceiling of channel pruning (every "
                         f"prunable layer at its floor)", "**yes**" if all(best[(m, True)][0] >= RESIDUAL_ORT
                                                                          for m in models if (m, True) in best)
                         else "**no**",
                         "; ".join(f"{m}: x{best[(m, True)][0]:.2f} ({best[(m, True)][1]}, counts in multiples of 8)"
                                   + (f", x{best[(m, False)][0]:.2f} in any count" if (m, False) in best else "")
                                   for m in models if (m, True) in best)
                         + f" ([ceiling]({folder_rel}/speed_ceiling.md))"))
    return rows


def on_top(row, runtime):
    t = row["timing"][runtime]
    return t["pruned"]["median"] / t["pruned int8"]["median"]


# ----------------------------------------------------------------------------- tables
def ratio_text(row):
    ratio = f"{row['percent']:g}" if row.get("percent") is not None else ""
    return f"{row['method']} {ratio}" + (f" + {row['blocks']} blocks" if row.get("blocks") else "")


def ms_text(t):
    return f"{t['median']:.2f} ({t['p10']:.2f}-{t['p90']:.2f})"


def model_section(name, result, runtimes):
    lines = [f"### {result['title']} at {result['img_size']} px", "",
             f"Weights: {result['origin']}.", ""]
    header = ["method, ratio", "params", "GFLOPs", "FLOP cut"] + [f"{rt(r)} speed-up" for r in runtimes] \
        + [f"{rt(r)} / FLOP cut" for r in runtimes]
    base = result["original"]
    rows = [["original", f"{base['params']:,}", f"{base['GFLOPs']:.3f}", "-"] + ["-"] * (2 * len(runtimes))]
    detail = [["original"] + [ms_text(base["timing"][r]) if r in base["timing"] else "-" for r in runtimes]]
    errors = []
    for row in result["rows"]:
        if "error" in row:
            errors.append(f"- {ratio_text(row)}: not pruned ({row['error']})")
            continue
        t = row["timing"]
        rows.append([ratio_text(row), f"{row['params']:,} (-{1 - row['params'] / base['params']:.0%})",
                     f"{row['GFLOPs']:.3f}", f"x{row['flop_cut']:.2f}"]
                    + [f"x{speedup(t[r]):.2f}" if r in t else "-" for r in runtimes]
                    + [share_text(speedup(t[r]) / row["flop_cut"]) if r in t else "-" for r in runtimes])
        detail.append([ratio_text(row)] + [ms_text(t[r]["pruned"]) if r in t else "-" for r in runtimes])
    lines += [markdown_table(header, rows), "", "Median ms (p10-p90) of the same runs; the original's row is its "
              "timing in the same interleaved rounds as every pruned row:", "",
              markdown_table(["method, ratio"] + [f"{rt(r)} ms" for r in runtimes], detail), ""]
    return lines + errors + ([""] if errors else [])


def share_text(share):
    return f"{share:.2f}" + ("" if share >= SPEED_PER_FLOP else " (below 0.8)")


def int8_section(results):
    rows = results.get("int8") or []
    if not rows:
        return ["## INT8 on top of pruning", "", results.get("int8_note", "Not measured in this run."), ""]
    lines = ["## INT8 on top of pruning", "",
             "The x8-rounded prune (`regular x8`) exported to ONNX and quantized by the project's int8 path "
             "(`yoloslim/deploy/int8.py`, `export.py --int8`: ONNX Runtime static quantization, QDQ, int8 weights "
             "per output channel, the heads float, percentile ranges), calibrated on real photographs that "
             "installed packages ship (`yoloslim/data/photo_sources.py`). The QDQ model runs in ONNX Runtime and "
             "in OpenVINO (which reads it as int8); the three models of a runtime interleaved. Agreement: mAP@0.5 of "
             "the int8 model against the float pruned model's detections at conf 0.25 (1.0 = the same boxes).", ""]
    header = ["model", "runtime", "float original ms", "float pruned ms", "int8 pruned ms",
              "int8 over float pruned", "int8 over float original", "agreement with float"]
    table = []
    for row in rows:
        a = row["agreement"]
        agree = "n/a (the float model found nothing)" if a["score"] != a["score"] else \
            f"{a['score']:.4f} ({a['images']} images, {a['reference_boxes']} float boxes, {a['on']})"
        for runtime, t in row["timing"].items():
            table.append([row["model"], rt(runtime), ms_text(t["original"]), ms_text(t["pruned"]),
                          ms_text(t["pruned int8"]), f"x{on_top(row, runtime):.2f}",
                          f"x{t['original']['median'] / t['pruned int8']['median']:.2f}", agree])
    calib = {row["model"]: row["calibration"] for row in rows}
    return lines + [markdown_table(header, table), "",
                    "Calibration: " + "; ".join(f"{m} on {c}" for m, c in calib.items()) + ".", ""]


def planner_section(results):
    planner = results.get("planner")
    lines = ["## Latency-aware against gamma-only, at the same measured budget", ""]
    if not isinstance(planner, list):
        return lines + [f"Not measured: {planner or 'skipped'}.", ""]
    lines += ["The budget is the gamma-only prune's measured median ms on the runtime named; "
              "`yoloslim.prune.latency_plan.plan_to_budget(model, policy, runtime, size, threads, target_ms=...)` "
              "plans to it; both pruned models are then timed interleaved with the original. Importance removed: "
              "the share of the prunable channels' |gamma| each plan removed, summed over every conv of its "
              "plan, counted the same way for both (the planner's own share, per unit, and its predicted ms beside "
              "it)." + (f" Measured for {', '.join(results['planner_models'])} (`--planner-models`)."
                     if results.get("planner_models") else ""), ""]
    header = ["model", "runtime", "budget ms", "plan", "params", "GFLOPs", "importance removed",
              "measured ms (p10-p90)", "speed-up"]
    table, refused = [], []
    for p in planner:
        if "timing" not in p:
            refused.append(f"- {p['model']} ({p['method']}, {rt(p['runtime'])}, budget {p['target_ms']:.2f} ms): "
                           f"the planner made no plan: {p['error']}")
            continue
        base = p["timing"]["original"]["median"]
        for plan in ("gamma-only", "latency-aware"):
            d, t = p[plan], p["timing"][plan]
            removed = "-" if d["removed_importance"] is None else f"{d['removed_importance']:.4f}"
            if plan == "latency-aware" and p["budget"].get("removed_share") is not None:
                removed += f" (planner's own count: {p['budget']['removed_share']:.4f})"
            if plan == "latency-aware" and p["budget"].get("predicted_ms") is not None:
                removed += f"; predicted {p['budget']['predicted_ms']:.2f} ms"
            table.append([p["model"], rt(p["runtime"]), f"{p['target_ms']:.2f}", f"{plan} ({p['method']})",
                          f"{d['params']:,}", f"{d['GFLOPs']:.3f}", removed, ms_text(t), f"x{base / t['median']:.2f}"])
    return lines + ([markdown_table(header, table), ""] if table else []) + refused + ([""] if refused else [])


def group_order(keys, kind):
    if kind == "by_kind":
        return [k for k in KIND_ORDER if k in keys] + sorted(k for k in keys if k not in KIND_ORDER)
    return sorted(keys, key=lambda r: -int(r.split("x")[0]) if r[0].isdigit() else 1)


def profile_section(results, figure_rel):
    prof = results.get("profile")
    lines = ["## Why the residual speed-up stops where it does: the per-layer profile", ""]
    if not prof:
        return lines + ["Not measured in this run (needs the narrow model and OpenCV).", ""]
    o, p = prof["original"], prof["pruned"]
    total = o["total_ms"] / p["total_ms"]
    lines += [f"{prof['model']} at {prof['img_size']} px, original against its `{prof['method']}` prune, OpenCV DNN's "
              f"per-layer timer (`net.getPerfProfile()`, BN and activation fused into their conv), median per layer "
              f"of the interleaved runs; its sum {o['total_ms']:.2f} -> {p['total_ms']:.2f} ms, x{total:.2f}.", "",
              f"![per-layer time, original and pruned]({figure_rel})", ""]
    for kind, label in (("by_kind", "layer kind"), ("by_res", "output resolution")):
        keys = group_order(set(o[kind]) | set(p[kind]), kind)
        gk = "gflops_" + kind
        rows = []
        for k in keys:
            a, b = o[kind].get(k, 0.0), p[kind].get(k, 0.0)
            fa, fb = o[gk].get(k, 0.0), p[gk].get(k, 0.0)
            rows.append([k, f"{a:.2f} ({a / o['total_ms']:.0%})", f"{b:.2f} ({b / p['total_ms']:.0%})",
                         f"x{a / b:.2f}" if b > 0 else "-", f"{fa:.3f} -> {fb:.3f}",
                         f"x{fa / fb:.2f}" if fb > 0 else "-", gflops_rate(fa, a) + " -> " + gflops_rate(fb, b)])
        lines += [markdown_table([label, "original ms (share)", "pruned ms (share)", "speed-up", "GFLOPs",
                                  "FLOP cut", "GFLOP/s"], rows), ""]
    lines += explanation(prof) + [""]
    return lines


def gflops_rate(gflops, ms):
    return f"{gflops / ms * 1000:.1f}" if ms > 0 and gflops > 0 else "-"


def explanation(prof):
    """What caps the speed-up, in sentences built from the measured groups."""
    o, p = prof["original"], prof["pruned"]
    fixed = ("first conv", "stride-2 conv")
    of, pf = sum(o["by_kind"].get(k, 0) for k in fixed), sum(p["by_kind"].get(k, 0) for k in fixed)
    size = prof["img_size"]
    high = [r for r in p["by_res"] if r[0].isdigit() and int(r.split("x")[0]) >= size // 4]
    ph = sum(p["by_res"][r] for r in high)
    nonconv = p["by_kind"].get("non-conv", 0.0) / p["total_ms"]
    s1 = [k for k in o["by_kind"] if k.startswith("stride-1") and k != "1x1 conv"]
    rate = {k: (o["gflops_by_kind"].get(k, 0), o["by_kind"].get(k, 0)) for k in ("stride-2 conv", *s1)}
    text = (f"The first conv and the stride-2 downsampling convs are {of / o['total_ms']:.0%} of the original's time and "
            f"{pf / p['total_ms']:.0%} of the pruned model's: pruning cut the rest by "
            f"x{(o['total_ms'] - of) / max(p['total_ms'] - pf, 1e-9):.2f} but these by x{of / max(pf, 1e-9):.2f} "
            f"(the first conv reads the 3 image channels, which no method prunes). Were everything else free, "
            f"their pruned time alone would cap the speed-up at x{o['total_ms'] / max(pf, 1e-9):.2f}; the layers at "
            f"{size // 4}x{size // 4} and above ({', '.join(group_order(high, 'by_res'))}) cap it at "
            f"x{o['total_ms'] / max(ph, 1e-9):.2f}. Non-conv layers are {nonconv:.0%} of the pruned time, so "
            f"per-layer overhead is not what stops it.")
    rates = [f"{k} {gflops_rate(*rate[k])} GFLOP/s" for k in rate if rate[k][1] > 0 and rate[k][0] > 0]
    if rates:
        text += " Per-FLOP speed in the original: " + ", ".join(rates) + "."
    return [text]


# ----------------------------------------------------------------------------- the whole report
def how_measured(results):
    return (f"Machine: {results['machine']}; {results['versions']}. Every timing: batch 1, "
            f"**{results['threads']} thread** set in each runtime, median of {results['runs']} timed runs "
            + (f"({results['full_runs']} for full yolov3) " if "yolov3" in results["models"]
               and results.get("full_runs", results["runs"]) != results["runs"] else "")
            + f"after {results['warmup']} warm-up, each pruned model interleaved run by run with its original in one process "
            f"(`yoloslim/deploy/latency.py`, `compare`), p10-p90 in brackets. FLOPs count a multiply-add as 2 "
            f"(Darknet's count). 1-minute load average during the run: {results['load'][0]:.1f} to "
            f"{results['load'][1]:.1f}.")


def render(results, figure_rel=FIGURE, second_edition=SECOND_EDITION, companions=None, companions_rel="."):
    """The third edition as markdown; ``companions``: read_companions' results, quoted in the goals
    table and linked in ``companions_rel``."""
    runtimes = results["runtimes"]
    lines = ["# Benchmarks (third edition: deployment speed)", "",
             f"Written by `{results['command']}` in **{results['wall_min']:.1f} min** (wall time of this invocation, "
             f"{results['date']}" + ("; per model, every section included: " + ", ".join(
                 f"{name} {m:.1f} min" for name, m in results["minutes"].items()) if results.get("minutes") else "")
             + "). " + how_measured(results), ""]
    if results.get("quick"):
        lines += ["**A smoke run (--quick): its numbers mean nothing.**", ""]
    lines += [f"Each model is pruned by every method its graph allows at the second edition's ratios (no fine-tuning: "
              f"only size and speed are measured here) and timed on {', '.join(rt(r) for r in runtimes)}. The earlier "
              f"editions' accuracy tables: [second edition]({second_edition}).", "", "## Goals (issue 20)", "",
              markdown_table(["goal", "verdict", "measured"], [list(g) for g in goals(results, second_edition)
                                                               + companion_goals(companions or {}, companions_rel)]),
              "",
              "## Every method x runtime", ""]
    for name, result in results["models"].items():
        lines += model_section(name, result, runtimes)
    training = next((m["training"] for m in results["models"].values() if m.get("training")), None)
    if training:
        lines += [f"Narrow model's training stage: {training['folder']}, {training['epochs']} epochs, "
                  f"{training['wall_min']:.1f} min of this invocation "
                  f"({'cached' if training['cached'] else 'trained now'}).", ""]
    lines += int8_section(results) + planner_section(results) + profile_section(results, figure_rel)
    return "\n".join(lines).rstrip() + "\n"


def write_figure(results, folder):
    """Stacked bars of per-layer time, original and pruned, by kind and by resolution."""
    prof = results.get("profile")
    if not prof:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, kind, title in zip(axes, ("by_kind", "by_res"), ("by layer kind", "by output resolution")):
        keys = group_order(set(prof["original"][kind]) | set(prof["pruned"][kind]), kind)
        bottoms = [0.0, 0.0]
        colours = plt.get_cmap("tab10")
        for k, key in enumerate(keys):
            values = [prof[m][kind].get(key, 0.0) for m in ("original", "pruned")]
            ax.bar(["original", f"pruned ({prof['method']})"], values, bottom=bottoms, label=key,
                   color=colours(k % 10))
            bottoms = [b + v for b, v in zip(bottoms, values)]
        ax.set_title(f"{prof['model']} at {prof['img_size']} px, OpenCV DNN, {title}")
        ax.set_ylabel("ms (median per layer, summed)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(folder, FIGURE)
    save_png(fig, path)
    return path


def write_all(results, out, figures):
    """The report at ``out`` (its link to the second edition pointing where the repo keeps it), the
    figure, and a copy of the report as deploy_benchmarks.md under ``figures``."""
    os.makedirs(figures, exist_ok=True)
    write_figure(results, figures)
    # the second edition's folder is stored relative to the repository root, whatever the cwd
    second = os.path.join(REPO, results.get("second_edition_dir") or os.path.join("benchmarks", "results"),
                          SECOND_EDITION)
    for path, folder in ((out, os.path.dirname(os.path.abspath(out))),
                         (os.path.join(figures, "deploy_benchmarks.md"), os.path.abspath(figures))):
        text = render(results, os.path.relpath(os.path.join(os.path.abspath(figures), FIGURE), folder),
                      os.path.relpath(second, folder), read_companions(figures),
                      os.path.relpath(os.path.abspath(figures), folder))
        with atomic_write(path, "w") as f:
            f.write(text)
