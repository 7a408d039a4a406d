"""The main job, one command: real weights -> fine-tune -> sparsity -> prune -> distilled fine-tune -> deploy.

    python slim.py                      # everything into runs/slim/, about 9 minutes on 2 idle CPU cores
    python slim.py --model narrow       # from scratch: the narrow residual yolov3, shortcut pruning
    python slim.py --data my.data       # your data (.data, dataset YAML or YOLO folder), COCO tiny transferred
    python slim.py --data my.yaml --cfg my.cfg --weights my.weights   # your data and your Darknet model

With --data, the data set is read in place and never written to (its lists and names for the
trainer go into the run folder); the cfg is derived for it (class count, head filters, k-means
anchors at --img-size); weights trained on its class count skip the transfer and go straight to
sparsity training; the pruning method follows the graph (shortcut layers: shortcut, else tiny)
unless --method says otherwise.

Default (``--model tiny``): fetches the real COCO yolov3-tiny once (cached under weights/),
derives a cfg for the built-in synthetic data set (its class count, anchors from k-means on
its boxes), fine-tunes the COCO weights on it (partial loading: backbone loaded, heads
re-initialised) with L1 sparsity on the BN gammas the tiny policy prunes (``--prune 2``; a
separate sparsity stage with ``--sparse-epochs N``), prunes it with the tiny policy,
fine-tunes the pruned model with distillation from the unpruned one, writes the pruned .cfg
and .weights and checks them in OpenCV DNN and, where installed, the original Darknet. Each training stage is cached in the
run folder by its arguments and inputs: run it again to reuse or resume; change an option and
the stages it affects are retrained.
"""
import argparse
import json
import os
import shutil
import sys
import time

from utils import cli_checks as checks
from utils.errors import SlimError, cli_main
from utils.io import atomic_write, is_torch_file
from utils.starting_point import SPARSITY_MODE
from utils.userdata import data_source
from utils.pipeline import (Method, ensure_data, machine_line, markdown_table, measure, prune_checkpoint,
                            run_training, save_pruned)

# Targets of the main job (issue 9), checked and printed in the report.
TARGETS = {"base_mAP50": 0.6, "params_cut": 0.5, "opencv_speedup": 1.5, "max_mAP_drop": 0.01, "minutes": 15}

MODELS = {   # what differs between the two main jobs; everything else is shared
    # measured in docs/TRAINING.md: the L1 penalty during the 26-epoch transfer fine-tune
    # (--sparse-epochs 0) collapses the spare channels without the cost of a separate stage
    "tiny": dict(policy="tiny", prune=2, method="tiny", percent=0.35, epochs=26, sparse_epochs=0,
                 finetune_epochs=4, s=0.002, lr0=0.003),
    "narrow": dict(policy="shortcut", prune=1, method="shortcut", percent=0.7, epochs=10, sparse_epochs=8,
                   finetune_epochs=4, s=0.02, lr0=0.003),
}


