"""Write a detection data set made of real photographs that installed packages ship.

    python scripts/photo_data.py --out data/photos --n-train 1000 --n-val 250 --img-size 256 --classes 10

What it draws and from where: ``yoloslim/data/photo_data.py`` and ``photo_sources.py``.
"""
import os
import sys
import time

from yoloslim.cli import checks
from yoloslim.data.photo_data import Params, generate
from yoloslim.errors import cli_main

def parse_args(argv=None):
    p = checks.parser("Write a detection data set from real photographs that installed packages ship "
                      "(YOLO layout, Darknet .data and ultralytics .yaml).", prog="scripts/photo_data.py")
    p.add_argument("--out", required=True, type=checks.output_dir, help="new folder to create (an existing one must be empty)")
    p.add_argument("--n-train", type=checks.positive_int, default=1000, help="training images")
    p.add_argument("--n-val", type=checks.positive_int, default=200, help="validation images")
    p.add_argument("--img-size", type=checks.number(int, lo=64, hi=checks.MAX_IMG_SIZE), default=256,
                   help="square image side in pixels")
    p.add_argument("--classes", type=checks.positive_int, default=5,
                   help="object classes, the first K of the catalogue whose photos are installed")
    p.add_argument("--seed", type=checks.count, default=0, help="random seed")
    p.add_argument("--workers", type=checks.count, default=1, help="processes (0 = all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    params = Params(args.n_train, args.n_val, args.img_size, args.classes, args.seed)
    t0 = time.time()
    meta = generate(args.out, params, args.workers or os.cpu_count() or 1, progress=not args.quiet)
    for note in meta["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {args.n_train} train + {args.n_val} val images ({meta['objects']} objects, "
          f"classes: {', '.join(meta['class_names'])}) to {args.out} in {time.time() - t0:.1f} s; "
          f"data: {os.path.join(args.out, 'photos.data')}, yaml: {os.path.join(args.out, 'photos.yaml')}")


if __name__ == "__main__":
    cli_main(main)
