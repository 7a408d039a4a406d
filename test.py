"""Evaluate a Darknet YOLO model: precision, recall, F1, mAP@0.5 and mAP@0.5:0.95.

    python test.py --cfg cfg/yolov3-narrow.cfg --data data/shapes/shapes.data --weights runs/narrow/best.pt
    python test.py --cfg pruned.cfg --weights pruned.weights --reference-cfg orig.cfg \
        --reference-weights orig.weights --source images/      # no labels: agreement with the original

``evaluate(model, data)`` is the same code as a function for train.py and the prune scripts.
"""
if __name__ == "__main__":   # first, before torch loads: a Ctrl-C while importing is one line, exit 130
    from utils.interrupt import exit_quietly_on_ctrl_c
    exit_quietly_on_ctrl_c()
import os

# Before torch starts OpenMP: busy-waiting threads on a shared or oversubscribed CPU were
# measured up to 60x slower than passive ones (set the variable yourself to override).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402  (imports below follow the environment setting on purpose)
from torch.utils.data import DataLoader, Subset

from models import load_model, model_from_checkpoint
from utils.agreement import agreement
from utils.datasets import LoadImagesAndLabels
from utils import cli_checks as checks
from utils.errors import DataError, SlimError, cli_main
from utils.io import is_torch_file
from utils.metrics import (IOU_THRESHOLDS, format_results_table, match_predictions, non_max_suppression,
                           summarize_detections, xywh2xyxy)
from utils.parse_config import load_classes, parse_data_cfg


def build_loader(list_path, img_size, batch_size=16, workers=0, max_images=None, nc=None):
    """Validation loader: letterboxed, no augmentation, fixed order."""
    dataset = LoadImagesAndLabels(list_path, img_size, batch_size, augment=False, nc=nc)
    if len(dataset) == 0:
        raise DataError(f"{list_path}: no validation images")
    if max_images is not None and max_images < len(dataset):
        dataset = Subset(dataset, range(max_images))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=LoadImagesAndLabels.collate_fn)


def _loader_and_names(data, img_size, batch_size, max_images, names, nc):
    """Accept a .data path, a parsed .data dict, or batches (a DataLoader or any iterable)."""
    if isinstance(data, (str, os.PathLike)):
        data = parse_data_cfg(data)
    elif not isinstance(data, dict):
        return data, names
    if not data.get("valid"):
        raise DataError("the .data file has no 'valid=' line; add the validation image list")
    if names is None and data.get("names"):
        names = load_classes(data["names"])
    return build_loader(data["valid"], img_size, batch_size, 0, max_images, nc), names


def _batch_stats(preds, targets, imgs_hw):
    """Per image with predictions or labels: (correct (n, 10) bool, conf, pred cls, target cls)."""
    h, w = imgs_hw
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    stats = []
    for k, det in enumerate(preds):
        labels = targets[targets[:, 0] == k]
        if len(det) == 0 and len(labels) == 0:
            continue
        det = det.cpu()
        tbox = xywh2xyxy(labels[:, 2:6] * scale)
        correct = match_predictions(det[:, :4], det[:, 5], tbox, labels[:, 1], IOU_THRESHOLDS)
        stats.append((correct, det[:, 4], det[:, 5], labels[:, 1]))
    return stats


@torch.no_grad()
def evaluate(model, data, img_size=416, batch_size=16, conf_thres=0.001, iou_thres=0.5, names=None,
             verbose=True, max_images=None, progress=True):
    """mAP of ``model`` on a data set.

    ``data``: a .data path (its ``valid=`` list is used), a parsed .data dict, or a DataLoader
    (any iterable) of (imgs, targets, paths, shapes) batches as ``LoadImagesAndLabels.collate_fn``
    makes them.
    ``iou_thres`` is the NMS IoU. Returns a dict with overall P, R, F1, mAP50, mAP50_95 and the
    per-class arrays (``ap_class`` the class ids, ``p``, ``r``, ``f1``, ``ap50``, ``ap``).
    """
    loader, names = _loader_and_names(data, img_size, batch_size, max_images, names, model.nc)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    stats, seen = [], 0
    batches = loader
    if progress:
        from tqdm import tqdm
        batches = tqdm(loader, desc="evaluating", dynamic_ncols=True, leave=False)
    try:
        for imgs, targets, _, _ in batches:
            imgs = imgs.to(device).float()
            io, _ = model(imgs)
            preds = non_max_suppression(io.float(), conf_thres=conf_thres, iou_thres=iou_thres)
            stats += _batch_stats(preds, targets.cpu(), imgs.shape[-2:])
            seen += imgs.shape[0]
    finally:
        model.train(was_training)
    results = summarize_detections(stats, model.nc)
    results["seen"] = seen
    if verbose:
        print(format_results_table(names, results))
    return results


def parse_args(argv=None):
    p = checks.parser(__doc__.split("\n\n")[0], prog="test.py")
    p.add_argument("--cfg", type=checks.input_file, help="model .cfg (may be left out when --weights is a checkpoint of ours)")
    p.add_argument("--data", type=checks.input_file, help=".data file; its valid= list is evaluated")
    p.add_argument("--weights", required=True, type=checks.input_file, help="Darknet weights or our checkpoint")
    p.add_argument("--img-size", type=checks.img_size, default=None,
                   help="input size, rounded up to a multiple of 32 (default: the cfg's width)")
    p.add_argument("--batch-size", type=checks.positive_int, default=16)
    p.add_argument("--conf-thres", type=checks.fraction, default=0.001, help="confidence threshold, in [0, 1]")
    p.add_argument("--iou-thres", type=checks.fraction, default=0.5, help="NMS IoU threshold, in [0, 1]")
    p.add_argument("--max-images", type=checks.positive_int, help="evaluate only the first N validation images")
    p.add_argument("--device", default="cpu", help="'cpu' or 'cuda'")
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
    if opt.device != "cpu" and not torch.cuda.is_available():
        raise SlimError(f"--device {opt.device}: CUDA is not available here; use --device cpu")
    if not opt.data:
        if opt.cfg:
            checks.check_cfg(opt.cfg)
        return None
    data = checks.check_data(opt.data)
    if opt.cfg:
        defs = checks.check_cfg(opt.cfg)
        checks.check_classes(checks.cfg_classes(defs), data, opt.data)
    return data


def load_any(cfg, weights, img_size):
    return load_model(cfg, weights, img_size) if cfg else model_from_checkpoint(weights, img_size)


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
