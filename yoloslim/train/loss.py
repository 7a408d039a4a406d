"""YOLOv3 training loss: anchor matching, GIoU box loss, BCE objectness and class losses.

    loss, items = compute_loss(p, targets, model, hyp)

``p`` is what ``Darknet.forward`` returns in train mode (one raw (B, na, ny, nx, 5+nc)
tensor per head); ``targets`` is (N, 6) ``[img_idx, cls, cx, cy, w, h]`` with coordinates
normalized to the input image. Everything is computed per head with tensor ops: no loop
over targets or boxes.

Units: a head's grid has ``nx`` x ``ny`` cells, so a normalized target scales to grid units by
(nx, ny) alone. A [yolo] head's anchors are in input pixels and are divided by the head's
stride (input size / grid size) to become grid units; a [region] head's (YOLOv2) are in grid
units already (``grid_anchors``). A [region] is trained with this same loss (matching, GIoU,
objectness BCE), its softmax classes with cross-entropy instead of per-class BCE; Darknet's own
YOLOv2 loss options (rescore, bias_match, the *_scale weights) are not used. The decoding used here is the one
``YOLOLayer.decode`` uses (yoloslim/darknet/kinds.py ``decode_boxes``, Darknet's, classic or new_coords=1):
``xy = sigmoid * scale_x_y - (scale_x_y - 1) / 2`` inside the cell, ``wh = exp * anchor``.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from yoloslim.darknet.kinds import layer_strides
from yoloslim.eval.metrics import bbox_iou

# Defaults for training from scratch on a small data set: YOLOv5's balance (box 0.05, obj 1.0,
# cls 0.5), with the loss multiplied by the batch size, so SGD at lr 0.01 works. YOLOv5 also
# scales obj by (img/640)^2 and cls by nc/80; at 160-320 px with 5 classes that starves both
# (measured: overfitting 64 synthetic images for 160 steps reached mAP@0.5 0.02 with the
# scaling and 0.47 without), so those two factors are not applied.
DEFAULT_HYP = {
    "giou": 0.05,          # box (1 - GIoU) weight
    "obj": 1.0,            # objectness BCE weight
    "cls": 0.5,            # class BCE weight
    "anchor_t": 4.0,       # 'ratio' matching: a target matches an anchor if w and h ratios are < this
    "iou_t": 0.20,         # 'iou' matching: a target matches an anchor if their wh-IoU is > this
    "match": "ratio",      # 'ratio' (YOLOv5 style, several anchors per target) or 'iou' (YOLOv3 style)
    "obj_pw": 1.0,         # BCE positive weights
    "cls_pw": 1.0,
    "label_smoothing": 0.0,
    "gr": 1.0,             # objectness target = gr * IoU.clamp(0) + (1 - gr)
    "wh_clamp": 8.0,       # raw wh logits are clamped before exp: a wild prediction cannot give inf
}

# Objectness weight per head by stride: fine grids have many more negative cells per positive,
# so their mean BCE is small and gets a larger weight (YOLOv5's 4.0 / 1.0 / 0.4 balance).
OBJ_BALANCE = {8: 4.0, 16: 1.0, 32: 0.4, 64: 0.1}


def default_hyp(**overrides):
    unknown = set(overrides) - set(DEFAULT_HYP)
    if unknown:
        raise ValueError(f"unknown loss hyperparameters {sorted(unknown)}; known: {sorted(DEFAULT_HYP)}")
    return {**DEFAULT_HYP, **overrides}


def unwrap(model):
    """The Darknet inside a DistributedDataParallel / DataParallel wrapper."""
    return model.module if hasattr(model, "module") and hasattr(model.module, "module_list") else model


def head_strides(model, p, img_hw=None):
    """(stride_x, stride_y) per head: input size / grid size, or the cfg's stride when no size is given."""
    if img_hw is not None:
        return [(img_hw[1] / pi.shape[3], img_hw[0] / pi.shape[2]) for pi in p]
    strides = layer_strides(model.module_defs)
    return [(strides[i], strides[i]) for i in model.yolo_layers]


@torch.no_grad()
def init_head_biases(model, img_size, objects_per_image=8.0):
    """Prior-probability init of the YOLO head conv biases, for training from scratch.

    A zero bias starts every objectness at 0.5 while the true rate is ~1e-3 per cell; the
    optimizer then spends hundreds of steps just lowering it (Adam moves a bias by about lr
    per step) before any detection is learned. Starting at the prior (``objects_per_image``
    per head, spread over the grid cells; classes at 0.6 / nc) removes that phase (the
    focal-loss paper's and YOLOv5's initialisation).
    """
    net = unwrap(model)
    strides = layer_strides(net.module_defs)
    for i in net.yolo_layers:
        head, conv = net.module_list[i], net.conv(i - 1)   # a [yolo] reads the layer before it
        cells = (img_size / strides[i]) ** 2
        b = conv.bias.view(head.na, head.no)
        b[:, 4] += math.log(objects_per_image / cells)
        if head.nc > 1:
            b[:, 5:] += math.log(0.6 / (head.nc - 0.99))
    return model


