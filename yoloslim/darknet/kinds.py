"""Every Darknet section type this toolkit understands, in one table.

A layer kind is a small class registered in ``KINDS`` under its section name. It owns
everything that differs between kinds: which options it refuses, which earlier layers it
reads, its output width and stride, the nn.Module it builds and how forward calls it, how
channels flow through it for the pruning graph, what a constant input channel becomes at its
output (compensation), which output channels the compact model keeps, and its FLOPs.
Model build (models.py), the pruning graph (yoloslim/prune/graph.py), the pruning surgery
(yoloslim/prune/engine.py) and FLOPs (yoloslim/deploy/measure.py) only call into this table, so a
section missing from it is refused at parse time and never passes through silently.
See docs/DESIGN.md, "How to add a layer kind".
"""
from fractions import Fraction

import torch
import torch.nn as nn
import torch.nn.functional as F

from yoloslim.errors import CfgError, PruneError

# OpenCV divides by sqrt(var + 1e-6), as we do; pjreddie Darknet by sqrt(var) + 1e-6 and AlexeyAB by
# sqrt(var + 1e-5). Files are written and read for a named reader, whose arithmetic the statistics
# are converted to and from (yoloslim/darknet/bn_readers.py), so each reader computes the model exactly.
BN_EPS = 1e-6
BN_MOMENTUM = 0.03     # PyTorch convention (1 - Darknet's .97 rolling average)

# The largest convs of real Darknet models hold ~10**7 weights. A size past this is a typo (a digit
# too many) and would otherwise fail deep inside torch's allocator, or exhaust memory, with no file named.
MAX_CONV_WEIGHTS = 2 ** 27

GLOBAL = None          # the stride of a layer whose output is 1x1 whatever the input size (avgpool)


# ----------------------------------------------------------------------------- modules
class Mish(nn.Module):
    def forward(self, x):
        return x * torch.tanh(F.softplus(x))


# Darknet's activations that OpenCV's Darknet importer computes the same way (checked one by one
# against cv2 4.14: relu6, hardswish, elu, gelu... are refused there, so they are refused here).
ACTIVATIONS = {
    "leaky": lambda: nn.LeakyReLU(0.1),
    "relu": nn.ReLU,
    "mish": Mish,
    "swish": nn.SiLU,
    "logistic": nn.Sigmoid,
    "tanh": nn.Tanh,
    "linear": nn.Identity,
}


# AlexeyAB's additions to Darknet's activations: the original (pjreddie) Darknet has none of them
PJREDDIE_LACKS_ACTIVATIONS = ("mish", "swish")


def make_activation(mdef, default="linear"):
    name = mdef.get("activation", default)
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise CfgError(f"{mdef.where()}: activation={name} is not supported; use one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def is_linear(mdef, default="linear"):
    return mdef.get("activation", default) == "linear"


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


class GlobalAvgPool(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3), keepdim=True)


