"""Build a PyTorch model from Darknet ``module_defs``, and read/write Darknet ``.weights``.

The model computes what Darknet computes: BN eps, maxpool padding, route groups and
``scale_x_y`` decoding follow Darknet, and the tests compare raw YOLO outputs with
OpenCV DNN's Darknet importer.
"""
import copy
import os
from fractions import Fraction

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.errors import CfgError, WeightsError
from utils.io import atomic_write, is_torch_file
from utils.parse_config import cfg_to_text, parse_cfg_text, parse_model_cfg

# pjreddie Darknet divides by sqrt(var) + 1e-6 and OpenCV by sqrt(var + 1e-6); both agree with
# this to ~1e-6 on real weights. AlexeyAB uses sqrt(var + 1e-5): the difference shows only where a
# channel's variance is tiny. Measured on COCO yolov3-tiny: eps 1e-5 is 1.5e-4 off OpenCV, 1e-6 is 3e-6.
BN_EPS = 1e-6
BN_MOMENTUM = 0.03     # PyTorch convention (1 - Darknet's .97 rolling average)
DEFAULT_VERSION = (0, 2, 5)
SUPPORTED = {"convolutional", "shortcut", "route", "upsample", "maxpool", "yolo", "dropout"}


# ----------------------------------------------------------------------------- layers
class Mish(nn.Module):
    def forward(self, x):
        return x * torch.tanh(F.softplus(x))


