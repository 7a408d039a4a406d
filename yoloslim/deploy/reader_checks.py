"""A written pair checked in the arithmetic of the program that will run it: OpenCV DNN on the file
itself, and each Darknet's BN formula (yoloslim/darknet/bn_readers.py) re-implemented in float64."""
import copy

import numpy as np
import torch
import torch.nn as nn

from yoloslim.darknet.bn_readers import ReaderBatchNorm
from yoloslim.darknet.load import load_model
from yoloslim.darknet.model import Darknet


def reader_model(cfg, weights, reader):
    """The pair as ``reader`` computes it: the file's numbers taken as they are, every BN replaced by
    ReaderBatchNorm, all in float64. ``cfg`` is a path or module_defs."""
    model = Darknet.without_init(cfg).load_darknet_weights(weights, reader="opencv")  # opencv = no conversion
    model = model.double().eval()
    for seq in model.module_list:
        if isinstance(getattr(seq, "BatchNorm2d", None), nn.BatchNorm2d):
            seq.BatchNorm2d = ReaderBatchNorm(seq.BatchNorm2d, reader)
    return model


def reader_difference(model, cfg, weights, reader, x):
    """Largest difference between ``model`` (float64) and the written pair computed in ``reader``'s
    arithmetic on input ``x`` (1x3xHxW), each head divided by its magnitude (yoloslim.deploy.parity)."""
    from yoloslim.deploy.parity import scaled_difference
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    with torch.no_grad():
        ours = copy.deepcopy(model).double().eval().forward_raw(xt)
        theirs = reader_model(cfg, weights, reader).forward_raw(xt)
    if len(ours) != len(theirs):
        return float("inf")
    return max(scaled_difference(a.numpy(), b.numpy(), max(1.0, float(a.abs().max()))) for a, b in zip(ours, theirs))


def as_read_by(cfg, weights, reader):
    """Our model of a written pair as ``reader`` runs it (float32): the file's statistics taken in
    that reader's arithmetic. For a file written for another reader this is not the trained model."""
    return load_model(cfg, weights, reader=reader).eval()


def check_written_pair(model, cfg, weights, reader, size, seed=0):
    """(OpenCV difference, its tolerance, ``reader`` difference) for a pair written from ``model``
    for ``reader``; each a largest difference divided by the head magnitude (yoloslim.deploy.parity).

    OpenCV runs the file itself: against ``model`` when the file is for OpenCV, else against the
    file as OpenCV reads it (the layout and every number but BN's arithmetic). The reader's own
    arithmetic is then the float64 ReaderBatchNorm model on the file, against ``model``.
    """
    from yoloslim.deploy.opencv_dnn import opencv_read_back, random_input
    seen_by_opencv = model if reader == "opencv" else as_read_by(cfg, weights, "opencv")
    diff, tolerance = opencv_read_back(seen_by_opencv, cfg, weights, size, seed)
    x = random_input(min(size, 160), seed, model.in_channels)   # per-channel arithmetic: a small input shows it
    return diff, tolerance, reader_difference(model, cfg, weights, reader, x)


def with_small_variances(model, seed=0, decades=(-3.0, 1.0)):
    """In place, for measurements: every BN layer's input scaled by s, with s^2 log-uniform over
    ``decades``, and its running mean and variance scaled alike, so the model computes nearly the same
    function (exactly, but for eps) while its variances span 1e-3..1e1 times their size, as trained Darknet models' do.
    BN's eps then matters, as it does in real files (the heads, without BN, are left alone)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, conv, bn in model.conv_layers():
            if bn is None:
                continue
            lo, hi = decades
            s = 10 ** (0.5 * (lo + (hi - lo) * float(torch.rand((), generator=g))))
            conv.weight.mul_(s)
            bn.running_mean.mul_(s)
            bn.running_var.mul_(s * s)
    return model
