"""What the border inexactness of compensation costs in mAP, on a sparsity-trained model.

With Darknet's zero padding the pruned model equals "the original with the pruned gammas set
to zero" only away from the border (benchmarks/border_exactness.py measures where). This
script measures what that difference is worth where it matters, in mAP@0.5 on a labelled
validation set: the zeroed original against the pruned model, both run as Darknet runs them
(zero padding). The original itself is listed too, so the cost of pruning the channels
(original -> zeroed) and the cost of the border (zeroed -> pruned) are told apart.

    python benchmarks/border_map_cost.py --weights runs/slim/train/last.pt \
        --data data/shapes-slim/shapes.data --policy tiny --percent 0.35 --img-size 160

Writes benchmarks/results/border_map_cost.{json,md}.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from yoloslim.darknet.load import model_from_checkpoint  # noqa: E402
from yoloslim.eval.evaluate import evaluate  # noqa: E402
from yoloslim.cli import checks  # noqa: E402
from yoloslim.errors import cli_main  # noqa: E402
from yoloslim.io import atomic_write  # noqa: E402
from yoloslim.pipeline.stages import machine_line, markdown_table  # noqa: E402
from yoloslim.prune.engine import POLICIES, prune, zeroed_reference  # noqa: E402


def parse_args(argv=None):
    p = checks.parser(__doc__.split("\n\n")[0], prog="border_map_cost.py")
    p.add_argument("--weights", required=True, type=checks.input_file, help="a sparsity-trained checkpoint of ours")
    p.add_argument("--data", required=True, type=checks.input_file, help=".data file of the validation set")
    p.add_argument("--policy", default="tiny", choices=sorted(POLICIES))
    p.add_argument("--percent", type=checks.open_fraction, default=0.35)
    p.add_argument("--layer-keep", type=checks.number(float, lo=0, hi=1, lo_open=True), default=0.05)
    p.add_argument("--img-size", type=checks.img_size, default=None)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "border_map_cost"),
                   type=checks.output_file, help="results path without extension (.json and .md are written)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    checks.check_data(args.data)
    model = model_from_checkpoint(args.weights, args.img_size).eval()
    size = args.img_size or model.img_size[0]
    compact, plans = prune(model, POLICIES[args.policy], args.percent, args.layer_keep)
    zeroed = model
    for plan in plans:
        zeroed = zeroed_reference(zeroed, plan).eval()
    score = {name: float(evaluate(m, args.data, img_size=size, verbose=False, progress=False)["mAP50"])
             for name, m in (("original", model), ("original, pruned gammas zeroed", zeroed),
                             ("pruned (compensated)", compact.eval()))}
    border = score["pruned (compensated)"] - score["original, pruned gammas zeroed"]
    rows = [[name, f"{value:.4f}"] for name, value in score.items()]
    text = (f"# What the border costs in mAP\n\nCommand: `python benchmarks/border_map_cost.py "
            f"{' '.join(sys.argv[1:] if argv is None else argv)}`\n\nMachine: {machine_line()}. "
            f"{args.policy} policy at --percent {args.percent:g} (--layer-keep {args.layer_keep:g}), "
            f"{size} px, zero padding as in Darknet.\n\n"
            f"{markdown_table(['model', 'mAP@0.5'], rows)}\n\n"
            f"Border effect (pruned - zeroed original): {border:+.4f} mAP@0.5.\n")
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with atomic_write(args.out + ".md", "w") as f:
        f.write(text)
    with atomic_write(args.out + ".json", "w") as f:
        json.dump({"mAP50": score, "border_effect": border, "policy": args.policy, "percent": args.percent,
                   "layer_keep": args.layer_keep, "img_size": size, "weights": args.weights}, f, indent=2)


if __name__ == "__main__":
    cli_main(main)