class DarknetMaxPool(nn.Module):
    """Darknet maxpool: pads ``size-1`` (or ``padding``) with -inf, the extra row/col at bottom/right."""

    def __init__(self, size, stride, padding):
        super().__init__()
        self.size, self.stride = size, stride
        self.pad = (padding // 2, padding - padding // 2) * 2  # left, right, top, bottom

    def forward(self, x):
        if any(self.pad):
            x = F.pad(x, self.pad, value=float("-inf"))
        return F.max_pool2d(x, self.size, self.stride)


class Upsample(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return F.interpolate(x, scale_factor=self.scale, mode="nearest")


class Route(nn.Module):
    """Concatenate earlier outputs; with ``groups`` take slice ``group_id`` of each input."""

    def __init__(self, layers, groups=1, group_id=0):
        super().__init__()
        self.layers, self.groups, self.group_id = layers, groups, group_id

    def forward(self, outputs):
        parts = []
        for i in self.layers:
            t = outputs[i]
            if self.groups > 1:
                t = t.chunk(self.groups, dim=1)[self.group_id]
            parts.append(t)
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


class Shortcut(nn.Module):
    def __init__(self, source, activation):
        super().__init__()
        self.source = source
        self.activation = activation

    def forward(self, x, outputs):
        return self.activation(x + outputs[self.source])


class YOLOLayer(nn.Module):
    """Decodes one head the way Darknet's yolo layer does."""

    def __init__(self, anchors, nc, scale_x_y=1.0):
        super().__init__()
        # a plain attribute, not a buffer: it comes from the cfg, so it is never saved and
        # survives models built on the meta device (Darknet.without_init)
        self.anchors = torch.tensor(anchors, dtype=torch.float32, device="cpu").view(-1, 2)
        self.na, self.nc, self.no = len(anchors), nc, nc + 5
        self.scale_x_y = float(scale_x_y)

    def reshape(self, raw):
        """(B, na*no, ny, nx) -> (B, na, ny, nx, no)."""
        b, _, ny, nx = raw.shape
        return raw.view(b, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()

    def decode(self, p, img_hw):
        """Raw (B, na, ny, nx, no) -> (B, na*ny*nx, no): xywh in input pixels, obj/cls sigmoid."""
        b, _, ny, nx, _ = p.shape
        stride = torch.tensor([img_hw[1] / nx, img_hw[0] / ny], device=p.device)
        yv, xv = torch.meshgrid(torch.arange(ny, device=p.device), torch.arange(nx, device=p.device), indexing="ij")
        grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2).to(p.dtype)
        s = self.scale_x_y
        xy = (torch.sigmoid(p[..., :2]) * s - (s - 1) / 2 + grid) * stride
        wh = torch.exp(p[..., 2:4]) * self.anchors.to(p.device, p.dtype).view(1, self.na, 1, 1, 2)
        rest = torch.sigmoid(p[..., 4:])
        return torch.cat((xy, wh, rest), -1).view(b, -1, self.no)


ACTIVATIONS = {
    "leaky": lambda: nn.LeakyReLU(0.1),
    "relu": nn.ReLU,
    "mish": Mish,
    "swish": nn.SiLU,
    "logistic": nn.Sigmoid,
    "tanh": nn.Tanh,
    "linear": None,
}


def make_activation(name, section):
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise CfgError(f"{section.where()}: activation={name} is not supported; use one of {sorted(ACTIVATIONS)}")
    factory = ACTIVATIONS[name]
    return factory() if factory else nn.Identity()


# ----------------------------------------------------------------------------- graph
def resolve_layers(section, index, n_layers):
    """Absolute indices of a route's ``layers=`` (relative ones are counted back from ``index``)."""
    if "layers" not in section:
        raise CfgError(f"{section.where()}: route needs 'layers='")
    values = section["layers"] if isinstance(section["layers"], list) else [section["layers"]]
    out = []
    for v in values:
        if not isinstance(v, int):
            raise CfgError(f"{section.where()}: layers={section['layers']} must be integers")
        j = v + index if v < 0 else v
        if not 0 <= j < index:
            raise CfgError(f"{section.where()}: layers={v} points to layer {j}, outside 0..{index - 1}; "
                           f"fix the index (relative ones are negative)")
        out.append(j)
    return out


def resolve_shortcut(section, index):
    source = section.get("from")
    if isinstance(source, list):
        if len(source) != 1:
            raise CfgError(f"{section.where()}: shortcut with several 'from' layers is not supported")
        source = source[0]
    if not isinstance(source, int):
        raise CfgError(f"{section.where()}: shortcut needs an integer 'from='")
    j = source + index if source < 0 else source
    if not 0 <= j < index:
        raise CfgError(f"{section.where()}: from={source} points to layer {j}, outside 0..{index - 1}")
    return j


def get_int(section, key, default=None):
    value = section.get(key, default)
    if value is None:
        raise CfgError(f"{section.where()}: missing '{key}='; add it to the section")
    if not isinstance(value, int) or isinstance(value, bool):
        raise CfgError(f"{section.where()}: {key}={value!r} must be an integer")
    return value


# The largest convs of real Darknet models hold ~10**7 weights. A size past this is a typo (a digit
# too many) and would otherwise fail deep inside torch's allocator, or exhaust memory, with no file named.
MAX_CONV_WEIGHTS = 2 ** 27


def check_conv_size(section, filters, in_per_group, size):
    n = filters * in_per_group * size * size
    if n > MAX_CONV_WEIGHTS:
        raise CfgError(f"{section.where()}: filters={filters} x {in_per_group} input channels x size={size}^2 is "
                       f"{n:,} weights, over the {MAX_CONV_WEIGHTS:,} limit; is a value a digit too long?")


def yolo_anchors(section):
    anchors = section.get("anchors")
    if not isinstance(anchors, list) or len(anchors) % 2:
        raise CfgError(f"{section.where()}: anchors= must be an even-length list of numbers")
    pairs = [(float(anchors[i]), float(anchors[i + 1])) for i in range(0, len(anchors), 2)]
    mask = section.get("mask", list(range(len(pairs))))
    mask = mask if isinstance(mask, list) else [mask]
    if any(not isinstance(m, int) or not 0 <= m < len(pairs) for m in mask):
        raise CfgError(f"{section.where()}: mask={section.get('mask')} selects anchors that do not exist")
    return [pairs[m] for m in mask]


def create_modules(module_defs, in_channels):
    """Build one nn.Module per layer; return (module_list, output channels per layer)."""
    module_list, out_channels = nn.ModuleList(), []
    channels = in_channels
    # each layer's total stride relative to the input: inputs joined by a route or a shortcut
    # must share it, or forward() would fail deep inside torch with "sizes must match"
    scales, scale = [], Fraction(1)
    for i, mdef in enumerate(module_defs):
        kind = mdef["type"]
        seq = nn.Sequential()
        if kind not in SUPPORTED:
            raise CfgError(f"{mdef.where()}: layer type [{kind}] is not supported; "
                           f"supported: {', '.join(sorted(SUPPORTED))}")
        if kind == "convolutional":
            filters = get_int(mdef, "filters")
            size = get_int(mdef, "size", 1)
            stride = get_int(mdef, "stride", 1)
            groups = get_int(mdef, "groups", 1)
            bn = bool(get_int(mdef, "batch_normalize", 0))
            pad = size // 2 if get_int(mdef, "pad", 0) else get_int(mdef, "padding", 0)
            if min(filters, size, stride, groups) <= 0 or pad < 0:
                raise CfgError(f"{mdef.where()}: filters, size, stride and groups must be positive, padding not negative")
            if channels % groups or filters % groups:
                raise CfgError(f"{mdef.where()}: groups={groups} must divide input ({channels}) and filters ({filters})")
            check_conv_size(mdef, filters, channels // groups, size)
            seq.add_module("Conv2d", nn.Conv2d(channels, filters, size, stride, pad, groups=groups, bias=not bn))
            scale *= stride
            if bn:
                seq.add_module("BatchNorm2d", nn.BatchNorm2d(filters, eps=BN_EPS, momentum=BN_MOMENTUM))
            activation = mdef.get("activation", "logistic")
            if activation != "linear":
                seq.add_module("activation", make_activation(activation, mdef))
            channels = filters
        elif kind == "maxpool":
            size = get_int(mdef, "size", 1)
            stride = get_int(mdef, "stride", 1)
            padding = get_int(mdef, "padding", size - 1)
            if size <= 0 or stride <= 0 or padding < 0:
                raise CfgError(f"{mdef.where()}: size and stride must be positive, padding not negative")
            seq = DarknetMaxPool(size, stride, padding)
            scale *= stride
        elif kind == "upsample":
            stride = get_int(mdef, "stride", 2)
            if stride <= 0:
                raise CfgError(f"{mdef.where()}: stride={stride} must be positive (downsampling is not supported)")
            seq = Upsample(stride)
            scale /= stride
        elif kind == "route":
            layers = resolve_layers(mdef, i, len(module_defs))
            groups, group_id = get_int(mdef, "groups", 1), get_int(mdef, "group_id", 0)
            if not 0 <= group_id < groups:
                raise CfgError(f"{mdef.where()}: group_id={group_id} must be in 0..groups-1")
            parts = [out_channels[j] for j in layers]
            if any(c % groups for c in parts):
                raise CfgError(f"{mdef.where()}: groups={groups} does not divide the routed channels {parts}")
            channels = sum(c // groups for c in parts)
            if len({scales[j] for j in layers}) > 1:
                raise CfgError(f"{mdef.where()}: joins layers {layers} of different resolutions "
                               f"(strides {[str(scales[j]) for j in layers]}); route layers of one size")
            scale = scales[layers[0]]
            seq = Route(layers, groups, group_id)
        elif kind == "shortcut":
            j = resolve_shortcut(mdef, i)
            if out_channels[j] != channels:
                raise CfgError(f"{mdef.where()}: adds layer {j} ({out_channels[j]} channels) to layer {i - 1} "
                               f"({channels} channels); the widths must match")
            if scales[j] != scale:
                raise CfgError(f"{mdef.where()}: adds layer {j} (stride {scales[j]}) to layer {i - 1} "
                               f"(stride {scale}); the resolutions must match")
            seq = Shortcut(j, make_activation(mdef.get("activation", "linear"), mdef))
        elif kind == "yolo":
            anchors = yolo_anchors(mdef)
            nc = get_int(mdef, "classes", 80)
            if nc < 1:
                raise CfgError(f"{mdef.where()}: classes={nc} must be at least 1")
            if channels != len(anchors) * (nc + 5):
                raise CfgError(f"{mdef.where()}: the conv before this [yolo] has filters={channels}, but "
                               f"{len(anchors)} anchors x (classes {nc} + 5) = {len(anchors) * (nc + 5)}; set filters to that")
            if mdef.get("new_coords", 0):
                raise CfgError(f"{mdef.where()}: new_coords={mdef['new_coords']} is not supported "
                               f"(only Darknet's classic decoding, new_coords=0)")
            scale = mdef.get("scale_x_y", 1.0)
            if isinstance(scale, bool) or not isinstance(scale, (int, float)):
                raise CfgError(f"{mdef.where()}: scale_x_y={scale!r} must be a number")
            seq = YOLOLayer(anchors, nc, scale)
        elif kind == "dropout":
            seq = nn.Identity()
        module_list.append(seq)
        out_channels.append(channels)
        scales.append(scale)
    return module_list, out_channels


def layer_sources(module_defs):
    """For each layer, the layers whose outputs it reads (the graph the pruning engine walks)."""
    sources = []
    for i, mdef in enumerate(module_defs):
        if mdef["type"] == "route":
            sources.append(resolve_layers(mdef, i, len(module_defs)))
        elif mdef["type"] == "shortcut":
            sources.append([i - 1, resolve_shortcut(mdef, i)])
        else:
            sources.append([i - 1] if i > 0 else [])
    return sources


# ----------------------------------------------------------------------------- model
class Darknet(nn.Module):
    """A Darknet network built from a .cfg path or a parsed ``module_defs`` list."""

    def __init__(self, cfg, img_size=None):
        super().__init__()
        if isinstance(cfg, (str, os.PathLike)):
            defs = parse_model_cfg(os.fspath(cfg))
            self.cfg_path = os.fspath(cfg)
        else:
            defs = copy.deepcopy(list(cfg))
            self.cfg_path = None
        if defs[0]["type"] not in ("net", "network"):
            raise CfgError("module_defs must start with the [net] section")
        self.hyperparams, self.module_defs = defs[0], defs[1:]
        if not self.module_defs:
            raise CfgError(f"{self.cfg_path or '<cfg>'}: the cfg has no layers after [net]")
        in_channels = get_int(self.hyperparams, "channels", 3)
        if in_channels <= 0:
            raise CfgError(f"{self.hyperparams.where()}: channels={in_channels} must be positive")
        self.module_list, self.out_channels = create_modules(self.module_defs, in_channels)
        self.yolo_layers = [i for i, m in enumerate(self.module_defs) if m["type"] == "yolo"]
        if not self.yolo_layers:
            raise CfgError(f"{self.cfg_path or '<cfg>'}: the cfg has no [yolo] layer")
        self.nc = self.module_list[self.yolo_layers[0]].nc
        self.img_size = img_size or (get_int(self.hyperparams, "height", 416), get_int(self.hyperparams, "width", 416))
        if isinstance(self.img_size, int):
            self.img_size = (self.img_size, self.img_size)
        self.version = np.array(DEFAULT_VERSION, dtype=np.int32)
        self.seen = 0
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
        for i, (mdef, module) in enumerate(zip(self.module_defs, self.module_list)):
            kind = mdef["type"]
            if kind == "route":
                x = module(outputs)
            elif kind == "shortcut":
                x = module(x, outputs)
            elif kind == "yolo":
                raw.append(x)
            else:
                x = module(x)
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
        for i, (mdef, module) in enumerate(zip(self.module_defs[:stop], self.module_list[:stop])):
            if mdef["type"] == "convolutional":
                yield i, module.Conv2d, getattr(module, "BatchNorm2d", None)

    def darknet_float_count(self, cutoff=None):
        total = 0
        for _, conv, bn in self.conv_layers(cutoff):
            total += conv.weight.numel() + (4 * bn.num_features if bn is not None else conv.out_channels)
        return total

    def load_darknet_weights(self, path, cutoff=None):
        """Load a Darknet .weights file; refuse one whose size does not fit the cfg.

        With ``cutoff`` only layers before that index are loaded (backbone files such as
        darknet53.conv.74) and the file may hold more than those layers need.
        """
        version, seen, data = read_weights_file(path)
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
        self.version, self.seen = version, seen
        return self

    def _first_layer_past(self, n_floats, cutoff):
        total = 0
        for i, conv, bn in self.conv_layers(cutoff):
            total += conv.weight.numel() + (4 * bn.num_features if bn is not None else conv.out_channels)
            if total > n_floats:
                return i
        return None

    def darknet_weights_bytes(self, cutoff=None):
        """The .weights file content for this model (header + floats), as bytes."""
        major, minor = int(self.version[0]), int(self.version[1])
        seen_dtype = np.int64 if major * 10 + minor >= 2 else np.int32
        chunks = [np.asarray(self.version, dtype=np.int32).tobytes(), np.array([self.seen], dtype=seen_dtype).tobytes()]
        with torch.no_grad():
            for _, conv, bn in self.conv_layers(cutoff):
                params = ([bn.bias, bn.weight, bn.running_mean, bn.running_var] if bn is not None else [conv.bias])
                for t in params + [conv.weight]:
                    chunks.append(t.detach().cpu().float().numpy().astype("<f4").tobytes())
        return b"".join(chunks)

    def save_darknet_weights(self, path, cutoff=None):
        with atomic_write(path, "wb") as f:
            f.write(self.darknet_weights_bytes(cutoff))

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
    wide = major * 10 + minor >= 2
    header_bytes = 20 if wide else 16
    if len(blob) < header_bytes:
        raise WeightsError(f"{path}: only {len(blob)} bytes, too short for a version {major}.{minor} Darknet header")
    seen = int(np.frombuffer(blob, dtype=np.int64 if wide else np.int32, count=1, offset=12)[0])
    body = len(blob) - header_bytes
    if body % 4:
        raise WeightsError(f"{path}: {body} bytes after the header is not a whole number of float32s; "
                           f"the file is truncated or not a .weights file")
    data = np.frombuffer(blob, dtype="<f4", offset=header_bytes)
    return version, seen, data


def load_model(cfg, weights=None, img_size=None, cutoff=None):
    """Darknet model from a cfg plus an optional Darknet weights file or checkpoint of ours."""
    if isinstance(cfg, (str, os.PathLike)) and img_size is None:
        from utils.cli_checks import check_net_size
        check_net_size(parse_model_cfg(os.fspath(cfg)), os.fspath(cfg))  # width=0 must not reach PyTorch
    model = Darknet(cfg, img_size)
    if weights:
        load_weights(model, weights, cutoff)
    return model


def load_weights(model, path, cutoff=None):
    """Load Darknet weights or our checkpoint into ``model``; the format is read from the file's
    content, not its name (convert.py writes .pth/.ckpt as well as .pt)."""
    if is_torch_file(path):
        model.load_checkpoint_state(load_checkpoint(path), path)
    else:
        model.load_darknet_weights(path, cutoff)
    return model


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


def model_from_checkpoint(path, img_size=None):
    """Rebuild a model from a checkpoint of ours alone: the cfg text travels inside it."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("cfg"), str):
        raise WeightsError(f"{path}: has no cfg inside; pass --cfg with it")
    defs = parse_cfg_text(ckpt["cfg"], path)
    if img_size is None:
        from utils.cli_checks import check_net_size
        check_net_size(defs, path)
    model = Darknet(defs, img_size)
    return model.load_checkpoint_state(ckpt, path)