class Reorg(nn.Module):
    """Darknet's ``[reorg]`` (stride s) as OpenCV computes it: the input's memory read as
    (C/s^2, H*s, W*s), each s x s block spread over channels, written as (C*s^2, H/s, W/s).
    This is Darknet's historic reorg, not a plain space-to-depth."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        b, c, h, w = x.shape
        s = self.stride
        y = x.reshape(b, c // (s * s), h, s, w, s)          # (c2, j, dy, i, dx) of the (C/s^2, H*s, W*s) view
        y = y.permute(0, 3, 5, 1, 2, 4)                     # (dy, dx, c2, j, i)
        return y.reshape(b, c * s * s, h // s, w // s)


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
    """Darknet's sum: the output has the previous layer's width; the ``from`` layer is added
    channel by channel over the part both have."""

    def __init__(self, source, activation):
        super().__init__()
        self.source = source
        self.activation = activation

    def forward(self, x, outputs):
        other = outputs[self.source]
        n = min(x.shape[1], other.shape[1])
        if n == x.shape[1] == other.shape[1]:
            return self.activation(x + other)
        return self.activation(torch.cat((x[:, :n] + other[:, :n], x[:, n:]), 1))


class Multiply(nn.Module):
    """[sam] (same shapes) and [scale_channels] (a 1x1 per-channel factor): ``from`` times the input."""

    def __init__(self, source, activation):
        super().__init__()
        self.source = source
        self.activation = activation

    def forward(self, x, outputs):
        return self.activation(outputs[self.source] * x)


def decode_boxes(t, anchors, scale_x_y, new_coords):
    """The one YOLO box decoding: raw head values -> (xy within the cell, wh in anchor units).

    ``t`` is (..., >=4) and ``anchors`` broadcasts against (..., 2). Classic Darknet (new_coords=0):
    xy = sigmoid(t)*s - (s-1)/2, wh = exp(t)*anchor. Scaled-YOLOv4 (new_coords=1) takes values the
    head conv already passed through a logistic: xy = t*s - (s-1)/2, wh = (2t)^2*anchor.
    """
    s = scale_x_y
    if new_coords:
        xy = t[..., :2] * s - (s - 1) / 2
        wh = (2 * t[..., 2:4]) ** 2 * anchors
    else:
        xy = torch.sigmoid(t[..., :2]) * s - (s - 1) / 2
        wh = torch.exp(t[..., 2:4]) * anchors
    return xy, wh


class YOLOLayer(nn.Module):
    """Decodes one head the way Darknet's yolo layer does."""
    softmax = False    # class scores: independent logistics (a [region] with softmax=1 normalises them)

    def __init__(self, anchors, nc, scale_x_y=1.0, new_coords=0):
        super().__init__()
        # a plain attribute, not a buffer: it comes from the cfg, so it is never saved and
        # survives models built on the meta device (Darknet.without_init)
        self.anchors = torch.tensor(anchors, dtype=torch.float32, device="cpu").view(-1, 2)
        self.na, self.nc, self.no = len(anchors), nc, nc + 5
        self.scale_x_y = float(scale_x_y)
        self.new_coords = int(new_coords)

    def reshape(self, raw):
        """(B, na*no, ny, nx) -> (B, na, ny, nx, no)."""
        b, _, ny, nx = raw.shape
        return raw.view(b, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()

    def boxes(self, t, anchors, wh_clamp=None):
        """(xy in the cell, wh) of raw values ``t``; ``wh_clamp`` bounds classic wh logits (loss)."""
        if wh_clamp is not None and not self.new_coords:
            t = torch.cat((t[..., :2], t[..., 2:4].clamp(max=wh_clamp)), -1)
        return decode_boxes(t, anchors, self.scale_x_y, self.new_coords)

    def grid_anchors(self, sx, sy):
        """The anchors in grid cells of a head whose cells are ``sx`` x ``sy`` input pixels."""
        return self.anchors / torch.tensor([sx, sy])

    def pixel_anchors(self, stride):
        """The anchors in input pixels (``stride``: the (x, y) input pixels per grid cell)."""
        return self.anchors

    def scores(self, t):
        """Objectness and class probabilities from raw values."""
        return t[..., 4:] if self.new_coords else torch.sigmoid(t[..., 4:])

    def darknet_output(self, raw):
        """Raw head map (na*no, ny, nx) as Darknet's layer leaves it in its output array: logistic
        in place on x, y, objectness and classes, w and h raw (classic heads)."""
        a = raw.view(self.na, self.no, *raw.shape[1:])
        out = torch.sigmoid(a)
        out[:, 2:4] = a[:, 2:4]
        return out.view(raw.shape)

    def logits(self, t):
        """All raw values as logits: classic heads output logits already, new_coords heads hold
        probabilities (their conv ends in a logistic), which distillation compares as logits."""
        return torch.logit(t, eps=1e-6) if self.new_coords else t

    def score_logits(self, t):
        """Objectness and class logits (for BCE-with-logits losses) from raw values."""
        return torch.logit(t[..., 4:], eps=1e-6) if self.new_coords else t[..., 4:]

    def decode(self, p, img_hw):
        """Raw (B, na, ny, nx, no) -> (B, na*ny*nx, no): xywh in input pixels, obj/cls probabilities."""
        b, _, ny, nx, _ = p.shape
        stride = torch.tensor([img_hw[1] / nx, img_hw[0] / ny], device=p.device)
        yv, xv = torch.meshgrid(torch.arange(ny, device=p.device), torch.arange(nx, device=p.device), indexing="ij")
        grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2).to(p.dtype)
        anchors = self.pixel_anchors(stride.cpu()).to(p.device, p.dtype).view(1, self.na, 1, 1, 2)
        xy, wh = self.boxes(p, anchors)
        return torch.cat(((xy + grid) * stride, wh, self.scores(p)), -1).view(b, -1, self.no)


class RegionLayer(YOLOLayer):
    """A YOLOv2 ``[region]`` head: the same (x, y, w, h, objectness, classes) per anchor as a [yolo],
    but its anchors are in grid cells (so a box keeps its size relative to the grid at any input
    size) and its class scores are one softmax per anchor."""
    softmax = True

    def grid_anchors(self, sx, sy):
        return self.anchors

    def pixel_anchors(self, stride):
        return self.anchors * stride

    def scores(self, t):
        return torch.cat((torch.sigmoid(t[..., 4:5]), torch.softmax(t[..., 5:], -1)), -1)

    def darknet_output(self, raw):
        """Darknet's region output: logistic on x, y and objectness, softmax over the classes."""
        a = raw.view(self.na, self.no, *raw.shape[1:])
        out = a.clone()
        out[:, 0:2] = torch.sigmoid(a[:, 0:2])
        out[:, 4] = torch.sigmoid(a[:, 4])
        out[:, 5:] = torch.softmax(a[:, 5:], 1)
        return out.view(raw.shape)


# ----------------------------------------------------------------------------- option helpers
def get_int(section, key, default=None):
    value = section.get(key, default)
    if value is None:
        raise CfgError(f"{section.where()}: missing '{key}='; add it to the section")
    if not isinstance(value, int) or isinstance(value, bool):
        raise CfgError(f"{section.where()}: {key}={value!r} must be an integer")
    return value