def parse_args(argv=None):
    p = checks.Parser(prog="slim.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="tiny",
                   help="tiny: fine-tune the real COCO yolov3-tiny (default); narrow: narrow yolov3 from scratch")
    p.add_argument("--data", type=data_source,
                   help="your data set: a Darknet .data file, a dataset YAML (path/train/val/names) or a folder with "
                        "images/{train,val} and labels/{train,val}; read only (default: the built-in synthetic set)")
    p.add_argument("--cfg", type=checks.input_file,
                   help="your model's cfg: with --weights your Darknet pair, alone trained from scratch "
                        "(default: the COCO yolov3-tiny, or cfg/yolov3-narrow.cfg with --model narrow)")
    p.add_argument("--weights", type=checks.input_file,
                   help="your weights: pjreddie or AlexeyAB Darknet .weights (with --cfg) or a .pt of ours")
    p.add_argument("--method", dest="method_choice", choices=sorted(SPARSITY_MODE),
                   help="pruning method (default: shortcut if the graph has shortcut layers, else tiny)")
    p.add_argument("--out", default="runs/slim", type=checks.output_dir, help="run folder (stages found there are reused)")
    p.add_argument("--data-dir", default=None, type=checks.output_dir,
                   help="where the synthetic set is generated without --data (default data/shapes-slim)")
    p.add_argument("--n-train", type=checks.positive_int, default=800)
    p.add_argument("--n-val", type=checks.positive_int, default=200)
    p.add_argument("--img-size", type=checks.img_size, default=160)
    p.add_argument("--batch-size", type=checks.positive_int, default=8,
                   help="8: more steps beat bigger batches at this scale (docs/TRAINING.md)")
    p.add_argument("--epochs", type=checks.positive_int, help="training epochs (default: per --model)")
    p.add_argument("--sparse-epochs", type=checks.count,
                   help="epochs of a separate sparsity stage; 0 = L1 sparsity during the fine-tune itself")
    p.add_argument("--s", type=checks.non_negative_float,
                   help="sparsity strength (constant, with a constant LR: under Adam a gamma moves about lr "
                        "per step, so a decaying LR stops the collapse; see docs/TRAINING.md)")
    p.add_argument("--finetune-epochs", type=checks.positive_int)
    p.add_argument("--percent", type=checks.open_fraction, help="fraction of prunable channels to remove")
    p.add_argument("--layer-keep", type=checks.number(float, lo=0, hi=1, lo_open=True), default=0.05)
    p.add_argument("--lr0", type=checks.positive_float)
    p.add_argument("--threads", type=checks.positive_int, help="torch threads (default: torch's; 1 on a busy machine)")
    p.add_argument("--latency-runs", type=checks.timed_runs, default=20)
    args = p.parse_args(argv)
    if args.data and args.data_dir:
        p.error("--data-dir is where the synthetic set is generated; with --data nothing is generated")
    if args.weights and args.model == "narrow":
        p.error("--model narrow trains from scratch; leave out --weights, or --model")
    if args.weights and not args.cfg and not is_torch_file(args.weights):
        p.error(f"--weights {args.weights}: a Darknet .weights file needs the --cfg it was trained with")
    if args.cfg:
        checks.check_cfg(args.cfg)
    check_outputs(args)
    for key, value in MODELS[args.model].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def check_outputs(args):
    """Refuse, before anything is written, a run or data folder that is not ours (the user's data, say)."""
    from utils.owned import check_claimable, has_any, inside
    from utils.synthetic import earlier_set
    check_claimable(args.out, "--out", legacy=has_any("report.md", "*/stage.json"))
    if args.data is None:
        args.data_dir = args.data_dir or "data/shapes-slim"
        check_claimable(args.data_dir, "--data-dir", legacy=earlier_set)
    elif inside(args.out, args.data if os.path.isdir(args.data) else os.path.dirname(os.path.abspath(args.data))):
        raise SlimError(f"--out {args.out}: lies inside the data set's folder; the run folder goes elsewhere, "
                        f"so nothing is written among your data")


def stage(title):
    print(f"\n=== {title} ===", flush=True)


def data_and_start(args):
    """(DataSet, .data path for train.py, StartingPoint): the user's data read in place (its lists
    written under the run folder) or the synthetic set, and what to train from."""
    from utils.owned import claim, has_any
    from utils.starting_point import choose_start
    from utils.userdata import describe, load_dataset, write_darknet_data
    claim(args.out, "--out", "slim.py", legacy=has_any("report.md", "*/stage.json"))
    if args.data:
        spec = load_dataset(args.data)
        data = write_darknet_data(spec, os.path.join(args.out, "data"))
    else:
        data = ensure_data(args.data_dir, args.n_train, args.n_val, args.img_size)
        spec = load_dataset(data)
        spec.form = "built-in synthetic set"
    for line in describe(spec):
        print(line)
    start = choose_start(args, spec, args.out)
    for line in start.choices:
        print(line)
    return spec, data, start


