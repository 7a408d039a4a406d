"""The benchmark's studies beyond the method tables: ratio sweep, iterative against one-shot,
input size, surgery time."""
import json
import os
import subprocess
import sys

from bench_models import FINETUNE_EPOCHS, IMG_SIZE, finetune_lr0, stage_config
from yoloslim.pipeline.stages import Method, measure, prune_checkpoint, run_training, save_pruned


def ratio_sweep(args, spec, result, data):
    """mAP@0.5 right after pruning (no fine-tune) and size, over the spec's sweep of ratios."""
    from yoloslim.errors import PruneError
    ratios = spec.sweep
    if "sweep_points" in args.settings:
        ratios = ratios[:: max(1, len(ratios) // args.settings["sweep_points"])][: args.settings["sweep_points"]]
    points = []
    for pct in ratios:
        try:
            _, compact, _ = prune_checkpoint(result["checkpoint"], Method(str(pct), spec.sweep_policy, pct,
                                                                          layer_keep=0.05))
        except PruneError as e:
            points.append({"percent": pct, "error": str(e)})
            continue
        points.append({"percent": pct, **measure(compact, data, IMG_SIZE, runs=0)})
        print(f"[sweep {spec.name}] {pct}: {points[-1]}", flush=True)
    return {"policy": spec.sweep_policy, "original": result["original"], "points": points}


def main_row(result):
    """The spec's first method row that pruned: the one the studies build on."""
    return next(r for r in result["rows"] if "error" not in r)


def iterative_vs_oneshot(args, spec, result, data, cycles=2):
    """Seed 004: k cycles of (prune a smaller share, fine-tune) against one shot, same final
    channel count and the same number of fine-tune epochs in all.

    Each cycle removes the share r of what is left with (1 - r)^k = 1 - percent, so both reach
    the same number of channels; the fine-tune epochs are split evenly over the cycles, with the
    sparsity penalty kept on between cycles (so the next cut again finds collapsed channels)
    and distillation from the unpruned model throughout.
    """
    from yoloslim.darknet.load import load_model
    one = main_row(result)
    method = next(m for m in spec.methods if m.name == one["method"])
    step = 1 - (1 - method.percent) ** (1 / cycles)
    epochs = max(1, args.settings.get("finetune_epochs", FINETUNE_EPOCHS) // cycles)
    work = os.path.join(args.work, spec.name, "iterative")
    teacher = dict(t_cfg=result["pair"][0], t_weights=result["checkpoint"])
    weights, history = result["checkpoint"], []
    for k in range(cycles):
        _, compact, _ = prune_checkpoint(weights, Method("iter", method.policy, step, layer_keep=method.layer_keep))
        cfg, w = save_pruned(compact, os.path.join(work, f"cycle{k + 1}"), f"cycle{k + 1}")
        sparsity = dict(sr=True, s=spec.s, prune=spec.prune, sr_schedule="constant") if k < cycles - 1 else {}
        tuned = run_training(stage_config(args, data, os.path.join(work, f"cycle{k + 1}-ft"), epochs, w, cfg=cfg,
                                          lr0=finetune_lr0(spec.lrf), **teacher, **sparsity))
        history.append({"cycle": k + 1, "params": sum(p.numel() for p in compact.parameters()),
                        "mAP50_pruned": measure(compact, data, IMG_SIZE, runs=0)["mAP50"],
                        "mAP50_tuned": tuned.get("mAP50")})
        weights = tuned["last"]
    final = load_model(cfg, weights, IMG_SIZE)
    return {"model": spec.name, "policy": method.policy, "percent": method.percent, "cycles": cycles,
            "step_percent": step, "epochs_per_cycle": epochs, "history": history,
            "iterative": measure(final, data, IMG_SIZE, runs=0),
            "one_shot": {"params": one["params"], "GFLOPs": one["GFLOPs"], "mAP50": one["mAP50_kd"],
                         "epochs": one["finetune_epochs"], "mAP50_pruned": one["mAP50"]}}


def input_size_study(args, spec, result, data):
    """The unpruned model and the main method's fine-tuned model at several input sizes (trained
    at IMG_SIZE): accuracy, FLOPs and latency, to see what a smaller input buys after pruning."""
    from yoloslim.darknet.load import load_model
    from yoloslim.prune.engine import write_pruned
    row = main_row(result)
    folder = os.path.join(args.work, spec.name, "input-size")
    os.makedirs(folder, exist_ok=True)
    tuned = load_model(row["pair"][0], row["kd_checkpoint"], IMG_SIZE)
    tuned_pair = write_pruned(tuned, folder, "pruned-finetuned")
    models = {"unpruned": (result["pair"], load_model(*result["pair"], IMG_SIZE)),
              f"{row['method']} + fine-tune": (tuned_pair, tuned)}
    rows = []
    for size in args.settings.get("input_sizes", (128, 160, 192, 224, 256, 320)):
        for label, (pair, model) in models.items():
            sized = load_model(pair[0], pair[1], size)
            rows.append({"model": label, "img_size": size,
                         **measure(sized, data, size, pair[0], pair[1], runs=args.latency_runs)})
            print(f"[input size] {label} {size}: {rows[-1]}", flush=True)
    return {"model": spec.name, "trained_at": IMG_SIZE, "rows": rows}


def surgery_times(args):
    out = os.path.join(args.work, "surgery.json")
    runs = args.settings.get("surgery_runs", 5)
    subprocess.run([sys.executable, os.path.join("benchmarks", "surgery_time.py"), "--runs", str(runs), "--out", out],
                   check=True)
    with open(out) as f:
        return json.load(f)
