"""Box utilities, NMS, matching and AP: hand-checked cases and a pycocotools comparison."""
import contextlib
import io

import numpy as np
import pytest
import torch

from yoloslim.eval.metrics import (IOU_THRESHOLDS, ap_per_class, bbox_iou, box_iou, compute_ap, format_results_table,
                           match_predictions, non_max_suppression, summarize_detections, xywh2xyxy, xyxy2xywh)


# ----------------------------------------------------------------------------- boxes

def test_box_conversions_round_trip():
    xyxy = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    assert xyxy2xywh(xyxy).tolist() == [[20.0, 40.0, 20.0, 40.0]]
    assert torch.equal(xywh2xyxy(xyxy2xywh(xyxy)), xyxy)
    arr = np.array([[5, 5, 4, 2]])  # integer input must not be truncated
    assert xywh2xyxy(arr).tolist() == [[3.0, 4.0, 7.0, 6.0]]
    assert arr.tolist() == [[5, 5, 4, 2]]  # input untouched


def test_box_iou_and_variants():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 0.0, 30.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    assert box_iou(a, b)[0].tolist() == pytest.approx([50 / 150, 0.0, 1.0])
    assert bbox_iou(a, b).tolist() == pytest.approx([50 / 150, 0.0, 1.0], abs=1e-6)
    # GIoU of disjoint boxes is negative: enclosing box 30x10, union 200 -> 0 - 100/300
    assert bbox_iou(a, b[1:2], GIoU=True).item() == pytest.approx(-1 / 3, abs=1e-6)
    # DIoU: centres 5 apart, enclosing diagonal^2 = 15^2 + 10^2
    assert bbox_iou(a, b[:1], DIoU=True).item() == pytest.approx(1 / 3 - 25 / 325, abs=1e-6)
    # same aspect ratio: CIoU == DIoU; xywh input gives the same numbers
    assert bbox_iou(a, b[:1], CIoU=True).item() == pytest.approx(1 / 3 - 25 / 325, abs=1e-6)
    assert bbox_iou(xyxy2xywh(a), xyxy2xywh(b), xywh=True).tolist() == pytest.approx([1 / 3, 0, 1], abs=1e-6)


# ----------------------------------------------------------------------------- NMS

def yolo_output(rows, nc):
    """(1, n, 5+nc) from rows of (cx, cy, w, h, obj, cls)."""
    out = torch.zeros(1, len(rows), 5 + nc)
    for i, (cx, cy, w, h, obj, cls) in enumerate(rows):
        out[0, i, :5] = torch.tensor([cx, cy, w, h, obj])
        out[0, i, 5 + cls] = 1.0
    return out


def test_nms_removes_same_class_overlap_keeps_other_class():
    pred = yolo_output([
        (50, 50, 20, 20, 0.9, 0),
        (52, 50, 20, 20, 0.8, 0),   # IoU 0.82 with the first, same class: removed
        (51, 51, 20, 20, 0.7, 1),   # same place, other class: kept
        (150, 150, 20, 20, 0.6, 0),  # far away: kept
        (40, 40, 20, 20, 0.5, 0),   # IoU 0.29 with the first: kept
    ], nc=2)
    det = non_max_suppression(pred, conf_thres=0.1, iou_thres=0.5)[0]
    assert det[:, 4].tolist() == pytest.approx([0.9, 0.7, 0.6, 0.5])
    assert det[:, 5].tolist() == [0, 1, 0, 0]
    assert det[0, :4].tolist() == [40, 40, 60, 60]
    assert len(non_max_suppression(pred, conf_thres=0.75)[0]) == 1
    assert non_max_suppression(pred, conf_thres=0.1, classes=[1])[0][:, 5].tolist() == [1]
    assert len(non_max_suppression(pred, conf_thres=0.1, max_det=2)[0]) == 2


def test_nms_score_is_obj_times_cls_and_multi_label():
    pred = torch.zeros(1, 1, 7)
    pred[0, 0] = torch.tensor([50, 50, 10, 10, 0.5, 0.8, 0.4])
    det = non_max_suppression(pred, conf_thres=0.1)[0]
    assert det[:, 4:].flatten().tolist() == pytest.approx([0.4, 0.0])
    det = non_max_suppression(pred, conf_thres=0.1, multi_label=True)[0]
    assert det[:, 4:].flatten().tolist() == pytest.approx([0.4, 0.0, 0.2, 1.0])
    assert [len(d) for d in non_max_suppression(torch.zeros(3, 0, 7))] == [0, 0, 0]


def reference_nms(boxes, scores, iou_thres):
    """Textbook greedy NMS, one box at a time: the ground truth for the vectorized version."""
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        ious = box_iou(torch.tensor(boxes[i:i + 1]), torch.tensor(boxes[order])).numpy()[0] if order else []
        order = [j for j, v in zip(order, ious) if v <= iou_thres]
    return keep


