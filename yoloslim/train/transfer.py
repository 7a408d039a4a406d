"""Transfer learning the Darknet way: load every layer whose shapes match, re-initialise the rest.

Darknet fine-tunes a detector for a new class count by loading a pretrained ``.weights``
into a cfg whose [yolo]-feeding convolutions have different ``filters`` (and, with
``darknet partial``, only the layers before a cutoff). Here the source is described by a
model built from the source's own cfg, so the tensors are matched layer by layer, by index
and shape, never by a position in the float stream:

* a ``.pt`` of ours carries its cfg;
* a Darknet ``.weights`` uses ``--weights-cfg``, else the ``.cfg`` of the same name beside it,
  else the target cfg with the class count solved from the file size (a head conv has
  ``anchors * (5 + classes)`` filters, so the float count is linear in ``classes``).

Layers whose tensors all match are copied; the others keep their fresh initialisation, and a
re-initialised head gets the objectness/class prior of ``init_head_biases``.
"""
import copy
import os
from dataclasses import dataclass, field

import torch

from yoloslim.darknet.kinds import kind_of, layer_strides
from yoloslim.darknet.model import Darknet
from yoloslim.darknet.weights import load_checkpoint, read_weights_file
from yoloslim.errors import WeightsError
from yoloslim.io import is_torch_file
from yoloslim.train.loss import init_head_biases
from yoloslim.darknet.cfg import parse_cfg_text, parse_model_cfg


@dataclass
class TransferReport:
    """What happened to each layer with parameters of the target model."""
    source: str
    source_classes: int
    target_classes: int
    loaded: list = field(default_factory=list)       # layer indices copied from the source
    reinit: list = field(default_factory=list)       # layers left at their fresh init (shape mismatch)
    heads_reinit: list = field(default_factory=list)  # of those, the convs feeding a [yolo]
    cut: list = field(default_factory=list)          # layers at or past --cutoff
    frozen: list = field(default_factory=list)       # filled by the trainer
    freeze_epochs: int = 0
    no_params: tuple = ()                            # layers without tensors (maxpool, route, ...)

    def lines(self):
        """A compact, human-readable summary (index ranges, not one line per layer)."""
        out = [f"transfer from {self.source}: classes {self.source_classes} -> {self.target_classes}"]
        out.append(f"  loaded          {ranges(self.loaded, self.no_params)} ({len(self.loaded)} layers)")
        if self.reinit:
            heads = f"; [yolo]-feeding: {ranges(self.heads_reinit, self.no_params)}, biases at the prior" if self.heads_reinit else ""
            out.append(f"  re-initialised  {ranges(self.reinit, self.no_params)} (shapes differ{heads})")
        if self.cut:
            out.append(f"  not loaded      {ranges(self.cut, self.no_params)} (at or past --cutoff; fresh init)")
        if self.frozen:
            out.append(f"  frozen          {ranges(self.frozen, self.no_params)} for the first {self.freeze_epochs} epoch(s)")
        return out


def ranges(indices, bridge=()):
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'; a gap made only of ``bridge`` indices does not split a range."""
    if not indices:
        return "none"
    parts, start, prev = [], indices[0], indices[0]
    for i in list(indices[1:]) + [None]:
        if i is not None and all(j in bridge for j in range(prev + 1, i)):
            prev = i
            continue
        parts.append(f"{start}-{prev}" if prev > start else f"{start}")
        if i is not None:
            start = prev = i
    return ", ".join(parts)


def head_convs(model):
    """Index of the conv feeding each [yolo] layer (the layer just before it)."""
    return [i - 1 for i in model.yolo_layers]


def with_classes(defs, nc):
    """A copy of ``defs`` ([net] + layers) with every [yolo] set to ``nc`` classes and its conv resized."""
    defs = copy.deepcopy(list(defs))
    layers = defs[1:]
    for i, mdef in enumerate(layers):
        kind = kind_of(mdef)
        if kind.is_head:   # its input is the conv just before it
            mdef["classes"] = nc
            layers[i - 1]["filters"] = len(kind.anchors(mdef)) * (5 + nc)
    return defs


def float_count(defs):
    return Darknet.without_init(defs).darknet_float_count()


def solve_source_classes(target, n_floats):
    """The class count for which the target's topology holds exactly ``n_floats`` floats, or None."""
    base = target.all_defs
    n1, n2 = float_count(with_classes(base, 1)), float_count(with_classes(base, 2))
    step = n2 - n1
    if step <= 0 or n_floats < n1 or (n_floats - n1) % step:
        return None
    return 1 + (n_floats - n1) // step


