"""Box utilities, non-maximum suppression and detection metrics (P, R, F1, mAP).

Conventions: boxes are xyxy (x1, y1, x2, y2) unless a name says xywh (centre x, centre y,
width, height); IoU has no "+1" pixel term (COCO's definition).

mAP: predictions are matched to ground truth greedily, highest confidence first, each
ground-truth box at most once, at each IoU threshold 0.50:0.05:0.95 (``match_predictions``).
AP is then the area under the precision envelope (``compute_ap``):
  * method='interp' (default): all-point interpolation as in PASCAL VOC 2010+;
  * method='coco': 101 recall points as in pycocotools; with the same matching rule this equals
    COCOeval's AP (tests/test_metrics.py checks it), except that COCOeval also keeps at most
    100 detections per image and splits results by object area.
"""
import math

import cv2
import numpy as np
import torch

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCO's mAP@0.5:0.95 thresholds


# ----------------------------------------------------------------------------- box utilities

def _clone(x):
    """A float copy to write converted boxes into (integer input would truncate)."""
    if isinstance(x, torch.Tensor):
        return x.clone() if x.is_floating_point() else x.float()
    x = np.asarray(x)
    return x.copy() if x.dtype.kind == "f" else x.astype(np.float64)


def xywh2xyxy(x):
    """(n, 4) centre-size boxes -> corner boxes (torch or numpy, same kind back)."""
    y = _clone(x)
    y[..., 0] = x[..., 0] - x[..., 2] / 2
    y[..., 1] = x[..., 1] - x[..., 3] / 2
    y[..., 2] = x[..., 0] + x[..., 2] / 2
    y[..., 3] = x[..., 1] + x[..., 3] / 2
    return y