def deploy_checks(model, cfg, weights, img_size):
    """Read the written pair back in the deployment runtimes: OpenCV DNN always, the original
    Darknet where it is installed. Returns {runtime: difference relative to the head magnitude}."""
    import numpy as np
    from utils.darknet_ref import darknet_difference, darknet_missing, run_darknet
    from utils.opencv_dnn import opencv_read_back
    from utils.parity import TOLERANCE, within
    diff, tolerance = opencv_read_back(model, cfg, weights, img_size)
    print(f"OpenCV DNN reads {cfg} + {weights}: difference {diff:.2e} of the head magnitude (tolerance {tolerance:.2g})")
    if not within(diff, tolerance):
        raise SlimError(f"{cfg}: OpenCV's outputs differ from PyTorch by {diff:.3g}; please report this")
    diffs = {"opencv": diff}
    missing = darknet_missing()
    if missing:
        print(f"Darknet check skipped: {missing}")
        return diffs
    x = np.random.default_rng(0).random((model.in_channels, img_size, img_size), dtype=np.float32)
    diffs["darknet"] = darknet_difference(model, run_darknet(cfg, weights, x), x)
    print(f"Darknet (libdarknet) reads them: difference {diffs['darknet']:.2e} of the head magnitude "
          f"(tolerance {TOLERANCE:.0e})")
    if not within(diffs["darknet"], TOLERANCE):
        raise SlimError(f"{cfg}: Darknet's outputs differ from PyTorch by {diffs['darknet']:.3g}; please report this")
    return diffs


