"""How far a reference implementation's outputs (Darknet, OpenCV DNN) may be from ours.

Float32 error in a deep conv stack grows with the size of the activations, so an absolute
bound that suits a trained yolov3-tiny fails a random-weight yolov4 whose raw head values
run into the tens. Every difference is therefore divided by the head's magnitude: the
largest |value| of our raw (pre-activation) head map, floored at 1. Logistic and exp()
do not enlarge a raw error (logistic' <= 1/4; exp turns an absolute raw error into the same
relative error), so one bound serves x, y, objectness, class scores and w, h alike.

``TOLERANCE`` is that bound: 1e-4 of the head's magnitude. A deep model's own float32
rounding can reach it, and a second float32 implementation (OpenCV folds BN into the conv
weights, sums in another order, and in another order again on another core count) lands
several times further from float64 than ours: yolov3-spp, random weights seed 3, 256 px:
our raw maps are 2.9e-5 from float64 and OpenCV on one core 1.08e-4 from ours (3.7x); AlexeyAB's
yolov4-p6 pruned: 3.8e-4 against ours at 7e-5 (5.4x). So ``read_back_tolerance`` raises the
bound to ``FLOAT32_FACTOR`` (10) times the model's measured float32 error against float64 when
that is larger. A wrong weight, channel or layer moves outputs by 1e-2 and more, still 30x
past the bound of the deepest model we check.
A NaN or infinity on either side, or a shape mismatch, is a mismatch (infinite difference).

That reasoning holds for classic heads only. A new_coords=1 head (Scaled-YOLOv4: yolov4-csp, -p5,
-p6, -p7; yolov5) decodes wh = (2t)^2 * anchor from a t that is already a probability, so a raw
error e becomes 8 t (anchor / size) e in the normalized box size the read-back compares (4 sqrt(anchor /
size) e relative, where the box is wider than the input), and obj * class scores move by up to 2e.
``decode_gain`` is that factor, from the heads' own anchors and the input size; the read-back
tolerance is ``read_back_tolerance`` (raw units) times it. Measured with benchmarks/parity_noise.py
(random weights seed 7, 608 px): yolov4-csp's float32 raw error is 1.27e-4 and OpenCV's own 1.60e-4,
but the decoded outputs differ by 5.25e-4, over the old 4 x 1.27e-4 = 5.06e-4 gate (yolov4-p6 at 1280
was refused the same way, 3.79e-4 against 2.8e-4); its decode gain is 3.48 (largest anchor 459 px),
giving 1.77e-3. A wrong weight moves the decoded outputs by the same gain, so the margin to a real
fault is unchanged.
"""
import copy

import numpy as np
import torch

TOLERANCE = 1e-4
FLOAT32_FACTOR = 10


def head_magnitudes(model, x):
    """Largest |raw head value| of ``model`` on ``x``, one per [yolo] head, floored at 1."""
    with torch.no_grad():
        raw = model.eval().forward_raw(torch.as_tensor(np.asarray(x), dtype=torch.float32))
    return [max(1.0, float(r.abs().max())) if torch.isfinite(r).all() else float("inf") for r in raw]


def float32_error(model, x):
    """Largest scaled difference between ``model``'s raw head maps in float32 and in float64."""
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    with torch.no_grad():
        raw32 = model.eval().forward_raw(xt)
        raw64 = copy.deepcopy(model).double().eval().forward_raw(xt.double())
    return max(scaled_difference(a.numpy(), b.numpy(), max(1.0, float(b.abs().max()))) for a, b in zip(raw32, raw64))


def read_back_tolerance(model, x):
    """TOLERANCE, or FLOAT32_FACTOR times ``model``'s own float32 error on ``x`` when larger."""
    return max(TOLERANCE, FLOAT32_FACTOR * float32_error(model, x))


def scaled_difference(ours, ref, scale=1.0, relative=None):
    """max |ours - ref| / scale over one array pair; inf when shapes differ or anything is not finite.

    ``relative``: optional boolean mask of elements compared relative to max(1, |ref|) as
    well (exp() outputs such as w and h, whose float error grows with their value).
    """
    a, b = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if a.shape != b.shape or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("inf")
    if a.size == 0:
        return 0.0
    d = np.abs(a - b)
    if relative is not None:
        d = np.where(relative, d / np.maximum(1.0, np.abs(b)), d)
    return float(d.max()) / scale


def within(diff, tolerance=TOLERANCE):
    """The comparison every read-back gate uses; False for NaN."""
    return bool(diff <= tolerance)


def decode_gain(model, size):
    """How much the [yolo] decoding can enlarge a raw-map error in the outputs the read-back compares
    (OpenCV's layout: box size normalized by the input, relative where above 1; obj x class). 1 for
    classic heads; for new_coords heads the largest of 2 (a product of two probabilities) and, per
    anchor a of an input side s, min(8 a/s, 4 sqrt(a/s)) (see the module docstring)."""
    h, w = (size, size) if isinstance(size, int) else size
    gain = 1.0
    for i in model.yolo_layers:
        head = model.module_list[i]
        if not head.new_coords:
            continue
        rel = torch.cat([head.anchors[:, 0] / w, head.anchors[:, 1] / h]).double()
        gain = max(gain, 2.0, float(torch.minimum(8 * rel, 4 * rel.sqrt()).max()))
    return gain
