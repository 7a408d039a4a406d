"""Model measurements shared by the prune scripts, tests and benchmarks."""
import math
import platform
import statistics
import time

import torch
import torch.nn as nn


def randomize_weights(model, seed=0, gamma_range=(0.2, 1.5), calibrate=True):
    """Seeded random weights whose activations stay O(1) through deep nets, like a trained model's.

    Convs get fan-in scaled normals and BNs a spread of gammas, so parity and pruning
    tests exercise every parameter. With ``calibrate`` the BN running statistics are then
    set from one forward pass on random images, so each BN really normalizes its input;
    without it, residual sums in yolov3 grow until exp() in the heads overflows.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                # head convs (no BN, so they have a bias) are scaled down: trained heads emit
                # small logits, and exp(w) of a large random one overflows the decoded boxes
                scale = 0.25 if m.bias is not None else 1.0
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in) * scale)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                lo, hi = gamma_range
                m.weight.copy_(torch.rand(m.num_features, generator=g) * (hi - lo) + lo)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
    if calibrate:
        # a BN after a global [avgpool] sees one value per channel and image: it needs two images
        batch = 2 if any(s is None for s in model.scales) else 1
        size = calibration_size(model)
        calibrate_bn(model, torch.rand(batch, model.in_channels, size, size, generator=g))
    return model


def calibration_size(model, at_least=224):
    """The smallest input of at least ``at_least`` px that every stride of ``model`` divides: a
    stride-64 or -128 model whose upsampled maps are routed with finer ones needs whole cells."""
    step = 1
    for scale in model.scales:
        if scale is not None:     # None: a global pool, 1x1 at any size
            step = math.lcm(step, scale.numerator)
    return math.ceil(at_least / step) * step


def calibrate_bn(model, images):
    """Set every BN's running mean/var to the statistics of ``images`` (one train-mode pass)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [(m.momentum, m.training) for m in bns]
    was_training = model.training
    model.eval()
    for m in bns:
        m.train()
        m.momentum = 1.0
    with torch.no_grad():
        model.forward_raw(images)
    for m, (momentum, training) in zip(bns, saved):
        m.momentum, m.training = momentum, training
        m.num_batches_tracked.zero_()
    model.train(was_training)
    return model


def flush_denormals(on=True):
    """Flush float denormals to zero (or stop); returns the setting before, probed (torch has no getter).

    Sparsity training drives gammas, and with them Adam's moment estimates of the weights behind
    collapsed channels, towards zero; once those reach the denormal range every op touching them
    runs on the CPU's slow path. Measured on the narrow yolov3 after 40 epochs: 37.6 s per epoch
    without flushing, 17.8 s with it, identical losses and mAP (docs/TRAINING.md).
    """
    before = (torch.tensor([1e-40]) * 1.0).item() == 0.0
    torch.set_flush_denormal(on)
    return before


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def count_flops(model, img_size=None):
    """FLOPs of one forward pass at ``img_size`` (h, w), multiply-add counted as 2 as Darknet prints."""
    h, w = _hw(img_size or model.img_size)
    total = 0

    def hook_for(kind):
        def hook(module, inputs, output):
            nonlocal total
            total += kind.flops(module, output)
        return hook

    forward_with_hooks(model, [m.register_forward_hook(hook_for(k)) for k, m in zip(model.kinds, model.module_list)],
                       h, w)
    return total


def forward_with_hooks(model, handles, h, w):
    """One eval-mode forward pass of a zero image, for the forward hooks behind ``handles``
    (removed afterwards); the model's train/eval mode is put back."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model.forward_raw(torch.zeros(1, model.in_channels, h, w))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def cpu_model():
    """The CPU model string (``/proc/cpuinfo``'s "model name"): where a time was measured, and the
    machine part of the latency tables' cache key."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def median_ms(fn, warmup=3, runs=10):
    """Median wall time of ``fn()`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def torch_forward(model, img_size=None):
    """A no-argument callable: one batch-1 forward pass of ``model`` on a fixed random input."""
    h, w = _hw(img_size or model.img_size)
    x = torch.rand(1, model.in_channels, h, w)
    model.eval()

    def run():
        with torch.inference_mode():
            model.forward_raw(x)
    return run


def opencv_forward(net, img_size, channels=3):
    """A no-argument callable: one batch-1 forward pass of an OpenCV DNN net; ``channels`` is the
    cfg's [net] channels."""
    import numpy as np
    h, w = _hw(img_size)
    x = np.random.default_rng(0).random((1, channels, h, w), dtype=np.float32)
    names = net.getUnconnectedOutLayersNames()

    def run():
        net.setInput(x)
        net.forward(names)
    return run


def torch_latency_ms(model, img_size=None, warmup=3, runs=10):
    """Batch-1 CPU latency of the model's forward pass (median of ``runs``)."""
    return median_ms(torch_forward(model, img_size), warmup, runs)


def opencv_latency_ms(net, img_size, warmup=3, runs=10, channels=3):
    """Batch-1 latency of an OpenCV DNN net (median of ``runs``)."""
    return median_ms(opencv_forward(net, img_size, channels), warmup, runs)


def interleaved_ms(fns, warmup=5, runs=20):
    """Wall times (ms) of several callables run in turn, one call each per round.

    A change in the machine's load during the measurement then hits every callable alike,
    so their ratio (a speed-up) holds even where the absolute times drift.
    """
    times = [[] for _ in fns]
    for r in range(warmup + runs):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            if r >= warmup:
                times[k].append((time.perf_counter() - t0) * 1000)
    return times


def _hw(size):
    return (size, size) if isinstance(size, int) else tuple(size)