def main(argv=None):
    t_start = time.time()
    args = parse_args(argv)
    if os.path.realpath(args.out) == os.path.realpath("."):
        raise SlimError(f"--out {args.out}: choose a run folder, not the repository root")
    common = dict(img_size=args.img_size, batch_size=args.batch_size)
    optim = ["--adam", "--lr0", args.lr0, "--eval-interval", 100]
    if args.threads:
        optim += ["--threads", args.threads]

    stage("1/6 " + ("your data set" if args.data else "synthetic data set") + " and starting point")
    dataset, data, start = data_and_start(args)
    cfg, weights = start.cfg, start.weights
    # the cfg a Darknet .weights of the user's was trained with: only the stage loading it reads it
    source_cfg = ["--weights-cfg", start.weights_cfg] if start.weights_cfg else []
    skip_transfer = bool(weights) and not start.transfer

    # --sparse-epochs 0: the L1 penalty rides along the transfer fine-tune (cosine LR), so the
    # model that is pruned is the one that was trained, with no separate stage to pay for
    during = args.sparse_epochs == 0
    sparsity = ["-sr", "--s", args.s, "--prune", start.sparsity_mode, "--sr-schedule", "constant"]
    if skip_transfer:
        stage(f"2/6 transfer: skipped (the weights know the data's {dataset.nc} classes)")
        base = {"last": weights}
    else:
        stage("2/6 " + ("fine-tune the pretrained weights" if weights else "train from scratch")
              + (" with L1 sparsity on BN gamma" if during else ""))
        base = run_training(os.path.join(args.out, "train"), cfg, data, args.epochs, weights=weights,
                            extra=optim + source_cfg + (sparsity + ["--lrf", 0.05] if during else []), **common)

    if skip_transfer:
        # the user's trained model: the sparsity stage is its only training, with the fine-tune's
        # recipe (penalty under a cosine LR) unless a separate constant-LR stage was asked for
        stage(f"3/6 sparsity training from your weights (L1 on BN gamma, --prune {start.sparsity_mode})")
        sparse_dir = os.path.join(args.out, "sparse")
        recipe = ["--lrf", 0.05] if during else ["--lrf", 1.0, "--warmup-epochs", 0]
        sparse = run_training(sparse_dir, cfg, data, args.epochs if during else args.sparse_epochs,
                              weights=weights, extra=optim + source_cfg + sparsity + recipe, **common)
        during = False
    elif during:
        stage("3/6 sparsity training: done in stage 2 (--sparse-epochs 0)")
        sparse, sparse_dir = base, os.path.join(args.out, "train")
    else:
        stage(f"3/6 sparsity training (L1 on BN gamma, --prune {start.sparsity_mode})")
        sparse_dir = os.path.join(args.out, "sparse")
        sparse = run_training(sparse_dir, None, data, args.sparse_epochs, weights=base["last"],
                              extra=optim + sparsity + ["--lrf", 1.0, "--warmup-epochs", 0], **common)

    stage(f"4/6 prune ({start.method}, percent {args.percent})")
    method = Method(start.method, start.method, args.percent, layer_keep=args.layer_keep)
    model, compact, plans = prune_checkpoint(sparse["last"], method)
    pruned_cfg, pruned_weights = save_pruned(compact, os.path.join(args.out, "pruned"), method.name)
    original_cfg, original_weights = os.path.join(sparse_dir, "model.cfg"), sparse["last_weights"]
    with atomic_write(original_cfg, "w") as f:
        f.write(model.cfg_text())

    stage("5/6 fine-tune the pruned model with distillation from the unpruned one")
    tuned = run_training(os.path.join(args.out, "finetune"), pruned_cfg, data, args.finetune_epochs,
                         weights=pruned_weights,
                         extra=optim + ["--t_cfg", original_cfg, "--t_weights", sparse["last"]], **common)

    stage("6/6 deploy checks and measurements")
    from models import load_model
    final = load_model(pruned_cfg, tuned["last"], args.img_size).eval()
    final_cfg, final_weights = save_pruned(final, os.path.join(args.out, "final"), f"{method.name}-finetuned")
    diffs = deploy_checks(final, final_cfg, final_weights, args.img_size)
    base_name = "base (fine-tuned" if weights else "base (trained"
    if skip_transfer:
        base_model = load_model(cfg, weights, args.img_size).eval()
        rows = {"base (your weights)": measure(base_model, data, args.img_size, runs=0),
                "sparsity-trained": measure(model, data, args.img_size, original_cfg, original_weights,
                                            args.latency_runs)}
    elif during:
        rows = {base_name + " with sparsity)": measure(model, data, args.img_size, original_cfg, original_weights,
                                                       args.latency_runs)}
    else:
        base_model = load_model(cfg, base["last"], args.img_size).eval()
        rows = {base_name + ")": measure(base_model, data, args.img_size, runs=0),
                "sparsity-trained": measure(model, data, args.img_size, original_cfg, original_weights,
                                            args.latency_runs)}
    rows.update({
        "pruned": measure(compact, data, args.img_size, pruned_cfg, pruned_weights, args.latency_runs),
        "pruned + fine-tuned": measure(final, data, args.img_size, final_cfg, final_weights, args.latency_runs),
    })
    print(write_report(args, rows, diffs, final_cfg, final_weights, time.time() - t_start,
                       data_section(args, dataset, start)))


def target_rows(rows, minutes):
    base = next(r for k, r in rows.items() if k.startswith("base"))
    ref, final = unpruned(rows), rows["pruned + fine-tuned"]
    cut, speed = 1 - final["params"] / ref["params"], ref["opencv_ms"] / final["opencv_ms"]
    drop = base["mAP50"] - final["mAP50"]
    checks = [("whole job", f"<= {TARGETS['minutes']} min", f"{minutes:.1f} min", minutes <= TARGETS["minutes"]),
              ("base mAP@0.5", f">= {TARGETS['base_mAP50']}", f"{base['mAP50']:.4f}", base["mAP50"] >= TARGETS["base_mAP50"]),
              ("fewer params", f">= {TARGETS['params_cut']:.0%}", f"{cut:.1%}", cut >= TARGETS["params_cut"]),
              ("OpenCV speed-up", f">= x{TARGETS['opencv_speedup']}", f"x{speed:.2f}", speed >= TARGETS["opencv_speedup"]),
              ("final mAP@0.5 vs base", f">= -{TARGETS['max_mAP_drop']}", f"{-drop:+.4f}", drop <= TARGETS["max_mAP_drop"])]
    return [[name, want, got, "yes" if ok else "no"] for name, want, got, ok in checks]