def xyxy2xywh(x):
    """(n, 4) corner boxes -> centre-size boxes (torch or numpy, same kind back)."""
    y = _clone(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def box_iou(box1, box2):
    """Pairwise IoU of (N, 4) and (M, 4) xyxy torch boxes -> (N, M)."""
    area1 = (box1[:, 2] - box1[:, 0]).clamp(min=0) * (box1[:, 3] - box1[:, 1]).clamp(min=0)
    area2 = (box2[:, 2] - box2[:, 0]).clamp(min=0) * (box2[:, 3] - box2[:, 1]).clamp(min=0)
    lt = torch.max(box1[:, None, :2], box2[None, :, :2])
    rb = torch.min(box1[:, None, 2:], box2[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    union = area1[:, None] + area2[None, :] - inter
    return inter / union.clamp(min=1e-12)


def bbox_iou(box1, box2, xywh=False, GIoU=False, DIoU=False, CIoU=False, eps=1e-7):
    """Element-wise IoU of broadcastable (..., 4) torch boxes, optionally GIoU/DIoU/CIoU.

    Used by the loss, so everything stays differentiable. ``xywh``: boxes are centre-size.
    Returns shape (...,) (the broadcast of the leading dimensions).
    """
    if xywh:
        box1, box2 = xywh2xyxy(box1), xywh2xyxy(box2)
    b1x1, b1y1, b1x2, b1y2 = box1.unbind(-1)
    b2x1, b2y1, b2x2, b2y2 = box2.unbind(-1)
    w1, h1 = b1x2 - b1x1, (b1y2 - b1y1).clamp(min=eps)
    w2, h2 = b2x2 - b2x1, (b2y2 - b2y1).clamp(min=eps)
    inter = ((torch.min(b1x2, b2x2) - torch.max(b1x1, b2x1)).clamp(min=0)
             * (torch.min(b1y2, b2y2) - torch.max(b1y1, b2y1)).clamp(min=0))
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if not (GIoU or DIoU or CIoU):
        return iou
    cw = torch.max(b1x2, b2x2) - torch.min(b1x1, b2x1)  # enclosing box
    ch = torch.max(b1y2, b2y2) - torch.min(b1y1, b2y1)
    if GIoU:
        c_area = cw * ch + eps
        return iou - (c_area - union) / c_area
    c2 = cw ** 2 + ch ** 2 + eps  # squared diagonal of the enclosing box
    rho2 = ((b2x1 + b2x2 - b1x1 - b1x2) ** 2 + (b2y1 + b2y2 - b1y1 - b1y2) ** 2) / 4  # centre distance^2
    if DIoU:
        return iou - rho2 / c2
    v = (4 / math.pi ** 2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def clip_coords(boxes, shape):
    """Clip xyxy boxes in place to an image of shape (h, w, ...)."""
    h, w = shape[:2]
    if isinstance(boxes, torch.Tensor):
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clamp(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clamp(0, h)
    else:
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return boxes


def scale_coords(img1_shape, coords, img0_shape, ratio_pad=None):
    """Map xyxy boxes from a letterboxed image (img1_shape) back to the original (img0_shape).

    ``ratio_pad`` = (ratio, (dw, dh)) as returned by ``yoloslim.data.datasets.letterbox``; when left
    out it is recomputed the same way letterbox does (square or (h, w) target, centred pad).
    """
    if ratio_pad is None:
        h0, w0 = img0_shape[:2]
        ratio = min(img1_shape[0] / h0, img1_shape[1] / w0)
        dw = (img1_shape[1] - int(round(w0 * ratio))) // 2
        dh = (img1_shape[0] - int(round(h0 * ratio))) // 2
    else:
        ratio, (dw, dh) = ratio_pad
        ratio = ratio[0] if isinstance(ratio, (tuple, list)) else ratio
    coords[:, [0, 2]] -= dw
    coords[:, [1, 3]] -= dh
    coords[:, :4] /= ratio
    return clip_coords(coords, img0_shape)


# ----------------------------------------------------------------------------- NMS

def batched_nms(boxes, scores, classes, iou_thres):
    """Greedy per-class NMS through OpenCV (C++, no Python loop over boxes).

    ``cv2.dnn.NMSBoxesBatched`` shifts each class to its own region so boxes of different
    classes never overlap. Returns kept indices (int64 tensor), highest score first.
    """
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long)
    b = boxes.detach().cpu().double().numpy()
    xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], 1)  # cv2 Rect2d is (x, y, w, h)
    s = scores.detach().cpu().float().numpy()
    keep = cv2.dnn.NMSBoxesBatched(xywh, s, classes.detach().cpu().numpy().astype(np.int32), -1.0,
                                   float(iou_thres))
    keep = np.asarray(keep, dtype=np.int64).reshape(-1)
    keep = keep[np.argsort(-s[keep], kind="stable")]
    return torch.from_numpy(keep)


def non_max_suppression(prediction, conf_thres=0.001, iou_thres=0.5, multi_label=False, classes=None,
                        max_det=300, max_nms=30000):
    """Filter decoded YOLO outputs to detections.

    ``prediction``: (B, N, 5+nc) with xywh in input pixels, objectness and class
    probabilities already through sigmoid. Score = obj * cls. ``multi_label``: one
    detection per (box, class) above the threshold instead of the best class only.
    Returns a list of B tensors (n, 6) [x1, y1, x2, y2, conf, cls], highest conf first.
    """
    output = []
    for x in prediction:  # one image at a time
        x = x[x[:, 4] > conf_thres]
        boxes = xywh2xyxy(x[:, :4])
        scores = x[:, 5:] * x[:, 4:5] if x.shape[1] > 5 else x[:, 4:5]
        if multi_label:
            i, j = (scores > conf_thres).nonzero(as_tuple=True)
            det = torch.cat((boxes[i], scores[i, j, None], j[:, None].to(x.dtype)), 1)
        else:
            conf, j = scores.max(1, keepdim=True)
            det = torch.cat((boxes, conf, j.to(x.dtype)), 1)[conf.view(-1) > conf_thres]
        if classes is not None:
            det = det[(det[:, 5:6] == torch.tensor(classes, device=det.device, dtype=det.dtype)).any(1)]
        if len(det) > max_nms:  # bound the NMS cost on a flood of low-confidence boxes
            det = det[det[:, 4].argsort(descending=True)[:max_nms]]
        keep = batched_nms(det[:, :4], det[:, 4], det[:, 5], iou_thres).to(det.device)
        output.append(det[keep[:max_det]])
    return output


# ----------------------------------------------------------------------------- matching and AP

def _np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _as_2d(tp):
    """(n,) -> (n, 1): a single IoU threshold may come as a flat vector."""
    tp = _np(tp)
    return tp.reshape(-1, 1) if tp.ndim == 1 else tp


def _box_iou_np(a, b):
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def match_predictions(pred_xyxy, pred_cls, gt_xyxy, gt_cls, iouv=IOU_THRESHOLDS, pred_conf=None):
    """Which predictions of one image are true positives, per IoU threshold.

    Predictions are taken in order of decreasing confidence (``pred_conf`` when given, else
    the order passed in, as NMS returns it). Each takes, among the still-unmatched
    ground-truth boxes of its class with IoU >= the threshold, the one with the highest
    IoU (COCO's rule). Returns (n_pred, len(iouv)) bool, torch when ``pred_xyxy`` is a
    tensor, else numpy, in the order the predictions were passed.
    """
    as_torch = isinstance(pred_xyxy, torch.Tensor)
    pb, pc, gb, gc = (_np(v).astype(np.float64).reshape(-1, k)
                      for v, k in ((pred_xyxy, 4), (pred_cls, 1), (gt_xyxy, 4), (gt_cls, 1)))
    thresholds = _np(iouv).astype(np.float64).reshape(-1)
    correct = np.zeros((len(pb), len(thresholds)), bool)
    if len(pb) and len(gb):
        # IoU only counts between boxes of the same class
        iou = _box_iou_np(pb, gb) * (pc == gc.T)
        order = np.arange(len(pb)) if pred_conf is None else np.argsort(-_np(pred_conf).reshape(-1), kind="stable")
        _greedy_match(iou, order, thresholds, correct)
    return torch.from_numpy(correct).to(pred_xyxy.device) if as_torch else correct


def _greedy_match(iou, order, thresholds, correct):
    # Only predictions that reach the lowest threshold with some GT can match: skipping the
    # rest keeps the Python loop as short as the number of plausible matches.
    candidates = order[iou[order].max(1) >= thresholds.min()]
    taken = np.zeros((len(thresholds), iou.shape[1]), bool)  # GT already matched, per threshold
    for i in candidates:
        ok = (iou[i][None, :] >= thresholds[:, None]) & ~taken  # (T, n_gt)
        best = np.where(ok, iou[i][None, :], -1.0).argmax(1)
        hit = ok[np.arange(len(thresholds)), best]
        taken[np.nonzero(hit)[0], best[hit]] = True
        correct[i] = hit


def compute_ap(recall, precision, method="interp"):
    """AP from a recall/precision curve (predictions sorted by decreasing confidence).

    'interp': area under the monotone precision envelope at every recall change (VOC 2010+).
    'coco': mean of the envelope at 101 recall points 0, 0.01, ..., 1 (pycocotools).
    """
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if method == "coco":
        if len(recall) == 0:
            return 0.0
        envelope = np.flip(np.maximum.accumulate(np.flip(precision)))
        idx = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
        # recall levels never reached count as precision 0
        at_levels = np.where(idx < len(recall), envelope[np.minimum(idx, len(recall) - 1)], 0.0)
        return float(at_levels.mean())
    if method != "interp":
        raise ValueError(f"method={method!r}; use 'interp' or 'coco'")
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]).sum())