def wh_iou(wh1, wh2):
    """IoU of boxes sharing a centre: (n, 2) x (m, 2) -> (n, m)."""
    inter = torch.min(wh1[:, None], wh2[None]).prod(2)
    return inter / (wh1.prod(1)[:, None] + wh2.prod(1)[None] - inter)


def match_anchors(t_wh, anchors, hyp):
    """Boolean (na, nt): which anchor predicts which target on this head."""
    if hyp["match"] == "iou":
        return wh_iou(anchors, t_wh) > hyp["iou_t"]
    if hyp["match"] != "ratio":
        raise ValueError(f"hyp['match']={hyp['match']!r}; use 'ratio' or 'iou'")
    r = t_wh[None] / anchors[:, None]                       # (na, nt, 2)
    return torch.max(r, 1 / r).max(2).values < hyp["anchor_t"]


def build_targets(pi, targets, anchors, hyp):
    """Matches of one head: (b, a, gj, gi) indices, target box, class.

    The target box is (dx, dy, w, h) in grid units, dx/dy relative to the cell that holds the
    centre (the only cell Darknet's decoding can reach).
    """
    _, _, ny, nx, _ = pi.shape
    gain = torch.tensor([nx, ny, nx, ny], device=targets.device, dtype=targets.dtype)
    t_box = targets[:, 2:6] * gain                                   # grid units
    a, t = match_anchors(t_box[:, 2:4], anchors, hyp).nonzero(as_tuple=True)
    box = t_box[t]
    gi = box[:, 0].long().clamp(0, nx - 1)
    gj = box[:, 1].long().clamp(0, ny - 1)
    tbox = torch.cat((box[:, :2] - torch.stack((gi, gj), 1), box[:, 2:4]), 1)
    return (targets[t, 0].long(), a, gj, gi), tbox, targets[t, 1].long()


def class_loss(head, ps, cls, bce_cls, smoothing):
    """Class loss of the matched predictions ``ps`` (n, 5+nc): BCE per class for [yolo] heads
    (independent logistics), cross-entropy for heads whose classes are one softmax ([region])."""
    if head.softmax:
        return F.cross_entropy(ps[:, 5:], cls, label_smoothing=smoothing)
    cp, cn = 1.0 - 0.5 * smoothing, 0.5 * smoothing
    tcls = torch.full_like(ps[:, 5:], cn)
    tcls[torch.arange(len(cls), device=ps.device), cls] = cp
    return bce_cls(head.score_logits(ps)[:, 1:], tcls)


def compute_loss(p, targets, model, hyp=None, img_hw=None):
    """YOLOv3 loss; returns (loss scalar, detached tensor [box, obj, cls, total]).

    ``model`` may be DDP-wrapped. ``img_hw`` (input height, width) sets the strides; without it
    they come from the cfg. The returned loss is the per-image mean times the batch size.
    """
    hyp = {**DEFAULT_HYP, **(hyp or {})}
    net = unwrap(model)
    device = p[0].device
    heads = [net.module_list[i] for i in net.yolo_layers]
    nc = heads[0].nc
    targets = targets.to(device=device, dtype=torch.float32)
    bce_obj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([hyp["obj_pw"]], device=device))
    bce_cls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([hyp["cls_pw"]], device=device))
    lbox, lobj, lcls = (torch.zeros((), device=device) for _ in range(3))
    strides = head_strides(net, p, img_hw)

    for pi, head, (sx, sy) in zip(p, heads, strides):
        pi = pi.float()  # AMP: the loss is computed in float32
        tobj = torch.zeros(pi.shape[:4], device=device)
        anchors = head.grid_anchors(sx, sy).to(device)                              # grid units
        if targets.shape[0]:
            (b, a, gj, gi), tbox, cls = build_targets(pi, targets, anchors, hyp)
            if b.numel():
                ps = pi[b, a, gj, gi]                                              # (n, 5+nc)
                pxy, pwh = head.boxes(ps, anchors[a], wh_clamp=hyp["wh_clamp"])
                giou = bbox_iou(torch.cat((pxy, pwh), 1), tbox, xywh=True, GIoU=True).view(-1)
                lbox = lbox + (1.0 - giou).mean()
                tobj[b, a, gj, gi] = (1.0 - hyp["gr"]) + hyp["gr"] * giou.detach().clamp(0)
                if nc > 1:
                    lcls = lcls + class_loss(head, ps, cls, bce_cls, hyp["label_smoothing"])
        stride = math.sqrt(sx * sy)
        balance = OBJ_BALANCE.get(int(round(stride)), 1.0)
        lobj = lobj + balance * bce_obj(head.score_logits(pi[..., :5])[..., 0], tobj)

    # per-head losses are summed: normalise to the 3-head case so 2-head tiny models match
    scale_heads = 3.0 / len(p)
    lbox = lbox * hyp["giou"] * scale_heads
    lobj = lobj * hyp["obj"] * scale_heads
    lcls = lcls * hyp["cls"] * scale_heads
    bs = p[0].shape[0]
    total = lbox + lobj + lcls
    return total * bs, torch.stack((lbox, lobj, lcls, total)).detach()