def unpruned(rows):
    """The row of the model that was pruned: speed-ups and size cuts are measured against it."""
    return rows.get("sparsity-trained") or next(r for k, r in rows.items() if k.startswith("base"))


def data_section(args, dataset, start):
    """The report's account of the data and of what was chosen for it, and why."""
    from utils.userdata import describe
    if args.weights and not start.transfer:
        stages = f"transfer skipped, sparsity {args.epochs if args.sparse_epochs == 0 else args.sparse_epochs}"
    else:
        stages = (f"{'fine-tune' if start.weights else 'training'} {args.epochs}"
                  + (" (sparsity during it)" if args.sparse_epochs == 0 else f", sparsity {args.sparse_epochs}"))
    lines = describe(dataset) + [f"input size: {args.img_size} px",
                                 f"epochs: {stages}, pruned fine-tune {args.finetune_epochs}"]
    return ("## Data\n\n" + "".join(f"- {line}\n" for line in lines)
            + "\n## Chosen automatically\n\n" + "".join(f"- {line}\n" for line in start.choices))


def write_report(args, rows, diffs, final_cfg, final_weights, seconds, data_text=""):
    ref = unpruned(rows)
    table = markdown_table(
        ["model", "mAP@0.5", "params", "GFLOPs", "torch ms", "OpenCV ms", "OpenCV speed-up"],
        [[name, f"{r['mAP50']:.4f}", f"{r['params']:,}", f"{r['GFLOPs']:.3f}", f"{r.get('torch_ms', float('nan')):.2f}",
          f"{r.get('opencv_ms', float('nan')):.2f}",
          f"x{ref['opencv_ms'] / r['opencv_ms']:.2f}" if "opencv_ms" in r else "-"] for name, r in rows.items()])
    targets = markdown_table(["target", "wanted", "measured", "met"], target_rows(rows, seconds / 60))
    checks = ", ".join(f"{k} max |diff| vs PyTorch {v:.2e}" for k, v in diffs.items())
    text = (f"# slim.py run\n\nCommand: `python slim.py {' '.join(sys.argv[1:])}` (--model {args.model})\n\n"
            f"Machine: {machine_line()}; latency = batch 1, median of {args.latency_runs} runs after 5 warm-up. "
            f"Wall time {seconds / 60:.1f} min (stages reused from the cache are not re-timed).\n\n{table}\n\n"
            f"{targets}\n\nDeployed pair: `{final_cfg}`, `{final_weights}` ({checks}).\n"
            + (f"\n{data_text}" if data_text else ""))
    with atomic_write(os.path.join(args.out, "report.md"), "w") as f:
        f.write(text)
    with atomic_write(os.path.join(args.out, "report.json"), "w") as f:
        json.dump({"rows": rows, "deploy_checks": diffs, "seconds": seconds, "data": data_text}, f, indent=2)
    src = os.path.join(args.out, "train" if args.sparse_epochs == 0 else "sparse", "gamma_history.png")
    if not os.path.isfile(src):   # transfer skipped: the sparsity stage is the only one
        src = os.path.join(args.out, "sparse", "gamma_history.png")
    if os.path.isfile(src):
        shutil.copy(src, os.path.join(args.out, "gamma_history.png"))
    return text


if __name__ == "__main__":
    cli_main(main)