def ap_per_class(tp, conf, pred_cls, target_cls, method="interp"):
    """Per-class precision, recall, AP and F1 over a whole data set.

    ``tp``: (n, T) bool from ``match_predictions`` (T IoU thresholds, first = 0.5);
    ``conf``, ``pred_cls``: (n,); ``target_cls``: class of every ground-truth box.
    Returns (p, r, ap, f1, classes): ``classes`` are the classes that have ground truth
    (sorted); ``ap`` is (len(classes), T); p, r, f1 are at IoU 0.5 and at the one confidence
    threshold that maximizes the mean F1 over classes.
    """
    tp = _as_2d(tp).astype(bool)
    conf, pred_cls, target_cls = _np(conf).reshape(-1), _np(pred_cls).reshape(-1), _np(target_cls).reshape(-1)
    order = np.argsort(-conf, kind="stable")
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes = np.unique(target_cls).astype(int)
    grid = np.linspace(0, 1, 1001)  # confidence thresholds for the P/R/F1 operating point
    ap = np.zeros((len(classes), tp.shape[1]))
    p_curve, r_curve = np.zeros((len(classes), len(grid))), np.zeros((len(classes), len(grid)))
    for ci, c in enumerate(classes):
        is_c = pred_cls == c
        n_gt = int((target_cls == c).sum())
        if not is_c.any():
            continue  # AP, P and R stay 0
        tpc = np.cumsum(tp[is_c], 0)
        fpc = np.cumsum(~tp[is_c], 0)
        recall = tpc / n_gt
        precision = tpc / (tpc + fpc)
        ap[ci] = [compute_ap(recall[:, j], precision[:, j], method) for j in range(tp.shape[1])]
        # kept[k] = how many predictions have conf >= grid[k]
        kept = np.searchsorted(-conf[is_c], -grid, side="right")
        r_curve[ci] = np.where(kept > 0, recall[np.maximum(kept - 1, 0), 0], 0.0)
        p_curve[ci] = np.where(kept > 0, precision[np.maximum(kept - 1, 0), 0], 1.0)
    f1_curve = 2 * p_curve * r_curve / np.maximum(p_curve + r_curve, 1e-16)
    best = int(f1_curve.mean(0).argmax()) if len(classes) else 0
    return p_curve[:, best], r_curve[:, best], ap, f1_curve[:, best], classes


