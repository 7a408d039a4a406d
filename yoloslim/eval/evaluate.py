"""mAP of a model on a labelled data set: the one evaluation train.py, test.py, the prune scripts
and the pipeline call."""
import os

import torch
from torch.utils.data import DataLoader, Subset

from yoloslim.darknet.cfg import load_classes, parse_data_cfg
from yoloslim.data.datasets import LoadImagesAndLabels
from yoloslim.errors import DataError
from yoloslim.eval.metrics import (IOU_THRESHOLDS, format_results_table, match_predictions, non_max_suppression,
                                   summarize_detections, xywh2xyxy)


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
