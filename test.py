"""Evaluate a Darknet YOLO model: precision, recall, F1, mAP@0.5 and mAP@0.5:0.95.

    python test.py --cfg cfg/yolov3-narrow.cfg --data data/shapes/shapes.data --weights runs/narrow/best.pt
    python test.py --cfg pruned.cfg --weights pruned.weights --reference-cfg orig.cfg \
        --reference-weights orig.weights --source images/      # no labels: agreement with the original

The evaluation itself is ``yoloslim.eval.evaluate.evaluate``, shared with training and pruning.
"""
if __name__ == "__main__":   # first, before torch loads: a Ctrl-C while importing is one line, exit 130
    from yoloslim.interrupt import exit_quietly_on_ctrl_c
    exit_quietly_on_ctrl_c()
import os

# Before torch starts OpenMP: busy-waiting threads on a shared or oversubscribed CPU were
# measured up to 60x slower than passive ones (set the variable yourself to override).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from yoloslim.cli import checks  # noqa: E402  (imports below follow the environment setting on purpose)
from yoloslim.darknet.load import load_any
from yoloslim.errors import DataError, cli_main
from yoloslim.eval.agreement import agreement
from yoloslim.eval.evaluate import evaluate
from yoloslim.io import is_torch_file


def parse_args(argv=None):
    p = checks.parser(__doc__.split("\n\n")[0], prog="test.py")
    p.add_argument("--cfg", type=checks.input_file, help="model .cfg (may be left out when --weights is a checkpoint of ours)")
    p.add_argument("--data", type=checks.input_file, help=".data file; its valid= list is evaluated")
    p.add_argument("--weights", required=True, type=checks.input_file, help="Darknet weights or our checkpoint")
    checks.add_img_size(p)
    p.add_argument("--batch-size", type=checks.positive_int, default=16)
    p.add_argument("--conf-thres", type=checks.fraction, default=0.001, help="confidence threshold, in [0, 1]")
    p.add_argument("--iou-thres", type=checks.fraction, default=0.5, help="NMS IoU threshold, in [0, 1]")
    p.add_argument("--max-images", type=checks.positive_int, help="evaluate only the first N validation images")
    checks.add_device(p)
    p.add_argument("--reference-cfg", type=checks.input_file, help="agreement mode: cfg of the reference (e.g. unpruned) model")
    p.add_argument("--reference-weights", type=checks.input_file, help="agreement mode: its weights; its detections on --source are "
                   "the reference boxes the model is scored against (mAP@0.5)")
    p.add_argument("--source", type=checks.image_source, help="agreement mode: a folder (or file, or glob) of unlabelled images")
    opt = p.parse_args(argv)
    if opt.reference_weights or opt.source:
        if not (opt.reference_weights and opt.source):
            p.error("agreement needs both --reference-weights (with --reference-cfg unless a checkpoint of ours) and --source")
        if not opt.reference_cfg and not is_torch_file(opt.reference_weights):
            p.error("--reference-cfg is required unless --reference-weights is a checkpoint of ours")
    elif not opt.data:
        p.error("pass --data (labelled evaluation) or --reference-weights and --source (agreement)")
    if not opt.cfg and not is_torch_file(opt.weights):
        p.error("--cfg is required unless --weights is a checkpoint of ours (which holds its cfg)")
    return opt


def validate_inputs(opt):
    """.data (lists, names) and cfg checked before the model is built; returns the parsed .data or None."""
    opt.device = checks.device(opt.device)
    if not opt.data:
        if opt.cfg:
            checks.check_cfg(opt.cfg)
        return None
    data = checks.check_data(opt.data)
    if opt.cfg:
        defs = checks.check_cfg(opt.cfg)
        checks.check_classes(checks.cfg_classes(defs), data, opt.data)
    return data


def main(argv=None):
    opt = parse_args(argv)
    data = validate_inputs(opt)
    model = load_any(opt.cfg, opt.weights, opt.img_size)
    if data is not None:
        checks.check_classes(model.nc, data, opt.data)   # a checkpoint's own cfg is known only now
    model.to(opt.device)
    img_size = opt.img_size or int(model.img_size[1])
    if opt.source:
        reference = load_any(opt.reference_cfg, opt.reference_weights, opt.img_size).to(opt.device)
        if reference.nc != model.nc:
            raise DataError(f"{opt.reference_weights}: the reference has {reference.nc} classes and "
                            f"{opt.weights} {model.nc}; compare a pruned model with the model it came from")
        print(agreement(reference, model, opt.source, img_size, opt.batch_size).line())
        if not opt.data:
            return
    evaluate(model, opt.data, img_size=img_size, batch_size=opt.batch_size, conf_thres=opt.conf_thres,
             iou_thres=opt.iou_thres, max_images=opt.max_images)


if __name__ == "__main__":
    cli_main(main)
