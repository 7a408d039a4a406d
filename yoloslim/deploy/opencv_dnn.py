"""OpenCV DNN as the independent reference for Darknet files.

OpenCV's Darknet importer is a second, unrelated implementation of the format. If our
PyTorch model and OpenCV agree on a .cfg/.weights pair, Darknet users get what we measured.
"""
import numpy as np
import torch

from yoloslim.errors import SlimError
from yoloslim.deploy.parity import decode_gain, head_magnitudes, read_back_tolerance, scaled_difference


def read_net(cfg_path, weights_path, exact=False):
    """cv2.dnn net from a Darknet pair, with OpenCV's own error turned into one line.

    ``exact`` turns off OpenCV's Winograd 3x3 convolution: it is faster but drifts ~2e-4
    from an fp64 reference on full yolov3 (plain fp32 stays ~1e-5), which would hide real
    mismatches in parity checks. Latency is measured with OpenCV's default (fast) path.
    """
    import cv2
    if not hasattr(cv2.dnn, "readNetFromDarknet"):
        raise SlimError("this OpenCV has no Darknet importer (removed in 5.0); pip install 'opencv-python-headless<5'")
    try:
        net = cv2.dnn.readNetFromDarknet(str(cfg_path), str(weights_path))
    except cv2.error as e:
        msg = str(e).strip().splitlines()[-1]
        raise SlimError(f"{cfg_path}: OpenCV cannot load this pair ({msg})") from None
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    if exact and hasattr(net, "enableWinograd"):
        net.enableWinograd(False)
    return net


def opencv_forward(net, x):
    """Outputs of every [yolo] layer for an NCHW float32 array, in OpenCV's row layout."""
    net.setInput(np.ascontiguousarray(x, dtype=np.float32))
    return [o.copy() for o in net.forward(net.getUnconnectedOutLayersNames())]


def opencv_head_maps(net, x, yolo_layers):
    """The maps OpenCV feeds each head ([yolo] or [region]): the head convs' outputs before any decoding.

    The importer names a layer's last operation ``<op>_<index>`` and puts ``permute_<index>``
    between the head conv and the head (``yolo_<index>``; a [region] is ``detection_out``); the
    op before that permute is the head's output.
    """
    names = list(net.getLayerNames())
    wanted = []
    for i in yolo_layers:
        if f"permute_{i}" not in names:
            raise SlimError(f"OpenCV's network has no permute_{i} before head layer {i}; this OpenCV names "
                            f"its Darknet layers differently")
        wanted.append(names[names.index(f"permute_{i}") - 1])
    net.setInput(np.ascontiguousarray(x, dtype=np.float32))
    return [o.copy() for o in net.forward(wanted)]


def max_raw_difference(model, cfg_path, weights_path, size, seed=0):
    """How far OpenCV's head maps for a written pair are from ``model``'s ``forward_raw``, each
    head divided by its magnitude; independent of any box decoding. Compare with
    yoloslim.deploy.parity.read_back_tolerance(model, random_input(size, seed))."""
    x = random_input(size, seed)
    with torch.no_grad():
        ours = [r.numpy() for r in model.eval().forward_raw(torch.from_numpy(x))]
    theirs = opencv_head_maps(read_net(cfg_path, weights_path, exact=True), x, model.yolo_layers)
    if len(ours) != len(theirs):
        return float("inf")
    return max(scaled_difference(a, b, max(1.0, float(np.abs(a).max()))) for a, b in zip(ours, theirs))


def torch_in_opencv_layout(model, x):
    """Our model's decoded heads arranged like OpenCV's yolo outputs, for batch item 0.

    OpenCV gives one (ny*nx*na, 5+nc) array per head, rows ordered (y, x, anchor),
    xywh normalized by the input size, then objectness, then objectness * class score.
    """
    was_training = model.training
    model.eval()
    with torch.no_grad():
        xt = torch.as_tensor(x, dtype=torch.float32)
        raw = model.forward_raw(xt)
    model.train(was_training)
    h, w = xt.shape[-2:]
    outs = []
    for i, r in zip(model.yolo_layers, raw):
        head = model.module_list[i]
        p = head.reshape(r)
        ny, nx = p.shape[2:4]
        d = head.decode(p, (h, w)).view(p.shape)[0]            # (na, ny, nx, no)
        d = d.permute(1, 2, 0, 3).reshape(-1, head.no).clone()  # rows (y, x, a)
        d[:, [0, 2]] /= w
        d[:, [1, 3]] /= h
        d[:, 5:] *= d[:, 4:5]
        outs.append(d.numpy())
    return outs


def finite_max(arrays):
    """The largest value over ``arrays``, NaN-aware: any NaN makes it inf (Python's ``max``
    skips NaN, which once made a NaN model pass a parity check with 0.00 difference)."""
    worst = 0.0
    for a in arrays:
        a = np.asarray(a, dtype=np.float64)
        if a.size == 0:
            continue
        if np.isnan(a).any():
            return float("inf")
        worst = max(worst, float(a.max()))
    return worst


def max_layout_difference(ours, theirs, scales=None):
    """Largest difference over all heads, each divided by its magnitude (``scales``, default 1).

    x, y, objectness and class scores are compared absolutely. w and h are anchor*exp(raw),
    so their float error grows with their size: they are compared relative to max(1, |w|).
    OpenCV zeroes class scores under its threshold, so class columns are compared only
    where OpenCV reports a score. A NaN or infinity anywhere, or a shape mismatch, is an
    infinite difference (see yoloslim/deploy/parity.py for the scale and the tolerance).
    """
    worst = 0.0
    scales = scales or [1.0] * len(ours)
    if len(ours) != len(theirs):
        return float("inf")
    for a, b, scale in zip(ours, theirs, scales):
        if a.shape != b.shape:
            return float("inf")
        relative = np.zeros(a.shape, bool)
        relative[:, 2:4] = True
        # class scores OpenCV did not report are compared as equal; NaN there still counts
        shown = (b[:, 5:] > 0) | ~np.isfinite(b[:, 5:])
        a = a.copy()
        a[:, 5:] = np.where(shown, a[:, 5:], b[:, 5:])
        worst = max(worst, scaled_difference(a, b, scale, relative))
    return worst


def random_input(size, seed=0, channels=3):
    return np.random.default_rng(seed).random((1, channels, size, size), dtype=np.float32)


def max_difference_from_opencv(model, cfg_path, weights_path, size, seed=0):
    """How far OpenCV's reading of a written .cfg/.weights pair is from ``model`` (random input),
    relative to each head's magnitude: compare with yoloslim.deploy.parity.TOLERANCE."""
    x = random_input(size, seed, model.in_channels)
    return max_layout_difference(torch_in_opencv_layout(model, x),
                                 opencv_forward(read_net(cfg_path, weights_path, exact=True), x),
                                 head_magnitudes(model, x))


def opencv_read_back(model, cfg_path, weights_path, size, seed=0):
    """(difference, tolerance) for the read-back gate: the difference as above, the tolerance
    from yoloslim.deploy.parity.read_back_tolerance on the same input, times the heads' decode gain."""
    return (max_difference_from_opencv(model, cfg_path, weights_path, size, seed),
            read_back_tolerance(model, random_input(size, seed, model.in_channels)) * decode_gain(model, size))