def test_nms_matches_reference_on_random_boxes():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 60, (300, 2))], 1)
    scores = rng.uniform(0.01, 1, 300)
    pred = torch.zeros(1, 300, 6)
    pred[0, :, :4] = xyxy2xywh(torch.tensor(boxes, dtype=torch.float32))
    pred[0, :, 4] = torch.tensor(scores, dtype=torch.float32)
    pred[0, :, 5] = 1.0
    det = non_max_suppression(pred, conf_thres=0.0, iou_thres=0.45, max_det=1000)[0]
    expected = reference_nms(xywh2xyxy(pred[0, :, :4]).numpy(), pred[0, :, 4].numpy(), 0.45)
    assert det[:, 4].tolist() == pytest.approx(pred[0, expected, 4].tolist())


# ----------------------------------------------------------------------------- matching

def test_matching_each_gt_once_highest_confidence_first():
    gt = np.array([[0, 0, 10, 10], [6, 0, 16, 10]], float)
    gt_cls = np.array([0, 0])
    preds = np.array([[0, 0, 10, 10],     # IoU 1 with GT 0, 40/160 = 0.25 with GT 1
                      [0, 0, 10, 10],     # duplicate: GT 0 taken, GT 1 below 0.3 -> FP
                      [1, 0, 11, 10]], float)  # IoU 90/110 = 0.82 GT 0 (taken), 50/150 = 0.33 GT 1
    thresholds = np.array([0.3, 0.5])
    correct = match_predictions(preds, np.zeros(3), gt, gt_cls, iouv=thresholds)
    assert correct.tolist() == [[True, True], [False, False], [True, False]]
    # with confidences given, the third box goes first and takes GT 0 (its best IoU);
    # the first box is then left with GT 1 at IoU 0.25 < 0.3
    correct = match_predictions(preds, np.zeros(3), gt, gt_cls, iouv=thresholds,
                                pred_conf=np.array([0.5, 0.4, 0.9]))
    assert correct.tolist() == [[False, False], [False, False], [True, True]]


def test_matching_takes_best_iou_gt_and_respects_class():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0]])
    pred = torch.tensor([[2.0, 0.0, 12.0, 10.0]])
    # both GTs pass 0.5; the prediction takes the one it overlaps best (GT 1, IoU 1)
    correct = match_predictions(pred, torch.tensor([0.0]), gt, torch.tensor([0.0, 0.0]), torch.tensor([0.5, 0.95]))
    assert correct.dtype == torch.bool and correct.tolist() == [[True, True]]
    assert match_predictions(pred, torch.tensor([1.0]), gt, torch.tensor([0.0, 0.0])).sum() == 0
    assert match_predictions(torch.zeros(0, 4), torch.zeros(0), gt, torch.zeros(2)).shape == (0, 10)


# ----------------------------------------------------------------------------- AP

def hand_case():
    """One class, 3 GT boxes, 4 predictions in decreasing confidence.

    p1 (0.9) == GT A (IoU 1)                      -> TP at every threshold
    p2 (0.8) == GT A again                        -> FP (A already matched)
    p3 (0.7) vs GT B: inter 10*6.2=62, union 100  -> IoU 0.62: TP at 0.50/0.55/0.60, FP from 0.65
    p4 (0.6) far from everything                  -> FP
    GT C is never found.
    """
    gt = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], float)
    pred = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 0, 30, 6.2], [100, 100, 110, 110]], float)
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    correct = match_predictions(pred, np.zeros(4), gt, np.zeros(3), IOU_THRESHOLDS)
    return correct, conf, np.zeros(4), np.zeros(3)


def test_hand_checked_ap():
    correct, conf, pcls, tcls = hand_case()
    assert correct[:, 0].tolist() == [True, False, True, False]
    assert correct[:, 3:].any(1).tolist() == [True, False, False, False]  # thresholds >= 0.65
    # IoU 0.5: precision 1, 1/2, 2/3, 1/2 at recall 1/3, 1/3, 2/3, 2/3.
    #   VOC: envelope 1 on (0, 1/3], 2/3 on (1/3, 2/3] -> AP = 1/3 + 2/9 = 5/9
    #   COCO 101-point: levels 0..0.33 (34) at 1, 0.34..0.66 (33) at 2/3, rest 0 -> 56/101
    # IoU >= 0.65 (7 thresholds): only p1 -> AP = 1/3 (both methods: COCO gives 34/101)
    # mAP@0.5:0.95 (VOC) = (3 * 5/9 + 7 * 1/3) / 10 = 0.4
    p, r, ap, f1, classes = ap_per_class(correct, conf, pcls, tcls)
    assert classes.tolist() == [0]
    assert ap[0, 0] == pytest.approx(5 / 9)
    assert ap[0, 3:].tolist() == pytest.approx([1 / 3] * 7)
    assert ap.mean() == pytest.approx(0.4)
    # best F1 is at conf >= 0.7: 2 TP of 3 predictions, 2 of 3 GT -> P = R = F1 = 2/3
    assert (p[0], r[0], f1[0]) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    _, _, ap_coco, _, _ = ap_per_class(correct, conf, pcls, tcls, method="coco")
    assert ap_coco[0, 0] == pytest.approx(56 / 101)
    assert ap_coco[0, 9] == pytest.approx(34 / 101)


