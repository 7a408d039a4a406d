"""What every prune script does; the scripts themselves only choose a Policy.

load -> sparsity check -> plan -> compact -> write .cfg/.weights -> verify in OpenCV -> measure.
"""
import argparse
import json
import os
import time

import torch

from models import load_model
from utils.errors import PruneError
from utils.io import atomic_write
from utils.opencv_dnn import max_difference_from_opencv
from utils.pipeline import measure
from utils.prune_graph import analyze
from utils.prune_report import channel_table, comparison_table
from utils.prune_utils import POLICIES, make_units, prune, unit_scores, write_pruned

NEAR_ZERO = 0.01  # |gamma| below this is "sparsified": its channel contributes ~act(beta) only


def base_parser(description, percent_default=0.5):
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cfg", required=True, help="Darknet .cfg of the model to prune")
    p.add_argument("--weights", required=True, help="its .weights (Darknet) or .pt (train.py checkpoint)")
    p.add_argument("--data", help=".data file; when given, mAP@0.5 is measured before and after")
    p.add_argument("--images", help="unlabelled images: the pruned model's agreement mAP@0.5 with the original")
    p.add_argument("--percent", type=float, default=percent_default, help="fraction of prunable channels to remove")
    p.add_argument("--layer-keep", type=float, default=None,
                   help="keep at least this fraction of every layer (allows a percent past the safe limit)")
    p.add_argument("--img-size", type=int, default=None, help="input size (default: the cfg's [net] width)")
    p.add_argument("--out", default=None, help="output folder (default: runs/prune/<cfg>-<method>-<percent>)")
    p.add_argument("--latency-runs", type=int, default=10, help="timed runs for each latency median (0 = skip)")
    return p


def output_folder(args, method):
    """A new folder: never reuse one that holds files, so methods and runs never overwrite each other."""
    stem = os.path.splitext(os.path.basename(args.cfg))[0]
    base = args.out or os.path.join("runs", "prune", f"{stem}-{method}-{args.percent:g}")
    folder, n = base, 2
    while os.path.isdir(folder) and os.listdir(folder):
        folder, n = f"{base}-{n}", n + 1
    os.makedirs(folder, exist_ok=True)
    return folder


def sparsity_report(model, graph, policy, percent):
    """Fraction of prunable gammas near zero; warn when pruning goes far past it."""
    units = make_units(model, graph, policy)
    gammas = torch.cat([unit_scores(model, u, "bn") for u in units])
    near = float((gammas < NEAR_ZERO).float().mean())
    line = f"sparsity: {near:.1%} of {gammas.numel()} prunable |gamma| are below {NEAR_ZERO} (median {float(gammas.median()):.3g})"
    print(line)
    if policy.importance == "bn" and percent > near + 0.1:
        print(f"warning: --percent {percent:g} removes {percent:.0%} of channels but only {near:.1%} are near zero: "
              f"this model does not look sparsity-trained (train.py -sr); expect a large mAP drop until fine-tuned")
    return near


def run_prune(args, policy, method, n_blocks=0, channels=True):
    """The whole prune run behind every script. Returns the summary dict it also writes.

    ``policy`` is a Policy or the name of one in POLICIES; ``channels=False`` skips channel
    pruning (layer removal only).
    """
    policy = POLICIES[policy] if isinstance(policy, str) else policy
    percent = args.percent if channels else None
    if percent is not None and not 0 < percent < 1:
        raise PruneError(f"--percent {percent} is outside (0, 1); pass a fraction such as 0.5")
    model = load_model(args.cfg, args.weights, args.img_size).eval()
    graph = analyze(model.module_defs)
    if percent is not None:
        sparsity_report(model, graph, policy, percent)
    t0 = time.perf_counter()
    compact, plans = prune(model, policy, percent, args.layer_keep, n_blocks)
    surgery_s = time.perf_counter() - t0
    for plan in plans:
        if plan.safe_percent is not None:
            print(f"safe limit: --percent {plan.safe_percent:.3f} (threshold {plan.threshold:.4g})")
    print(channel_table(model, plans))

    folder = output_folder(args, method)
    stem = os.path.splitext(os.path.basename(args.cfg))[0]
    cfg_out, weights_out = write_pruned(compact, folder, f"{stem}-{method}")
    size = args.img_size or model.img_size[0]
    diff = max_difference_from_opencv(compact, cfg_out, weights_out, size)
    print(f"wrote {cfg_out} and {weights_out}; OpenCV DNN reads them back with max |diff| {diff:.2e} "
          f"(surgery {surgery_s:.2f} s)")
    if diff > 1e-3:
        raise PruneError(f"{cfg_out}: OpenCV's outputs differ from the pruned model by {diff:.3g}; please report this")

    darknet_input = not args.weights.endswith(".pt")  # a .pt has no Darknet pair for OpenCV to time
    before = measure(model, args.data, size, args.cfg if darknet_input else None,
                     args.weights if darknet_input else None, args.latency_runs)
    after = measure(compact, args.data, size, cfg_out, weights_out, args.latency_runs)
    after["weights_MB"] = os.path.getsize(weights_out) / 1e6
    if args.images:
        from utils.agreement import agreement
        found = agreement(model, compact, args.images, size)
        before.update(agreement=1.0, boxes=found.reference_boxes)
        after.update(agreement=found.score, boxes=found.candidate_boxes)
    if darknet_input:
        before["weights_MB"] = os.path.getsize(args.weights) / 1e6
    print(comparison_table(before, after))
    summary = {"method": method, "cfg": args.cfg, "weights": args.weights, "percent": args.percent,
               "layers_removed": n_blocks, "out_cfg": cfg_out, "out_weights": weights_out,
               "opencv_max_diff": diff, "surgery_s": surgery_s, "before": before, "after": after,
               "safe_percent": next((p.safe_percent for p in plans if p.safe_percent is not None), None)}
    with atomic_write(os.path.join(folder, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