def get_number(section, key, default):
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CfgError(f"{section.where()}: {key}={value!r} must be a number")
    return float(value)


def resolve_ref(section, key, value, index):
    """Absolute index of one layer reference (relative ones are counted back from ``index``)."""
    if not isinstance(value, int):
        raise CfgError(f"{section.where()}: {key}={section[key]} must be integers")
    j = value + index if value < 0 else value
    if not 0 <= j < index:
        raise CfgError(f"{section.where()}: {key}={value} points to layer {j}, outside 0..{index - 1}; "
                       f"fix the index (relative ones are negative)")
    return j


def _scale_mul(scale, factor):
    return GLOBAL if scale is GLOBAL else scale * factor


# ----------------------------------------------------------------------------- kinds
KINDS = {}   # section name -> kind; each kind registers itself where it is defined


def register(cls):
    """Class decorator: make ``cls`` the kind of its section name."""
    KINDS[cls.name] = cls()
    return cls


class Kind:
    """Defaults shared by every kind; a subclass overrides what differs.

    The defaults are the safe ones for a new kind: it reads the previous layer, keeps its
    width and stride, has no weights, and *freezes* channels (its inputs and output are never
    pruned, and a constant reaching it stops compensation, so nothing upstream is pruned into it).
    """
    name = ""
    refs = ()                 # option keys that hold layer references ("layers", "from")
    refused = {}              # option -> value meaning "off"; any other value is refused by name
    required = ()             # options whose default differs between Darknet and OpenCV: must be written
    activation = None         # None: the kind has no activation (a non-linear one is refused)
    has_weights = False       # reads its share of the .weights file
    is_head = False           # a [yolo] output
    adds_inputs = False       # a residual sum (its inputs share one channel space)
    reads_previous = True     # the previous layer is its first input

    # ---- which Darknet runs it
    def pjreddie_lacks(self, mdef):
        """Why the original (pjreddie) Darknet cannot run this section, or None. Its layer set is
        AlexeyAB's minus what AlexeyAB added; a kind or option it never had says so here."""
        act = mdef.get("activation")
        return f"activation={act}" if act in PJREDDIE_LACKS_ACTIVATIONS else None

    # ---- the layer's parts: the rest of the code reaches a conv or its BN only through these
    def conv(self, module):
        """The layer's nn.Conv2d, or None for a kind without weights."""
        return None

    def bn(self, module):
        """The layer's nn.BatchNorm2d, or None."""
        return None

    # ---- parse time
    def check_options(self, mdef):
        for key in self.required:
            if key not in mdef:
                raise CfgError(f"{mdef.where()}: write {key}= explicitly: Darknet and OpenCV default it "
                               f"differently for a [{self.name}]")
        for key, off in self.refused.items():
            if key in mdef and mdef[key] != off:
                fix = "remove it" if off is None else f"remove it or set {key}={off}"
                written = getattr(mdef, "raw", {}).get(key, mdef[key])   # as in the file, not the parsed list
                raise CfgError(f"{mdef.where()}: {key}={written} is not supported (it changes the "
                               f"computation); {fix}")
        if self.activation is not None:
            make_activation(mdef, self.activation)
        elif not is_linear(mdef):
            raise CfgError(f"{mdef.where()}: activation={mdef['activation']} has no effect in Darknet on a "
                           f"[{self.name}] but OpenCV applies it; remove it")

    # ---- graph and shapes
    def sources(self, mdef, i):
        out = [i - 1] if i > 0 and self.reads_previous else []
        for key in self.refs:
            if key not in mdef:
                raise CfgError(f"{mdef.where()}: needs '{key}='")
            values = mdef[key] if isinstance(mdef[key], list) else [mdef[key]]
            if not values:  # 'layers=,' parses to no numbers at all
                written = getattr(mdef, "raw", {}).get(key, "")
                raise CfgError(f"{mdef.where()}: {key}={written} names no layer; give at least one")
            if self.name != "route" and len(values) != 1:
                raise CfgError(f"{mdef.where()}: {key}= with several layers is not supported; give one")
            out += [resolve_ref(mdef, key, v, i) for v in values]
        return out

    def width(self, mdef, srcs, widths, in_channels):
        return widths[srcs[0]] if srcs else in_channels

    def scale(self, mdef, srcs, scales):
        return scales[srcs[0]] if srcs else Fraction(1)

    def build(self, mdef, srcs, in_width):
        return nn.Identity()

    def run(self, module, x, outputs):
        return module(x)

    # ---- pruning graph
    def same_channels(self, mdef, srcs, widths):
        """True when the output is its inputs' channel space, unchanged in order (joined in one group)."""
        return False

    def concatenates(self, mdef, srcs):
        """True when the output is built from slices of its inputs' channels (masks derive from them)."""
        return False

    def freezes(self, mdef, srcs, widths):
        """True when neither the inputs nor the output may lose channels."""
        return True

    def constants_exact(self, mdef):
        """True when a constant added to an input channel comes out as a constant (compensable)."""
        return False

    # ---- compensation and surgery
    def constants(self, mdef, module, in_consts, keep, width):
        """What each output channel lacks in the compact model, given what each input lacks."""
        if any(c.any() for c in in_consts):
            raise PruneError(f"{mdef.where()}: a pruned channel's constant reaches this [{self.name}], which "
                             f"cannot carry it; this layer kind must stop pruning upstream")
        return torch.zeros(width)

    def out_mask(self, mdef, in_masks, keep, width):
        """Which of its original output channels the compact model keeps."""
        if any(not bool(m.all()) for m in in_masks):
            raise PruneError(f"{mdef.where()}: an input of this [{self.name}] lost channels, but it cannot be "
                             f"pruned through; the graph must freeze its inputs")
        return torch.ones(width, dtype=torch.bool)

    def flops(self, module, output):
        return 0


