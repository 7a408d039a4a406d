"""Write a cfg for your data set from a base cfg: class count, head filters, k-means anchors.

    python derive_cfg.py --cfg cfg/yolov3-tiny.cfg --data my.data --img-size 256 --out my.cfg

--data is a Darknet .data file, a dataset YAML (path/train/val/names) or a folder in YOLO layout
(images/{train,val}, labels/{train,val}). Every [yolo] layer gets the data's class count, the conv
feeding it len(mask) * (5 + classes) filters, and the anchors come from k-means (1 - IoU) on the
training boxes at --img-size (the [net] width/height are set to it too). Nothing is written but
--out, which must not exist yet.
"""
import argparse
import os

from yoloslim.cli import checks
from yoloslim.errors import SlimError, cli_main
from yoloslim.darknet.cfg import write_model_cfg


def parse_args(argv=None):
    from yoloslim.data.userdata import data_source
    p = checks.Parser(prog="derive_cfg.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", required=True, type=checks.input_file, help="the base cfg (e.g. cfg/yolov3-tiny.cfg)")
    p.add_argument("--data", required=True, type=data_source,
                   help="your data set: a .data file, a dataset YAML or a YOLO folder")
    p.add_argument("--img-size", type=checks.img_size, help="network input size (default: the base cfg's width)")
    p.add_argument("--keep-anchors", action="store_true", help="keep the base cfg's anchors instead of k-means")
    p.add_argument("--out", required=True, type=checks.output_file, help="the cfg to write (must not exist)")
    args = p.parse_args(argv)
    if os.path.lexists(args.out):
        raise SlimError(f"--out {args.out}: exists; derive_cfg.py never replaces a file, choose a new name")
    if not args.out.endswith(".cfg"):
        raise SlimError(f"--out {args.out}: name the file *.cfg")
    defs = checks.check_cfg(args.cfg)
    if args.img_size is None:
        args.img_size = checks.round_img_size(int(defs[0].get("width", 416)), f"{args.cfg} width")
    return args


def main(argv=None):
    from yoloslim.pipeline.derive import anchors_text, derive_for_data
    from yoloslim.data.userdata import describe, load_dataset
    args = parse_args(argv)
    spec = load_dataset(args.data)
    derived = derive_for_data(args.cfg, spec, args.img_size, args.keep_anchors)
    write_model_cfg(derived.defs, args.out)
    for line in describe(spec):
        print(line)
    how = "k-means on the training boxes" if derived.kmeans else f"kept from {args.cfg}"
    print(f"wrote {args.out}: {args.cfg} with classes={derived.classes}, input {args.img_size}, "
          f"anchors {anchors_text(derived.anchors)} ({how})")
    return args.out


if __name__ == "__main__":
    cli_main(main)
