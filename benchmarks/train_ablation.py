"""Training-recipe ablation: fine-tune the real COCO yolov3-tiny on the synthetic set, one change at a time.

    python benchmarks/train_ablation.py                       # prints a markdown table
    python benchmarks/train_ablation.py --only baseline no-ema

Every variant starts from the same COCO weights, trains on the same images in the same order
(same --seed) for the same number of epochs, and is evaluated on the same validation images
(mAP@0.5 of the weights train.py saves). The baseline is the recipe train.py defaults to; each
other row changes one thing. Runs are cached under --work by their arguments (yoloslim/pipeline/stages.py).
"""
import argparse
import os
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.chdir(ROOT)

from yoloslim.pipeline.stages import derive_cfg, ensure_data, machine_line, markdown_table, run_training  # noqa: E402
from yoloslim.train.config import TrainConfig  # noqa: E402

# name -> (what changes, extra train.py arguments on top of the baseline)
VARIANTS = {
    "baseline": ("Adam lr0 0.003, cosine to 0.05, warm-up 1 epoch, EMA 0.999, head prior, batch 16", {}),
    "sgd-0.01": ("SGD lr0 0.01 (the old default)", dict(optimizer="sgd", lr0=0.01)),
    "no-ema": ("no weight EMA", dict(ema=0)),
    "no-prior": ("heads at zero-mean init (no prior)", dict(no_head_prior=True)),
    "mosaic": ("mosaic 0.5", dict(hyp=["mosaic=0.5"])),
    "multi-scale": ("multi-scale 2/3-4/3", dict(multi_scale=True)),
    "no-warmup": ("no warm-up", dict(warmup_epochs=0)),
    "constant-lr": ("constant LR (lrf 1.0)", dict(lrf=1.0)),
    "batch-8": ("batch 8", dict(batch_size=8)),
    "adam-0.001": ("Adam lr0 0.001", dict(lr0=0.001)),
    "light-aug": ("scale 0.2, no HSV", dict(hyp=["scale=0.2", "hsv_h=0", "hsv_s=0", "hsv_v=0"])),
}


def parse_args():
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/ablation")
    p.add_argument("--data-dir", default="data/shapes-ablation")
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-val", type=int, default=200)
    p.add_argument("--img-size", type=int, default=160)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", nargs="*", choices=sorted(VARIANTS), help="run these variants only")
    return p.parse_args()


def run_variant(args, name, data, cfg, weights):
    options = dict(seed=0, eval_interval=100, threads=args.threads, optimizer="adam", lr0=0.003, batch_size=16)
    options.update(VARIANTS[name][1])
    t0 = time.time()
    result = run_training(TrainConfig(data, cfg=cfg, weights=weights, epochs=args.epochs, img_size=args.img_size,
                                      out=os.path.join(args.work, name), quiet=True, **options))
    return result, time.time() - t0


def main():
    args = parse_args()
    from yoloslim.zoo.coco_tiny import fetch_tiny
    data = ensure_data(args.data_dir, args.n_train, args.n_val, args.img_size)
    coco = fetch_tiny()
    os.makedirs(args.work, exist_ok=True)
    cfg, _ = derive_cfg(coco["cfg"], data, args.img_size, os.path.join(args.work, "tiny.cfg"))
    rows = []
    for name in args.only or VARIANTS:
        result, seconds = run_variant(args, name, data, cfg, coco["weights"])
        rows.append([name, VARIANTS[name][0], f"{result['mAP50']:.4f}", f"{result['mAP50_95']:.4f}",
                     f"{seconds:.0f}"])
        print(f"{name}: mAP@0.5 {result['mAP50']:.4f}", flush=True)
    print(f"\n{args.n_train} training images, {args.n_val} validation images, {args.img_size} px, "
          f"{args.epochs} epochs, seed 0; {machine_line()}\n")
    print(markdown_table(["variant", "change from baseline", "mAP@0.5", "mAP@0.5:0.95", "wall s"], rows))


if __name__ == "__main__":
    main()