def summarize_detections(stats, nc, method="interp"):
    """Overall and per-class metrics from per-image (correct, conf, pred_cls, target_cls) tuples.

    Means run over the classes that have ground truth. Returns a dict: P, R, F1, mAP50,
    mAP50_95 (floats) and per class ap_class, p, r, f1, ap50, ap (mAP@0.5:0.95), n_targets
    (length nc, boxes per class).
    """
    stats = [tuple(_np(v) for v in s) for s in stats]
    if stats:
        correct = np.concatenate([_as_2d(s[0]) for s in stats], 0)
        conf, pcls, tcls = (np.concatenate([s[k].reshape(-1) for s in stats]) for k in (1, 2, 3))
    else:
        correct, conf, pcls, tcls = np.zeros((0, len(IOU_THRESHOLDS)), bool), *(np.zeros(0),) * 3
    p, r, ap, f1, classes = ap_per_class(correct, conf, pcls, tcls, method)
    ap50 = ap[:, 0] if len(classes) else np.zeros(0)
    ap_all = ap.mean(1) if len(classes) else np.zeros(0)

    def mean(v):
        return float(v.mean()) if len(v) else 0.0

    return {"P": mean(p), "R": mean(r), "F1": mean(f1), "mAP50": mean(ap50), "mAP50_95": mean(ap_all),
            "ap_class": classes, "p": p, "r": r, "f1": f1, "ap50": ap50, "ap": ap_all,
            "n_targets": np.bincount(tcls.astype(int), minlength=nc)}


def format_results_table(names, stats):
    """Text table: one row per class with ground truth and an 'all' row first.

    ``names``: class names (or None for numbers); ``stats``: the dict of
    ``summarize_detections``. Uses terminaltables when it is installed.
    """
    header = ["Class", "Targets", "P", "R", "mAP@0.5", "F1", "mAP@0.5:0.95"]
    n_targets = np.asarray(stats["n_targets"])
    rows = [["all", int(n_targets.sum()), stats["P"], stats["R"], stats["mAP50"], stats["F1"], stats["mAP50_95"]]]
    for k, c in enumerate(np.asarray(stats["ap_class"]).astype(int)):
        name = names[c] if names is not None and c < len(names) else str(c)
        rows.append([name, int(n_targets[c]) if c < len(n_targets) else 0, stats["p"][k], stats["r"][k],
                     stats["ap50"][k], stats["f1"][k], stats["ap"][k]])
    cells = [header] + [[row[0], str(row[1])] + [f"{v:.3f}" for v in row[2:]] for row in rows]
    try:
        from terminaltables import AsciiTable
    except ImportError:
        return _plain_table(cells)
    table = AsciiTable(cells)
    for col in range(1, len(header)):
        table.justify_columns[col] = "right"
    return table.table


def _plain_table(cells):
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
             for row in cells]
    return "\n".join([lines[0], "-" * len(lines[0])] + lines[1:])
