"""The main job, one command: data -> train -> sparsity -> prune -> distilled fine-tune -> deploy check.

    python slim.py                      # everything into runs/slim/, about 10 minutes on 2 CPU cores

Generates the synthetic data set (cached), trains the narrow residual yolov3 briefly,
sparsity-trains it (L1 on BN gamma), prunes it (shortcut-extreme by default), fine-tunes
the pruned model with distillation from the unpruned one, writes the pruned .cfg and
.weights, loads them back in OpenCV DNN and prints the before / after-prune /
after-fine-tune table. Each stage is cached in the run folder: run it again to resume.
"""
import argparse
import json
import os
import shutil
import sys


from utils import cli_checks as checks
from utils.errors import SlimError, cli_main
from utils.io import atomic_write
from utils.pipeline import (Method, ensure_data, machine_line, markdown_table, measure, prune_checkpoint,
                            run_training, save_pruned)


def parse_args(argv=None):
    p = checks.Parser(prog="slim.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/slim", type=checks.output_dir, help="run folder (stages found there are reused)")
    p.add_argument("--cfg", default="cfg/yolov3-narrow.cfg", type=checks.input_file)
    p.add_argument("--data-dir", default="data/shapes-slim", type=checks.output_dir,
                   help="where the synthetic set is generated")
    p.add_argument("--n-train", type=checks.positive_int, default=800)
    p.add_argument("--n-val", type=checks.positive_int, default=200)
    p.add_argument("--img-size", type=checks.img_size, default=160)
    p.add_argument("--batch-size", type=checks.positive_int, default=16)
    p.add_argument("--epochs", type=checks.positive_int, default=10, help="normal training epochs")
    p.add_argument("--sparse-epochs", type=checks.positive_int, default=8)
    p.add_argument("--s", type=checks.non_negative_float, default=0.02,
                   help="sparsity strength (constant, with a constant LR: under Adam a gamma moves about lr "
                        "per step, so a decaying LR stops the collapse; see docs/TRAINING.md)")
    p.add_argument("--finetune-epochs", type=checks.positive_int, default=4)
    p.add_argument("--method", choices=["normal", "regular-x8", "shortcut", "layer-channel"], default="shortcut")
    p.add_argument("--percent", type=checks.open_fraction, default=0.7)
    p.add_argument("--layer-keep", type=checks.number(float, lo=0, hi=1, lo_open=True), default=0.05)
    p.add_argument("--lr0", type=checks.positive_float, default=0.003)
    p.add_argument("--latency-runs", type=checks.timed_runs, default=20)
    args = p.parse_args(argv)
    checks.check_cfg(args.cfg)
    return args


def method_for(args):
    if args.method == "layer-channel":
        return Method("layer-channel", "shortcut", args.percent, n_blocks=2, layer_keep=args.layer_keep)
    return Method(args.method, args.method, args.percent, layer_keep=args.layer_keep)


def stage(title):
    print(f"\n=== {title} ===", flush=True)


def main(argv=None):
    args = parse_args(argv)
    if os.path.realpath(args.out) == os.path.realpath("."):
        raise SlimError(f"--out {args.out}: choose a run folder, not the repository root")
    os.makedirs(args.out, exist_ok=True)
    common = dict(img_size=args.img_size, batch_size=args.batch_size)
    optim = ["--adam", "--lr0", args.lr0, "--eval-interval", 100]

    stage("1/6 synthetic data set")
    data = ensure_data(args.data_dir, args.n_train, args.n_val, args.img_size)

    stage("2/6 train")
    base = run_training(os.path.join(args.out, "train"), args.cfg, data, args.epochs, extra=optim, **common)

    stage("3/6 sparsity training (L1 on BN gamma, --prune 1)")
    sparse = run_training(os.path.join(args.out, "sparse"), None, data, args.sparse_epochs, weights=base["last"],
                          extra=optim + ["-sr", "--s", args.s, "--prune", 1, "--sr-schedule", "constant", "--lrf", 1.0],
                          **common)

    stage(f"4/6 prune ({args.method}, percent {args.percent})")
    method = method_for(args)
    model, compact, plans = prune_checkpoint(sparse["last"], method)
    pruned_cfg, pruned_weights = save_pruned(compact, os.path.join(args.out, "pruned"), f"{method.name}")
    unpruned_dir = os.path.join(args.out, "sparse")
    original_cfg, original_weights = os.path.join(unpruned_dir, "model.cfg"), sparse["last_weights"]
    with atomic_write(original_cfg, "w") as f:
        f.write(model.cfg_text())

    stage("5/6 fine-tune the pruned model with distillation from the unpruned one")
    tuned = run_training(os.path.join(args.out, "finetune"), pruned_cfg, data, args.finetune_epochs,
                         weights=pruned_weights,
                         extra=optim + ["--t_cfg", original_cfg, "--t_weights", sparse["last"]], **common)

    stage("6/6 deploy check and measurements")
    from models import load_model
    from utils.opencv_dnn import max_difference_from_opencv
    final = load_model(pruned_cfg, tuned["last"], args.img_size).eval()
    final_cfg, final_weights = save_pruned(final, os.path.join(args.out, "final"), f"{method.name}-finetuned")
    diff = max_difference_from_opencv(final, final_cfg, final_weights, args.img_size)
    print(f"OpenCV DNN reads {final_cfg} + {final_weights}: max |diff| vs PyTorch {diff:.2e}")

    rows = {
        "original (sparse)": measure(model, data, args.img_size, original_cfg, original_weights, args.latency_runs),
        "pruned": measure(compact, data, args.img_size, pruned_cfg, pruned_weights, args.latency_runs),
        "pruned + fine-tuned": measure(final, data, args.img_size, final_cfg, final_weights, args.latency_runs),
    }
    report = write_report(args, base, rows, diff, final_cfg, final_weights)
    print(report)


def write_report(args, base, rows, diff, final_cfg, final_weights):
    ref = rows["original (sparse)"]
    table = markdown_table(
        ["model", "mAP@0.5", "params", "GFLOPs", "torch ms", "OpenCV ms", "OpenCV speed-up"],
        [[name, f"{r['mAP50']:.4f}", f"{r['params']:,}", f"{r['GFLOPs']:.3f}", f"{r['torch_ms']:.2f}",
          f"{r['opencv_ms']:.2f}", f"x{ref['opencv_ms'] / r['opencv_ms']:.2f}"] for name, r in rows.items()])
    text = (f"# slim.py run\n\nCommand: `python slim.py {' '.join(sys.argv[1:])}`\n\n"
            f"Machine: {machine_line()}; latency = batch 1, median of {args.latency_runs} runs after 5 warm-up.\n\n"
            f"mAP@0.5 of the trained model before sparsity: {base.get('mAP50', float('nan')):.4f}\n\n{table}\n\n"
            f"Deployed pair: `{final_cfg}`, `{final_weights}` (OpenCV DNN max |diff| vs PyTorch {diff:.2e}).\n")
    with atomic_write(os.path.join(args.out, "report.md"), "w") as f:
        f.write(text)
    with atomic_write(os.path.join(args.out, "report.json"), "w") as f:
        json.dump({"rows": rows, "opencv_diff": diff}, f, indent=2)
    for png in ("gamma_history.png",):
        src = os.path.join(args.out, "sparse", png)
        if os.path.isfile(src):
            shutil.copy(src, os.path.join(args.out, png))
    return text


if __name__ == "__main__":
    cli_main(main)
