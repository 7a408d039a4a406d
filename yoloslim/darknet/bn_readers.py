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
from dataclasses import dataclass

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