@register
class Convolutional(Kind):
    name = "convolutional"
    refused = {"dilation": 1, "antialiasing": 0, "xnor": 0, "binary": 0, "flipped": 0, "deform": 0,
               "sway": 0, "rotate": 0, "stretch": 0, "stretch_sway": 0, "coordconv": 0, "share_index": None,
               "bin_output": 0}
    required = ("activation",)     # Darknet's default is logistic, OpenCV's linear
    activation = "logistic"
    has_weights = True

    def conv(self, module):
        return module.Conv2d

    def bn(self, module):
        return getattr(module, "BatchNorm2d", None)

    def check_options(self, mdef):
        super().check_options(mdef)
        stride = mdef.get("stride", 1)
        for key in ("stride_x", "stride_y"):
            if key in mdef and mdef[key] != stride:
                raise CfgError(f"{mdef.where()}: {key}={mdef[key]} is not supported (a stride differing per axis); "
                               f"use stride= alone")

    def width(self, mdef, srcs, widths, in_channels):
        return get_int(mdef, "filters")

    def scale(self, mdef, srcs, scales):
        return _scale_mul(super().scale(mdef, srcs, scales), get_int(mdef, "stride", 1))

    def build(self, mdef, srcs, in_width):
        filters = get_int(mdef, "filters")
        size = get_int(mdef, "size", 1)
        stride = get_int(mdef, "stride", 1)
        groups = get_int(mdef, "groups", 1)
        bn = bool(get_int(mdef, "batch_normalize", 0))
        pad = size // 2 if get_int(mdef, "pad", 0) else get_int(mdef, "padding", 0)
        if min(filters, size, stride, groups) <= 0 or pad < 0:
            raise CfgError(f"{mdef.where()}: filters, size, stride and groups must be positive, padding not negative")
        if in_width % groups or filters % groups:
            raise CfgError(f"{mdef.where()}: groups={groups} must divide input ({in_width}) and filters ({filters})")
        n = filters * in_width // groups * size * size
        if n > MAX_CONV_WEIGHTS:
            raise CfgError(f"{mdef.where()}: filters={filters} x {in_width // groups} input channels x size={size}^2 "
                           f"is {n:,} weights, over the {MAX_CONV_WEIGHTS:,} limit; is a value a digit too long?")
        seq = nn.Sequential()
        seq.add_module("Conv2d", nn.Conv2d(in_width, filters, size, stride, pad, groups=groups, bias=not bn))
        if bn:
            seq.add_module("BatchNorm2d", nn.BatchNorm2d(filters, eps=BN_EPS, momentum=BN_MOMENTUM))
        if not is_linear(mdef, self.activation):
            seq.add_module("activation", make_activation(mdef, self.activation))
        return seq

    def freezes(self, mdef, srcs, widths):
        return mdef.get("groups", 1) > 1       # a grouped (depthwise) conv couples its in and out channels

    def constants_exact(self, mdef):
        return True                            # a conv absorbs input constants into its bias / BN mean

    def constants(self, mdef, module, in_consts, keep, width):
        if keep is None:
            return torch.zeros(width)
        beta = module.BatchNorm2d.bias.detach().float().view(1, -1, 1, 1)
        act = getattr(module, "activation", nn.Identity())
        return torch.where(keep, torch.zeros(width), act(beta).view(-1))

    def out_mask(self, mdef, in_masks, keep, width):
        return keep if keep is not None else torch.ones(width, dtype=torch.bool)

    def flops(self, module, output):
        conv = module.Conv2d
        k = conv.kernel_size[0] * conv.kernel_size[1] * conv.in_channels // conv.groups
        return 2 * output.numel() * k        # multiply-add counted as 2, as Darknet prints

    def copy_compact(self, src, dst, in_mask, out_mask, in_const):
        """Copy ``src``'s kept weights into ``dst`` and fold the input's constants into its bias / BN mean."""
        conv = src.Conv2d
        if conv.groups > 1:
            in_mask = torch.ones(conv.weight.shape[1], dtype=torch.bool)
        weight = conv.weight.detach()
        offset = None
        if in_const is not None and in_const.any():
            per_group = weight.sum(dim=(2, 3)).float()                       # (out, in/groups)
            group_in = in_const.view(conv.groups, -1)                        # (groups, in/groups)
            group_of_out = torch.arange(conv.out_channels) // (conv.out_channels // conv.groups)
            offset = (per_group * group_in[group_of_out]).sum(1)
        dst.Conv2d.weight.copy_(weight[out_mask][:, in_mask])
        if hasattr(src, "BatchNorm2d"):
            src_bn, dst_bn = src.BatchNorm2d, dst.BatchNorm2d
            mean = src_bn.running_mean.detach().clone()
            if offset is not None:
                mean -= offset.to(mean.dtype)
            dst_bn.weight.copy_(src_bn.weight[out_mask])
            dst_bn.bias.copy_(src_bn.bias[out_mask])
            dst_bn.running_mean.copy_(mean[out_mask])
            dst_bn.running_var.copy_(src_bn.running_var[out_mask])
            dst_bn.num_batches_tracked.copy_(src_bn.num_batches_tracked)
        else:
            bias = conv.bias.detach().clone()
            if offset is not None:
                bias += offset.to(bias.dtype)
            dst.Conv2d.bias.copy_(bias[out_mask])


