"""The Darknet .weights format and our .pt checkpoints: headers, reading, finiteness checks.

A .weights file is a header (major, minor, revision as int32, then ``seen``) followed by every
conv layer's float32 arrays in Darknet's order. ``seen`` is 64-bit from version 0.2 on.
"""
import os

import numpy as np
import torch

from yoloslim.errors import WeightsError
from yoloslim.io import atomic_write

DEFAULT_VERSION = (0, 2, 5)


def seen_is_64bit(major, minor):
    """Darknet writes ``seen`` as size_t (8 bytes) from version 0.2 on, as int32 before."""
    return int(major) * 10 + int(minor) >= 2


def header_size(major, minor):
    """Bytes before the first float: three int32 version numbers and ``seen``."""
    return 12 + (8 if seen_is_64bit(major, minor) else 4)


def header_bytes(version, seen):
    """The header Darknet reads back for this version and ``seen``."""
    major, minor = int(version[0]), int(version[1])
    seen_dtype = np.int64 if seen_is_64bit(major, minor) else np.int32
    return np.asarray(version, dtype=np.int32).tobytes() + np.array([seen], dtype=seen_dtype).tobytes()


def read_weights_file(path):
    """(version int32[3], seen, float32 data) of a Darknet .weights file, with header checks."""
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: weights file not found; check the --weights path")
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 16:
        raise WeightsError(f"{path}: only {len(blob)} bytes, too short for a Darknet header")
    version = np.frombuffer(blob, dtype=np.int32, count=3).copy()
    major, minor, _ = (int(v) for v in version)
    if not (0 <= major < 1000 and 0 <= minor < 1000):
        raise WeightsError(f"{path}: header version {tuple(int(v) for v in version)} is not Darknet's; "
                           f"is this a .weights file?")
    wide = seen_is_64bit(major, minor)
    header_bytes = header_size(major, minor)
    if len(blob) < header_bytes:
        raise WeightsError(f"{path}: only {len(blob)} bytes, too short for a version {major}.{minor} Darknet header")
    seen = int(np.frombuffer(blob, dtype=np.int64 if wide else np.int32, count=1, offset=12)[0])
    body = len(blob) - header_bytes
    if body % 4:
        raise WeightsError(f"{path}: {body} bytes after the header is not a whole number of float32s; "
                           f"the file is truncated or not a .weights file")
    data = np.frombuffer(blob, dtype="<f4", offset=header_bytes)
    return version, seen, data


def describe_darknet_param(has_bn, k):
    """Name of the k-th array of a conv layer in Darknet's .weights order."""
    order = ("BN beta", "BN gamma", "BN running mean", "BN running variance", "conv weights") if has_bn \
        else ("conv bias", "conv weights")
    return order[k]


def non_finite_text(values):
    values = np.asarray(values)
    n_nan, n_inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
    return ", ".join(f"{n} {what}" for n, what in ((n_nan, "NaN"), (n_inf, "Inf")) if n) + " value(s)"


def check_finite_state(state, path):
    """Refuse a state_dict with NaN/Inf in any floating tensor, naming the tensor and its layer."""
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            layer = key.split(".")[1] if key.startswith("module_list.") else "?"
            raise WeightsError(f"{path}: '{key}' (layer {layer}) holds {non_finite_text(value.detach().cpu().numpy())}; "
                               f"the checkpoint comes from a diverged run or is corrupt; use an earlier one")


def load_checkpoint(path):
    """torch.load with ``weights_only=True``: a checkpoint never runs pickled code. A model state
    with NaN/Inf is refused here, so no loader ever builds a model from it."""
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: checkpoint not found; check the path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, zip errors, unsafe globals: all mean "not a safe checkpoint of ours"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"{path}: cannot be loaded safely as a checkpoint ({first[:160]}); "
                           f"only checkpoints written by this toolkit are accepted") from None
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if isinstance(state, dict):
        check_finite_state(state, path)
    return ckpt


def save_checkpoint(ckpt, path):
    with atomic_write(path, "wb") as f:
        torch.save(ckpt, f)
