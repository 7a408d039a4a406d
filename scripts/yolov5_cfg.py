"""Write the ultralytics yolov5 v6.0 topology (n/s/m/l/x) as a Darknet .cfg.

    python scripts/yolov5_cfg.py --model s --out cfg/yolov5s.cfg

The translation, layer by layer: ``yoloslim/zoo/yolov5.py``.
"""
import argparse
import os

from yoloslim.errors import SlimError, cli_main
from yoloslim.io import atomic_write
from yoloslim.zoo.yolov5 import MODELS, yolov5_cfg_text


def main(argv=None):
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="s")
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--out", help="output .cfg (default: cfg/yolov5<model>.cfg)")
    args = p.parse_args(argv)
    path = args.out or os.path.join("cfg", f"yolov5{args.model}.cfg")
    if not path.endswith(".cfg") or os.path.isdir(path):
        raise SlimError(f"--out {path}: name a .cfg file; nothing else is ever written over")
    if not path.endswith(".cfg") or os.path.isdir(path):
        raise SlimError(f"--out {path}: name a .cfg file; nothing else is ever written over")
    with atomic_write(path, "w") as f:
        f.write(yolov5_cfg_text(args.model, args.classes))
    print(f"wrote {path}")


if __name__ == "__main__":
    cli_main(main)