def test_compute_ap_edge_cases():
    assert compute_ap([], []) == 0.0 and compute_ap([], [], "coco") == 0.0
    assert compute_ap([0.5, 1.0], [1.0, 1.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        compute_ap([1.0], [1.0], method="11point")


def random_gt(rng, n_images=12, nc=3):
    """{image: (boxes (m,4) xyxy, classes (m,))}"""
    out = {}
    for k in range(n_images):
        m = int(rng.integers(1, 6))
        xy = rng.uniform(0, 300, (m, 2))
        out[k] = (np.concatenate([xy, xy + rng.uniform(15, 80, (m, 2))], 1), rng.integers(0, nc, m))
    return out


def image_stats(gt, preds):
    """Per-image (correct, conf, pred_cls, target_cls), predictions sorted by confidence."""
    stats = []
    for k, (gb, gc) in gt.items():
        pb, conf, pc = preds[k]
        order = np.argsort(-conf, kind="stable")
        pb, conf, pc = pb[order], conf[order], pc[order]
        stats.append((match_predictions(pb, pc, gb, gc, IOU_THRESHOLDS), conf, pc, gc))
    return stats


def test_perfect_predictions_give_map_1_and_wrong_ones_0():
    rng = np.random.default_rng(1)
    gt = random_gt(rng)
    perfect = {k: (gb, rng.uniform(0.3, 1, len(gb)), gc) for k, (gb, gc) in gt.items()}
    for method in ("interp", "coco"):
        s = summarize_detections(image_stats(gt, perfect), nc=3, method=method)
        assert s["mAP50"] == pytest.approx(1.0) and s["mAP50_95"] == pytest.approx(1.0)
        assert s["P"] == pytest.approx(1.0) and s["R"] == pytest.approx(1.0)
    wrong_class = {k: (gb, rng.uniform(0.3, 1, len(gb)), (gc + 1) % 3) for k, (gb, gc) in gt.items()}
    far_away = {k: (gb + 1000, rng.uniform(0.3, 1, len(gb)), gc) for k, (gb, gc) in gt.items()}
    for preds in (wrong_class, far_away):
        s = summarize_detections(image_stats(gt, preds), nc=3)
        assert s["mAP50"] == 0 and s["mAP50_95"] == 0 and s["P"] == 0 and s["R"] == 0


def test_results_table():
    correct, conf, pcls, tcls = hand_case()
    stats = summarize_detections([(correct, conf, pcls, tcls)], nc=2)
    text = format_results_table(["circle", "square"], stats)
    lines = text.splitlines()
    assert any("all" in line and "0.556" in line and "0.400" in line for line in lines)
    assert any("circle" in line and " 3 " in line for line in lines)
    assert "square" not in text  # no ground truth: no row
    assert "mAP@0.5:0.95" in text
    assert "0" in format_results_table(None, stats)


def noisy_predictions(rng, gt, nc):
    """Jittered copies of most GT boxes (some with the wrong class) plus random false positives."""
    preds = {}
    for k, (gb, gc) in gt.items():
        keep = rng.random(len(gb)) < 0.85
        jitter = rng.normal(0, 2.5, (int(keep.sum()), 4))
        boxes = [gb[keep] + jitter, np.tile(rng.uniform(0, 300, (3, 2)), 2) + [0, 0, 30, 40]]
        cls = [np.where(rng.random(keep.sum()) < 0.1, (gc[keep] + 1) % nc, gc[keep]), rng.integers(0, nc, 3)]
        boxes = np.concatenate(boxes)
        preds[k] = (boxes, rng.uniform(0.05, 1, len(boxes)), np.concatenate(cls))
    return preds


def test_map_agrees_with_pycocotools():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(7)
    gt = random_gt(rng, n_images=30, nc=3)
    preds = noisy_predictions(rng, gt, nc=3)

    annotations = []
    for k, (gb, gc) in gt.items():
        for b, c in zip(gb, gc):
            w, h = b[2] - b[0], b[3] - b[1]
            annotations.append({"id": len(annotations) + 1, "image_id": k, "category_id": int(c) + 1,
                                "iscrowd": 0, "bbox": [b[0], b[1], w, h], "area": w * h})
    coco_gt = COCO()  # category ids start at 1 in COCO files
    coco_gt.dataset = {"images": [{"id": k} for k in gt], "categories": [{"id": c + 1} for c in range(3)],
                       "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([{"image_id": k, "category_id": int(c) + 1, "score": float(s),
                                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
                                   for k, (pb, conf, pc) in preds.items() for b, s, c in zip(pb, conf, pc)])
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ours = summarize_detections(image_stats(gt, preds), nc=3, method="coco")
    assert 0.2 < ev.stats[0] < 0.9  # a case with real partial matches, not a trivial one
    # same matching rule and the same 101-point interpolation: equal up to rounding
    assert ours["mAP50_95"] == pytest.approx(ev.stats[0], abs=1e-6)
    assert ours["mAP50"] == pytest.approx(ev.stats[1], abs=1e-6)