class PassThrough(Kind):
    """A kind whose output channel c is computed from its input channel c alone, the same way
    for every channel, and maps a constant channel to the same constant (maxpool, upsample...)."""

    def same_channels(self, mdef, srcs, widths):
        return True

    def freezes(self, mdef, srcs, widths):
        return False

    def constants_exact(self, mdef):
        return True

    def constants(self, mdef, module, in_consts, keep, width):
        return in_consts[0]

    def out_mask(self, mdef, in_masks, keep, width):
        return in_masks[0]


@register
class MaxPool(PassThrough):
    name = "maxpool"
    refused = {"maxpool_depth": 0, "antialiasing": 0, "out_channels": None, "maxpool_zero_nonmax": 0}
    required = ("size", "stride")

    def check_options(self, mdef):
        super().check_options(mdef)
        stride = mdef.get("stride", 1)
        for key in ("stride_x", "stride_y"):
            if key in mdef and mdef[key] != stride:
                raise CfgError(f"{mdef.where()}: {key}={mdef[key]} is not supported (a stride differing per axis); "
                               f"use stride= alone")

    def _params(self, mdef):
        size = get_int(mdef, "size", 1)
        stride = get_int(mdef, "stride", 1)
        padding = get_int(mdef, "padding", size - 1)
        if size <= 0 or stride <= 0 or padding < 0:
            raise CfgError(f"{mdef.where()}: size and stride must be positive, padding not negative")
        return size, stride, padding

    def scale(self, mdef, srcs, scales):
        return _scale_mul(super().scale(mdef, srcs, scales), self._params(mdef)[1])

    def build(self, mdef, srcs, in_width):
        return DarknetMaxPool(*self._params(mdef))


@register
class UpsampleKind(PassThrough):
    name = "upsample"
    refused = {"scale": 1}      # Darknet multiplies the output by it; OpenCV ignores it
    required = ("stride",)

    def _stride(self, mdef):
        stride = get_int(mdef, "stride", 2)
        if stride <= 0:
            raise CfgError(f"{mdef.where()}: stride={stride} must be positive (downsampling is not supported)")
        return stride

    def scale(self, mdef, srcs, scales):
        return _scale_mul(super().scale(mdef, srcs, scales), Fraction(1, self._stride(mdef)))

    def build(self, mdef, srcs, in_width):
        return Upsample(self._stride(mdef))


@register
class Dropout(PassThrough):
    name = "dropout"          # identity at inference, in Darknet and OpenCV


@register
class AvgPool(PassThrough):
    name = "avgpool"          # Darknet's [avgpool] is global: one mean per channel

    def scale(self, mdef, srcs, scales):
        return GLOBAL

    def build(self, mdef, srcs, in_width):
        return GlobalAvgPool()


