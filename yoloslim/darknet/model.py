"""Build a PyTorch model from Darknet ``module_defs``, and read/write Darknet ``.weights``.

The model computes what Darknet computes: each section type is a kind in yoloslim/darknet/kinds.py
(BN eps, maxpool padding, route groups, shortcut widths, YOLO decoding), and the tests
compare raw YOLO outputs with OpenCV DNN's Darknet importer.
"""
import copy
import os

import numpy as np
import torch
import torch.nn as nn

from yoloslim.darknet.bn_readers import DEFAULT_READER, adopt_reader_stats, arithmetic, reader_from_header, stats_for_reader
from yoloslim.darknet.cfg import cfg_to_text, parse_model_cfg
from yoloslim.darknet.kinds import check_section, get_int, kind_of, layer_shapes, layer_sources
from yoloslim.darknet.weights import (DEFAULT_VERSION, describe_darknet_param, header_bytes, non_finite_text,
                                      read_weights_file)
from yoloslim.errors import CfgError, WeightsError
from yoloslim.io import atomic_write


def create_modules(module_defs, in_channels):
    """Build one nn.Module per layer; return (module_list, output channels per layer, strides).

    Each layer's total stride relative to the input is tracked: inputs joined by a route or a
    shortcut must share it, or forward() would fail deep inside torch with "sizes must match".
    """
    for mdef in module_defs:      # module_defs edited in memory never went through the parser
        check_section(mdef)
    sources, widths, scales = layer_shapes(module_defs, in_channels)
    module_list = nn.ModuleList()
    for i, (mdef, srcs) in enumerate(zip(module_defs, sources)):
        in_width = widths[srcs[0]] if srcs else in_channels
        module_list.append(kind_of(mdef).build(mdef, srcs, in_width))
    return module_list, widths, scales


