"""The programs that read a Darknet .weights file, and the batch-norm arithmetic of each.

A .weights file stores per channel beta, gamma, running mean and running variance; the reader
computes ``gamma * (x - mean) / d(var) + beta`` with its own denominator ``d``:

==========  ==========================  ========================================================
reader      d(var)                      where (read in each project's source)
==========  ==========================  ========================================================
opencv      sqrt(var + 1e-6)            dnn/src/darknet/darknet_io.cpp sets the BatchNorm layer's
                                        eps to 1e-6; batch_norm_layer.cpp folds w/sqrt(var + eps)
alexeyab    sqrt(var + 1e-5)            src/blas.c normalize_cpu (since 2020-04), the CUDA kernel
                                        and cuDNN calls, and network.c fuse_conv_batchnorm, which
                                        folds BN into the conv at load in double precision
pjreddie    sqrt(var) + 1e-6            src/blas.c normalize_cpu: the CPU build (Debian's
                                        libdarknet). Its GPU build divides by sqrt(var + 1e-5),
                                        i.e. AlexeyAB's arithmetic: pick ``alexeyab`` for it
==========  ==========================  ========================================================

Our PyTorch BN divides by sqrt(var + eps) with eps = yoloslim.darknet.kinds.BN_EPS (1e-6), OpenCV's.
Mean and beta mean the same everywhere, and variance and gamma are free in the file, so a
writer can make any reader compute exactly the trained layer: keep ``gamma / d(var)`` and solve
for the reader's variance (``var' = d^2 - 1e-5`` for AlexeyAB, ``(d - 1e-6)^2`` for pjreddie).
Where no variance >= 0 gives ``d`` (a channel whose ``var + eps`` is below the reader's own
floor ``d(0)``), the variance is 0 and gamma is scaled by ``d(0) / d``. Loading does the reverse.

Which reader a file is for is written into the header's third int32, ``revision``, which no
reader interprets (all three read major and minor only: 64-bit ``seen`` when major*10+minor >= 2,
transposed weights when either exceeds 1000): AlexeyAB writes 0.2.5 (since 2018-10), pjreddie
0.2.0, and we write 5 for ``alexeyab``, 0 for ``pjreddie`` and ``OPENCV_REVISION`` for
``opencv``. Reading, ``reader_from_header`` maps those revisions back; any other revision is
read as written for OpenCV (no conversion), and every loader takes an explicit reader instead.
"""
import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from yoloslim.errors import SlimError

OPENCV_REVISION = 1006  # ours: no Darknet writes it (AlexeyAB 5, pjreddie 0); "1e-6 inside the sqrt"


@dataclass(frozen=True)
class BNArithmetic:
    """One reader's BN denominator d(var) = sqrt(var + inside) + outside, and its header revision."""
    name: str
    inside: float
    outside: float
    revision: int
    label: str

    def denominator(self, var):
        return (var + self.inside).sqrt() + self.outside

    def variance_for(self, den):
        """The variance whose denominator is ``den`` (``den`` at or above ``denominator(0)``)."""
        return ((den - self.outside) ** 2 - self.inside).clamp_min(0)


READERS = {
    "opencv": BNArithmetic("opencv", 1e-6, 0.0, OPENCV_REVISION, "OpenCV DNN"),
    "alexeyab": BNArithmetic("alexeyab", 1e-5, 0.0, 5, "AlexeyAB Darknet"),
    "pjreddie": BNArithmetic("pjreddie", 0.0, 1e-6, 0, "pjreddie Darknet (CPU)"),
}
DEFAULT_READER = "opencv"
READER_HELP = ("the program that will run the written .weights, whose BN arithmetic the file is made exact "
               "for: opencv (OpenCV DNN), alexeyab (AlexeyAB Darknet, and pjreddie's GPU build) or pjreddie "
               "(pjreddie Darknet on CPU, Debian's darknet); recorded in the header revision")
INPUT_READER_HELP = ("the program the input .weights was written for, whose BN arithmetic it holds: auto (from "
                     "the header revision: 5 AlexeyAB, 0 pjreddie, anything else OpenCV), opencv, alexeyab or pjreddie")


def arithmetic(reader):
    """The BNArithmetic of a reader name; a name we do not know is refused with the choices."""
    if reader not in READERS:
        raise SlimError(f"reader {reader!r} is not one we write for; pass one of {', '.join(READERS)}")
    return READERS[reader]


def model_arithmetic(bn):
    """What our nn.BatchNorm2d computes: sqrt(var + bn.eps)."""
    return BNArithmetic("model", float(bn.eps), 0.0, -1, "our PyTorch model")


def reader_from_header(version):
    """The reader a file's header names through its revision; OpenCV for a revision nobody writes."""
    revision = int(version[2])
    return next((name for name, a in READERS.items() if a.revision == revision), DEFAULT_READER)


def convert_stats(gamma, var, src, dst):
    """(gamma', var') in float64 with ``gamma' / dst.d(var') == gamma / src.d(var)`` per channel."""
    g, v = gamma.detach().double(), var.detach().double()
    if (src.inside, src.outside) == (dst.inside, dst.outside):
        return g, v   # bit-exact round trips: no float64 detour when nothing changes
    v = v.clamp_min(0)
    den = src.denominator(v)
    floor = dst.denominator(torch.zeros((), dtype=torch.float64))
    reachable = den >= floor
    new_var = torch.where(reachable, dst.variance_for(torch.maximum(den, floor)), torch.zeros_like(v))
    new_gamma = torch.where(reachable, g, g * floor / den)
    return new_gamma, new_var


def stats_for_reader(bn, reader):
    """This BN's (gamma, var) as float32 arrays written so that ``reader`` computes the trained layer."""
    gamma, var = convert_stats(bn.weight, bn.running_var, model_arithmetic(bn), arithmetic(reader))
    return gamma.float(), var.float()


def adopt_reader_stats(bn, reader):
    """In place: ``bn`` holds a file's statistics meant for ``reader``; rewrite them so that our BN
    computes what that reader computes."""
    gamma, var = convert_stats(bn.weight, bn.running_var, arithmetic(reader), model_arithmetic(bn))
    with torch.no_grad():
        bn.weight.copy_(gamma.to(bn.weight.dtype))
        bn.running_var.copy_(var.to(bn.running_var.dtype))


# ----------------------------------------------------------------------------- float64 readers
class ReaderBatchNorm(nn.Module):
    """A reader's BN on a file's raw statistics, in float64: gamma * (x - mean) / d(var) + beta."""

    def __init__(self, bn, reader):
        super().__init__()
        self.arith = arithmetic(reader)
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(name, getattr(bn, name).detach().double().clone())

    def forward(self, x):
        scale = self.weight / self.arith.denominator(self.running_var)
        return (x - self.running_mean[:, None, None]) * scale[:, None, None] + self.bias[:, None, None]


def reader_model(cfg, weights, reader):
    """The pair as ``reader`` computes it: the file's numbers taken as they are, every BN replaced by
    ReaderBatchNorm, all in float64. ``cfg`` is a path or module_defs."""
    from yoloslim.darknet.model import Darknet
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
    from yoloslim.darknet.load import load_model
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