@register
class RouteKind(Kind):
    name = "route"
    refs = ("layers",)
    reads_previous = False

    def _groups(self, mdef):
        groups, group_id = get_int(mdef, "groups", 1), get_int(mdef, "group_id", 0)
        if groups <= 0 or not 0 <= group_id < groups:
            raise CfgError(f"{mdef.where()}: group_id={group_id} must be in 0..groups-1")
        return groups, group_id

    def pjreddie_lacks(self, mdef):
        return "[route] groups=" if get_int(mdef, "groups", 1) != 1 else None

    def width(self, mdef, srcs, widths, in_channels):
        groups, _ = self._groups(mdef)
        parts = [widths[j] for j in srcs]
        if any(c % groups for c in parts):
            raise CfgError(f"{mdef.where()}: groups={groups} does not divide the routed channels {parts}")
        return sum(c // groups for c in parts)

    def scale(self, mdef, srcs, scales):
        if len({scales[j] for j in srcs}) > 1:
            raise CfgError(f"{mdef.where()}: joins layers {srcs} of different resolutions "
                           f"(strides {[str(scales[j]) for j in srcs]}); route layers of one size")
        return scales[srcs[0]]

    def build(self, mdef, srcs, in_width):
        return Route(srcs, *self._groups(mdef))

    def run(self, module, x, outputs):
        return module(outputs)

    def same_channels(self, mdef, srcs, widths):
        return len(srcs) == 1 and mdef.get("groups", 1) == 1

    def concatenates(self, mdef, srcs):
        return not self.same_channels(mdef, srcs, None)

    def freezes(self, mdef, srcs, widths):
        return False

    def constants_exact(self, mdef):
        return True

    def constants(self, mdef, module, in_consts, keep, width):
        g, gid = mdef.get("groups", 1), mdef.get("group_id", 0)
        return torch.cat([c.chunk(g)[gid] for c in in_consts])

    def out_mask(self, mdef, in_masks, keep, width):
        g, gid = mdef.get("groups", 1), mdef.get("group_id", 0)
        parts = []
        for m in in_masks:
            if g > 1 and len({int(part.sum()) for part in m.chunk(g)}) != 1:
                raise PruneError(f"{mdef.where()}: reads slice {gid} of {g} from a layer whose slices keep "
                                 f"different channel counts; the planner must keep equal counts per slice")
            parts.append(m.chunk(g)[gid])
        return torch.cat(parts)


@register
class ShortcutKind(Kind):
    name = "shortcut"
    adds_inputs = True
    refs = ("from",)
    activation = "linear"
    refused = {"weights_type": "none", "weights_normalization": "none", "alpha": 1, "beta": 0}

    def scale(self, mdef, srcs, scales):
        if scales[srcs[1]] != scales[srcs[0]]:
            raise CfgError(f"{mdef.where()}: adds layer {srcs[1]} (stride {scales[srcs[1]]}) to layer {srcs[0]} "
                           f"(stride {scales[srcs[0]]}); the resolutions must match")
        return scales[srcs[0]]

    def build(self, mdef, srcs, in_width):
        return Shortcut(srcs[1], make_activation(mdef, self.activation))

    def run(self, module, x, outputs):
        return module(x, outputs)

    def _equal(self, srcs, widths):
        return widths[srcs[0]] == widths[srcs[1]]

    def same_channels(self, mdef, srcs, widths):
        return self._equal(srcs, widths)

    def freezes(self, mdef, srcs, widths):
        return not self._equal(srcs, widths)   # a partial sum ties channel c of two different spaces

    def constants_exact(self, mdef):
        return is_linear(mdef, self.activation)

    def constants(self, mdef, module, in_consts, keep, width):
        a, b = in_consts
        n = min(len(a), len(b))
        total = a.clone()
        total[:n] += b[:n]
        return module.activation(total.view(1, -1, 1, 1)).view(-1) if total.any() else total

    def out_mask(self, mdef, in_masks, keep, width):
        a, b = in_masks
        if len(a) != len(b):
            return super().out_mask(mdef, in_masks, keep, width)
        if not torch.equal(a, b):
            raise PruneError(f"{mdef.where()}: the two inputs of this shortcut were given different "
                             f"masks; shortcut groups must share one mask (use shortcut_prune)")
        return a


@register
class Sam(Kind):
    """Spatial attention: ``from`` times the previous layer, element by element (same shapes)."""
    name = "sam"
    refs = ("from",)
    activation = "linear"

    def pjreddie_lacks(self, mdef):
        return f"[{self.name}]"

    def width(self, mdef, srcs, widths, in_channels):
        if widths[srcs[0]] != widths[srcs[1]]:
            raise CfgError(f"{mdef.where()}: multiplies layer {srcs[1]} ({widths[srcs[1]]} channels) by layer "
                           f"{srcs[0]} ({widths[srcs[0]]} channels); the widths must match")
        return widths[srcs[1]]

    def scale(self, mdef, srcs, scales):
        if scales[srcs[1]] != scales[srcs[0]]:
            raise CfgError(f"{mdef.where()}: multiplies layers {srcs} of different resolutions; they must match")
        return scales[srcs[1]]

    def build(self, mdef, srcs, in_width):
        return Multiply(srcs[1], make_activation(mdef, self.activation))

    def run(self, module, x, outputs):
        return module(x, outputs)


@register
class ScaleChannels(Sam):
    """Squeeze-excitation: ``from`` (C, H, W) times the previous layer's per-channel factor (C, 1, 1)."""
    name = "scale_channels"
    refused = {"scale_wh": 0}

    def scale(self, mdef, srcs, scales):
        if scales[srcs[0]] is not GLOBAL:
            raise CfgError(f"{mdef.where()}: the layer before must be 1x1 (an [avgpool] then 1x1 convs) "
                           f"to scale the channels of layer {srcs[1]}")
        return scales[srcs[1]]


@register
class ReorgKind(Kind):
    name = "reorg"
    refused = {"reverse": 0, "flatten": 0, "extra": 0}
    required = ("stride",)

    def _stride(self, mdef):
        stride = get_int(mdef, "stride", 2)
        if stride <= 0:
            raise CfgError(f"{mdef.where()}: stride={stride} must be positive")
        return stride

    def width(self, mdef, srcs, widths, in_channels):
        s = self._stride(mdef)
        c = super().width(mdef, srcs, widths, in_channels)
        if c % (s * s):
            raise CfgError(f"{mdef.where()}: its input has {c} channels, not a multiple of stride^2={s * s}")
        return c * s * s

    def scale(self, mdef, srcs, scales):
        return _scale_mul(super().scale(mdef, srcs, scales), self._stride(mdef))

    def build(self, mdef, srcs, in_width):
        return Reorg(self._stride(mdef))

    def constants_exact(self, mdef):
        return True

    def constants(self, mdef, module, in_consts, keep, width):
        s = module.stride
        plane = in_consts[0].view(1, -1, 1, 1).expand(1, -1, s, s)   # the smallest map it can reorganize
        return module(plane.contiguous())[0, :, 0, 0]


def check_anchor_count(mdef):
    """num= and anchors= as both references need them; returns num. Darknet sizes its anchor table
    by num (default 1): more anchors overflow it, fewer leave 0.5s; OpenCV asserts that num is
    written and that anchors holds exactly num pairs."""
    anchors = mdef.get("anchors")
    if not isinstance(anchors, list) or len(anchors) % 2:
        raise CfgError(f"{mdef.where()}: anchors= must be an even-length list of numbers")
    pairs = len(anchors) // 2
    num = mdef.get("num")
    if num is None:
        raise CfgError(f"{mdef.where()}: write num={pairs} (the number of anchor pairs) explicitly: Darknet "
                       f"defaults it to 1 and OpenCV cannot load a [{mdef['type']}] without it")
    if not isinstance(num, int) or num != pairs:
        raise CfgError(f"{mdef.where()}: num={num} but anchors= holds {pairs} pairs; Darknet and OpenCV need "
                       f"them equal: set num={pairs} or give {num} anchor pairs")
    return num


def check_yolo_anchors(mdef):
    """num=, anchors= and mask= as both references need them: a mask index >= num reads past
    Darknet's anchor table, and OpenCV cannot load a [yolo] without mask=."""
    num = check_anchor_count(mdef)
    mask = mdef.get("mask")
    if mask is None:
        raise CfgError(f"{mdef.where()}: write mask= explicitly (the anchor indices this head uses): "
                       f"OpenCV cannot load a [yolo] without it")
    mask = mask if isinstance(mask, list) else [mask]
    bad = [m for m in mask if not isinstance(m, int) or not 0 <= m < num]
    if bad:
        raise CfgError(f"{mdef.where()}: mask={','.join(map(str, mask))} selects anchors that do not exist "
                       f"({bad[0]} is not in 0..{num - 1} for num={num}); use indices below num")


@register
class Yolo(Kind):
    name = "yolo"
    is_head = True
    required = ("classes",)        # Darknet's default is 20; OpenCV has none

    def check_options(self, mdef):
        super().check_options(mdef)
        if mdef.get("new_coords", 0) not in (0, 1):
            raise CfgError(f"{mdef.where()}: new_coords={mdef['new_coords']} is not supported; use 0 or 1")
        check_yolo_anchors(mdef)

    def pjreddie_lacks(self, mdef):
        if mdef.get("scale_x_y", 1) != 1:
            return "[yolo] scale_x_y="
        return "[yolo] new_coords=" if mdef.get("new_coords", 0) else None

    @staticmethod
    def anchor_pairs(mdef):
        """Every (w, h) of the anchors= list, the ones this head uses and the others'."""
        anchors = mdef.get("anchors")
        if not isinstance(anchors, list) or len(anchors) % 2:
            raise CfgError(f"{mdef.where()}: anchors= must be an even-length list of numbers")
        return [(float(anchors[i]), float(anchors[i + 1])) for i in range(0, len(anchors), 2)]

    @classmethod
    def anchors(cls, mdef):
        """The (w, h) this head predicts with: the anchors its mask= selects (all without one)."""
        pairs = cls.anchor_pairs(mdef)
        mask = mdef.get("mask", list(range(len(pairs))))
        mask = mask if isinstance(mask, list) else [mask]
        if any(not isinstance(m, int) or not 0 <= m < len(pairs) for m in mask):
            raise CfgError(f"{mdef.where()}: mask={mdef.get('mask')} selects anchors that do not exist")
        return [pairs[m] for m in mask]

    @staticmethod
    def classes(mdef):
        """The head's class count (Darknet's default 20 when absent)."""
        return mdef.get("classes", 20)

    def pixel_anchors(self, mdef, stride):
        """The (w, h) anchor pairs in input pixels, for a head of total ``stride``: as written."""
        return self.anchor_pairs(mdef)

    def cfg_anchors(self, pixel_pairs, stride):
        """The anchors= values for (w, h) pairs in input pixels: whole pixels, as Darknet's cfgs write them."""
        return [int(round(v)) for wh in pixel_pairs for v in wh]

    def resized_anchors(self, mdef, scale):
        """anchors= for an input ``scale`` times the cfg's: anchors in pixels scale with it (kept to
        2 decimals, not whole pixels: at 64 px a 10 px anchor becomes 1.54, and 2 would be 30% off)."""
        values = [round(v * scale, 2) for wh in self.anchor_pairs(mdef) for v in wh]
        return [v if v != int(v) else int(v) for v in values]

    def _check_width(self, mdef, in_width, n_anchors):
        nc = get_int(mdef, "classes")
        if nc < 1:
            raise CfgError(f"{mdef.where()}: classes={nc} must be at least 1")
        if in_width != n_anchors * (nc + 5):
            raise CfgError(f"{mdef.where()}: the conv before this [{self.name}] has filters={in_width}, but "
                           f"{n_anchors} anchors x (classes {nc} + 5) = {n_anchors * (nc + 5)}; set filters to that")
        return nc

    def build(self, mdef, srcs, in_width):
        anchors = self.anchors(mdef)
        nc = self._check_width(mdef, in_width, len(anchors))
        return YOLOLayer(anchors, nc, get_number(mdef, "scale_x_y", 1.0), get_int(mdef, "new_coords", 0))

    def run(self, module, x, outputs):
        return x

    def constants(self, mdef, module, in_consts, keep, width):
        return in_consts[0]

    def out_mask(self, mdef, in_masks, keep, width):
        return in_masks[0]


@register
class Region(Yolo):
    """YOLOv2's head. Darknet and OpenCV compute it as a [yolo] with scale_x_y=1 whose anchors
    are in grid cells (all ``num`` of them, no mask) and whose classes go through one softmax.
    Its training options (bias_match, rescore, absolute, thresh, jitter, random, the *_scale
    weights) are Darknet's loss settings: read and kept, not used by our loss (yoloslim/train/loss.py)."""
    name = "region"
    required = ("classes", "softmax")     # Darknet defaults softmax to 0 (logistic classes), OpenCV to none
    refused = {"coords": 4, "background": 0, "tree": None, "map": None, "log": 0, "sqrt": 0, "classfix": 0,
               "mask": None, "scale_x_y": 1, "new_coords": 0}

    def check_options(self, mdef):
        if mdef.get("softmax", 1) != 1:
            raise CfgError(f"{mdef.where()}: softmax={mdef['softmax']} is not supported: Darknet then applies a "
                           f"logistic to the class scores and OpenCV nothing; set softmax=1")
        super(Yolo, self).check_options(mdef)   # Kind's checks; a region has no mask= for Yolo's to ask for
        check_anchor_count(mdef)

    def pixel_anchors(self, mdef, stride):
        return [(w * stride, h * stride) for w, h in self.anchor_pairs(mdef)]

    def cfg_anchors(self, pixel_pairs, stride):
        return [round(v / stride, 5) for wh in pixel_pairs for v in wh]

    def resized_anchors(self, mdef, scale):
        return mdef["anchors"]           # in grid cells: the same boxes relative to the image at any size

    def build(self, mdef, srcs, in_width):
        anchors = self.anchor_pairs(mdef)
        return RegionLayer(anchors, self._check_width(mdef, in_width, len(anchors)))


# sections of a Darknet classifier (darknet19, darknet53 ImageNet...): nothing here detects with them
CLASSIFIER_SECTIONS = ("softmax", "cost", "connected")


def kind_of(mdef):
    kind = KINDS.get(mdef["type"])
    if kind is None and mdef["type"] in CLASSIFIER_SECTIONS:
        raise CfgError(f"{mdef.where()}: [{mdef['type']}] is not supported (classifier cfg): yolo-slim prunes "
                       f"detection models with [yolo] or [region] heads; pass a detection cfg such as cfg/yolov3.cfg")
    if kind is None:
        raise CfgError(f"{mdef.where()}: layer type [{mdef['type']}] is not supported; "
                       f"supported: {', '.join(sorted(KINDS))}")
    return kind


def pjreddie_gaps(defs):
    """What in a parsed cfg (``[net]`` first) the original Darknet cannot run; empty when it runs it all."""
    return sorted({gap for d in defs[1:] if (gap := KINDS[d["type"]].pjreddie_lacks(d))})


def check_section(mdef):
    """Parse-time check of one layer section: a known kind, and no refused option."""
    kind_of(mdef).check_options(mdef)


def layer_sources(module_defs):
    """For each layer, the layers whose outputs it reads (the graph the pruning engine walks)."""
    return [kind_of(m).sources(m, i) for i, m in enumerate(module_defs)]


def layer_shapes(module_defs, in_channels=3):
    """(sources, widths, strides) of every layer, from the cfg alone; a stride is a Fraction of
    the input size, or GLOBAL for a 1x1 output whatever the input size."""
    sources, widths, scales = [], [], []
    for i, mdef in enumerate(module_defs):
        kind = kind_of(mdef)
        srcs = kind.sources(mdef, i)
        sources.append(srcs)
        widths.append(kind.width(mdef, srcs, widths, in_channels))
        scales.append(kind.scale(mdef, srcs, scales))
    return sources, widths, scales


def layer_strides(module_defs):
    """Downsampling factor of every layer's output (float; None for a global 1x1 output)."""
    return [None if s is GLOBAL else float(s) for s in layer_shapes(module_defs)[2]]