# ----------------------------------------------------------------------------- model
class Darknet(nn.Module):
    """A Darknet network built from a .cfg path or a parsed ``module_defs`` list."""

    def __init__(self, cfg, img_size=None, path=None):
        """``cfg``: a .cfg path, or parsed ``module_defs`` (then ``path`` names the file they came from)."""
        super().__init__()
        if isinstance(cfg, (str, os.PathLike)):
            defs = parse_model_cfg(os.fspath(cfg))
            self.cfg_path = os.fspath(cfg)
        else:
            defs = copy.deepcopy(list(cfg))
            self.cfg_path = os.fspath(path) if path else None
        if defs[0]["type"] not in ("net", "network"):
            raise CfgError("module_defs must start with the [net] section")
        self.hyperparams, self.module_defs = defs[0], defs[1:]
        if not self.module_defs:
            raise CfgError(f"{self.cfg_path or '<cfg>'}: the cfg has no layers after [net]")
        in_channels = get_int(self.hyperparams, "channels", 3)
        if in_channels <= 0:
            raise CfgError(f"{self.hyperparams.where()}: channels={in_channels} must be positive")
        self.in_channels = in_channels
        self.kinds = [kind_of(m) for m in self.module_defs]
        self.module_list, self.out_channels, self.scales = create_modules(self.module_defs, in_channels)
        self.yolo_layers = [i for i, k in enumerate(self.kinds) if k.is_head]
        if not self.yolo_layers:
            raise CfgError(f"{self.cfg_path or '<cfg>'}: the cfg has no [yolo] or [region] head, so it is not a "
                           f"detection model yolo-slim can prune; pass a YOLO cfg whose outputs end in such layers")
        self.nc = self.module_list[self.yolo_layers[0]].nc
        self.img_size = img_size or (get_int(self.hyperparams, "height", 416), get_int(self.hyperparams, "width", 416))
        if isinstance(self.img_size, int):
            self.img_size = (self.img_size, self.img_size)
        self.version = np.array(DEFAULT_VERSION, dtype=np.int32)
        self.seen = 0
        self.read_as = None  # the reader whose BN arithmetic the loaded .weights held (bn_readers.py)
        # outputs that a later route/shortcut reads must be kept during forward
        self._kept = {j for srcs in layer_sources(self.module_defs) for j in srcs}

    @classmethod
    def without_init(cls, cfg, img_size=None):
        """A model with uninitialised tensors, for callers that overwrite every one of them.

        Random init of a full yolov3 costs more than the whole prune surgery, so it is skipped.
        """
        with torch.device("meta"):
            model = cls(cfg, img_size)
        return model.to_empty(device="cpu")

    @property
    def all_defs(self):
        """[net] + layers, the form the cfg writer takes."""
        return [self.hyperparams] + list(self.module_defs)

    def cfg_text(self):
        return cfg_to_text(self.all_defs)

    def forward_raw(self, x):
        """Raw outputs of the head convs feeding each [yolo] layer: (B, na*no, ny, nx) each."""
        outputs, raw = {}, []
        for i, (kind, module) in enumerate(zip(self.kinds, self.module_list)):
            x = kind.run(module, x, outputs)
            if kind.is_head:
                raw.append(x)
            if i in self._kept:
                outputs[i] = x
        return raw

    def forward(self, x):
        raw = self.forward_raw(x)
        heads = [self.module_list[i] for i in self.yolo_layers]
        p = [head.reshape(r) for head, r in zip(heads, raw)]
        if self.training:
            return p
        io = torch.cat([head.decode(pi, x.shape[-2:]) for head, pi in zip(heads, p)], 1)
        return io, p

    # ------------------------------------------------------------------ weights I/O
    def conv_layers(self, cutoff=None):
        """(index, conv, bn or None) for every convolutional layer before ``cutoff``."""
        stop = len(self.module_defs) if cutoff is None else cutoff
        for i, (kind, module) in enumerate(zip(self.kinds[:stop], self.module_list[:stop])):
            if kind.has_weights:
                yield i, kind.conv(module), kind.bn(module)

    def conv(self, i):
        """Layer ``i``'s nn.Conv2d (None for a layer without weights)."""
        return self.kinds[i].conv(self.module_list[i])

    def bn(self, i):
        """Layer ``i``'s nn.BatchNorm2d (None without one)."""
        return self.kinds[i].bn(self.module_list[i])

    def gamma(self, i):
        """Layer ``i``'s BN scale factors, the ones sparsity training and pruning rank."""
        return self.bn(i).weight

    def beta(self, i):
        """Layer ``i``'s BN shifts: a pruned channel's constant output is act(beta)."""
        return self.bn(i).bias

    def darknet_float_count(self, cutoff=None):
        total = 0
        for _, conv, bn in self.conv_layers(cutoff):
            total += conv.weight.numel() + (4 * bn.num_features if bn is not None else conv.out_channels)
        return total

    def load_darknet_weights(self, path, cutoff=None, reader=None):
        """Load a Darknet .weights file; refuse one whose size does not fit the cfg.

        With ``cutoff`` only layers before that index are loaded (backbone files such as
        darknet53.conv.74) and the file may hold more than those layers need. ``reader``: the
        program whose BN arithmetic the file's statistics are for (bn_readers.py; None: from the
        header revision); they are converted so that this model computes what that reader does.
        """
        version, seen, data = read_weights_file(path)
        read_as = arithmetic(reader or reader_from_header(version)).name   # a bad name fails before any copy
        need = self.darknet_float_count(cutoff)
        cfg = self.cfg_path or "the cfg"
        if data.size < need or (cutoff is None and data.size != need):
            first_bad = self._first_layer_past(data.size, cutoff)
            hint = (f"the file is too short: it stops inside layer {first_bad}"
                    if data.size < need else "the file is too long")
            raise WeightsError(
                f"{path}: holds {data.size} floats after the header but {cfg} needs {need} "
                f"({hint}); these weights belong to another cfg (a pruned cfg needs its own "
                f".weights{'' if cutoff is not None else ', and a backbone-only file needs --cutoff'})")
        # slice everything and check it before touching the model, so a bad file never
        # leaves a half-loaded model behind
        ptr, pending = 0, []
        for i, conv, bn in self.conv_layers(cutoff):
            params = ([bn.bias, bn.weight, bn.running_mean, bn.running_var] if bn is not None else [conv.bias])
            for k, t in enumerate(params + [conv.weight]):
                chunk = data[ptr:ptr + t.numel()]
                if not np.isfinite(chunk).all():
                    raise WeightsError(f"{path}: layer {i} ({describe_darknet_param(bn is not None, k)}) holds "
                                       f"{non_finite_text(chunk)}; the file is corrupt or was written by a "
                                       f"diverged training run; use an earlier checkpoint")
                if bn is not None and k == 3 and (chunk < 0).any():
                    raise WeightsError(f"{path}: layer {i} has negative BN variances, so the file does not "
                                       f"belong to {cfg}; use the .weights written with this cfg")
                pending.append((t, chunk))
                ptr += t.numel()
        with torch.no_grad():
            for t, chunk in pending:
                t.copy_(torch.from_numpy(chunk.copy()).view_as(t))
        self.read_as = read_as
        for _, _, bn in self.conv_layers(cutoff):
            if bn is not None:
                adopt_reader_stats(bn, self.read_as)
        self.version, self.seen = version, seen
        return self

    def _first_layer_past(self, n_floats, cutoff):
        total = 0
        for i, conv, bn in self.conv_layers(cutoff):
            total += conv.weight.numel() + (4 * bn.num_features if bn is not None else conv.out_channels)
            if total > n_floats:
                return i
        return None

    def darknet_weights_bytes(self, cutoff=None, reader=DEFAULT_READER):
        """The .weights file content for this model (header + floats), as bytes, with the BN
        statistics written for ``reader`` (bn_readers.py) and its revision in the header."""
        version = (int(self.version[0]), int(self.version[1]), arithmetic(reader).revision)
        chunks = [header_bytes(version, self.seen)]
        with torch.no_grad():
            for _, conv, bn in self.conv_layers(cutoff):
                if bn is not None:
                    gamma, var = stats_for_reader(bn, reader)
                params = [bn.bias, gamma, bn.running_mean, var] if bn is not None else [conv.bias]
                for t in params + [conv.weight]:
                    chunks.append(t.detach().cpu().float().numpy().astype("<f4").tobytes())
        return b"".join(chunks)

    def save_darknet_weights(self, path, cutoff=None, reader=DEFAULT_READER):
        """Write a .weights file that ``reader`` (opencv, alexeyab, pjreddie) runs as this model."""
        with atomic_write(path, "wb") as f:
            f.write(self.darknet_weights_bytes(cutoff, reader))

    def checkpoint(self, **extra):
        """A dict that ``torch.load(weights_only=True)`` can read back, with the cfg text inside."""
        return {"model": self.state_dict(), "cfg": self.cfg_text(),
                "version": [int(v) for v in self.version], "seen": int(self.seen), **extra}

    def load_checkpoint_state(self, ckpt, path="checkpoint"):
        state = ckpt["model"] if isinstance(ckpt, dict) and "model" in ckpt else ckpt
        if not isinstance(state, dict):
            raise WeightsError(f"{path}: no model state_dict inside; is this a checkpoint of ours?")
        own = self.state_dict()
        for key, value in own.items():
            if key not in state:
                raise WeightsError(f"{path}: has no '{key}'; it was saved from another cfg")
            if not isinstance(state[key], torch.Tensor):
                raise WeightsError(f"{path}: '{key}' is not a tensor; is this a checkpoint of ours?")
            if tuple(state[key].shape) != tuple(value.shape):
                raise WeightsError(f"{path}: '{key}' is {tuple(state[key].shape)} but the cfg needs "
                                   f"{tuple(value.shape)}; it was saved from another cfg (a pruned model "
                                   f"needs its pruned cfg)")
        extra = sorted(set(state) - set(own))
        if extra:
            raise WeightsError(f"{path}: has keys the cfg does not ({extra[0]}, ...); it was saved from another cfg")
        self.load_state_dict(state)
        if isinstance(ckpt, dict):
            try:
                version = np.array(ckpt.get("version", DEFAULT_VERSION), dtype=np.int32).reshape(3)
                seen = int(ckpt.get("seen", 0))
            except (TypeError, ValueError, OverflowError):
                raise WeightsError(f"{path}: 'version'/'seen' are not Darknet header numbers; "
                                   f"is this a checkpoint of ours?") from None
            self.version, self.seen = version, seen
        return self