def source_model(path, target, weights_cfg=None):
    """The pretrained model, built from its own cfg and loaded in full."""
    if is_torch_file(path):
        ckpt = load_checkpoint(path)
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("cfg"), str):
            raise WeightsError(f"{path}: has no cfg inside, so its layers cannot be matched; "
                               f"use a checkpoint written by train.py")
        return Darknet.without_init(parse_cfg_text(ckpt["cfg"], path)).load_checkpoint_state(ckpt, path)
    beside = os.path.splitext(str(path))[0] + ".cfg"
    cfg = weights_cfg or (beside if os.path.isfile(beside) else None)
    if cfg:
        return Darknet.without_init(parse_model_cfg(cfg)).load_darknet_weights(path)
    _, _, data = read_weights_file(path)
    nc = solve_source_classes(target, data.size)
    if nc is None:
        raise WeightsError(f"{path}: {data.size} floats fit no class count of the target cfg's topology; "
                           f"put the cfg it was trained with beside it as "
                           f"{os.path.basename(beside)} or pass --weights-cfg")
    return Darknet.without_init(with_classes(target.all_defs, nc)).load_darknet_weights(path)


def describe(module):
    conv = getattr(module, "Conv2d", None)
    return f"conv {tuple(conv.weight.shape)}" if conv is not None else type(module).__name__


def same_shapes(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)


@torch.no_grad()
def load_partial(model, path, cutoff=None, weights_cfg=None, img_size=None, prior=True):
    """Copy every matching layer of the pretrained ``path`` into ``model``; returns a TransferReport.

    Layers at index >= ``cutoff`` are not loaded. Re-initialised [yolo]-feeding convs get the
    head-bias prior for ``img_size`` (default: the model's input width) unless ``prior`` is false.
    """
    src = source_model(path, model, weights_cfg)
    report = TransferReport(str(path), src.nc, model.nc)
    report.no_params = tuple(i for i, m in enumerate(model.module_list) if not any(True for _ in m.parameters()))
    heads = set(head_convs(model))
    stop = len(model.module_defs) if cutoff is None else cutoff
    for i, (mdef, module) in enumerate(zip(model.module_defs, model.module_list)):
        if not any(True for _ in module.parameters()):
            continue
        if i >= stop:
            report.cut.append(i)
            continue
        other = (src.module_list[i] if i < len(src.module_defs) and src.module_defs[i]["type"] == mdef["type"]
                 else None)
        if other is not None and same_shapes(module, other):
            # running stats and weights only: a .weights file has no BN step counter
            state = {k: v for k, v in other.state_dict().items() if not k.endswith("num_batches_tracked")}
            module.load_state_dict(state, strict=False)
            report.loaded.append(i)
        elif i in heads:
            report.reinit.append(i)
            report.heads_reinit.append(i)
        else:   # only heads may change shape: anything else means another network or a wrong cfg
            hint = (f"pass --cutoff {i} to load only the layers before it" if report.loaded
                    else "these weights belong to another network")
            raise WeightsError(f"{path}: layer {i} ({mdef['type']}) does not match the target cfg "
                               f"({describe(module)} here, {describe(other) if other is not None else 'absent'} "
                               f"there); {hint}")
    model.version, model.seen = src.version, src.seen
    fresh_heads = [i for i in head_convs(model) if i in report.heads_reinit or i in report.cut]
    if prior:
        prior_for_heads(model, fresh_heads, img_size or int(model.img_size[1]))
    return report


def prior_for_heads(model, conv_indices, img_size):
    """The objectness/class prior on the given head convs only (the others keep trained biases)."""
    kept = {i: model.conv(i).bias.detach().clone() for i in head_convs(model)
            if i not in conv_indices}
    if not conv_indices:
        return
    init_head_biases(model, img_size)   # adds the prior to every head ...
    with torch.no_grad():
        for i, bias in kept.items():    # ... so the loaded heads get their trained biases back
            model.conv(i).bias.copy_(bias)


def keep_frozen_bn_eval(model, n):
    """Frozen layers also keep their BN running statistics (call after ``model.train()``)."""
    for module in model.module_list[:n]:
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()


def cfg_for_data(src_cfg, nc, anchors=None, img_size=None):
    """``src_cfg``'s defs ([net] + layers) for a data set of ``nc`` classes, optionally with new anchors.

    The head-feeding convs get ``len(mask) * (5 + nc)`` filters; ``anchors`` (k, 2, in input pixels)
    replaces every head's anchor list (a [yolo]'s masks stay; a [region] writes them in grid
    cells of its stride); ``img_size`` sets [net] width/height.
    """
    defs = with_classes(parse_model_cfg(src_cfg), nc)
    strides = layer_strides(defs[1:])
    for mdef, stride in zip(defs[1:], strides):
        kind = kind_of(mdef)
        if kind.is_head and anchors is not None:
            if len(anchors) * 2 != len(mdef["anchors"]):
                raise WeightsError(f"{src_cfg}: [{mdef['type']}] has {len(mdef['anchors']) // 2} anchors, "
                                   f"not {len(anchors)}")
            mdef["anchors"] = kind.cfg_anchors(anchors, stride)
    if img_size:
        defs[0]["width"] = defs[0]["height"] = int(img_size)
    return defs
