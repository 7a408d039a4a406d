"""The pruning engine: plan masks, compensate, build the compact model, write Darknet files.

Every front end (normal, regular, shortcut, tiny, layer+channel) is a ``Policy`` handed
to the same three steps:

    graph = analyze(model.module_defs)          # yoloslim/prune/graph.py
    plan = plan_channels(model, graph, policy, percent)   (and/or plan_layers)
    compact = build_compact(model, graph, plan) # compensation + surgery
    write_pruned(compact, out_dir, name)

Compensation: once a channel's gamma is zero its output is the constant ``act(beta)``.
``propagate_constants`` follows those constants through each layer kind (shortcut sums,
route concatenation, upsample, maxpool...: yoloslim/darknet/kinds.py) to every conv that reads them,
and folds them into that conv's BN running mean (or its bias when it has no BN). The compact model then
equals the original with the pruned gammas set to zero, except where zero padding at the
image border sees the missing constant.
"""
import copy
import math
import os
from dataclasses import dataclass, field

import torch

from yoloslim.darknet.bn_readers import DEFAULT_READER
from yoloslim.darknet.model import Darknet
from yoloslim.darknet.weights import header_size
from yoloslim.errors import PruneError
from yoloslim.darknet.cfg import write_model_cfg
from yoloslim.prune.graph import analyze

# ----------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class BNImportance:
    """|gamma|, ranked against one global threshold over every unit (network slimming)."""
    name = "bn"
    global_threshold = True

    def __call__(self, model, conv):
        return model.gamma(conv).detach().abs()


@dataclass(frozen=True)
class L1Importance:
    """Each filter's L1 norm, the same share removed within each layer (Li et al.'s criterion)."""
    name = "l1"
    global_threshold = False

    def __call__(self, model, conv):
        return model.conv(conv).weight.detach().abs().sum(dim=(1, 2, 3))


@dataclass(frozen=True)
class KeepCount:
    """No rounding: a layer keeps the channels its importance earns."""
    def __call__(self, n):
        return n

    def hint(self, policy_name):
        """What to change when the plan removes too little."""
        return "lower --layer-keep or raise --percent"


@dataclass(frozen=True)
class PowerOfTwo:
    """Kept counts rounded up to 2^n (at least 8), the counts some runtimes run fastest."""
    def __call__(self, n):
        return 1 << max(3, math.ceil(math.log2(max(n, 1))))

    def hint(self, policy_name):
        return (f"the {policy_name} rounding keeps a layer whole until it can drop to the next power of two "
                f"(more than half its channels below the threshold); raise --percent or round to --multiple 8")


@dataclass(frozen=True)
class Multiple:
    """Kept counts rounded up to a multiple of ``k`` (blocked kernels run multiples of 8 faster)."""
    k: int = 8

    def __call__(self, n):
        return self.k * math.ceil(max(n, 1) / self.k)

    def hint(self, policy_name):
        return f"the {policy_name} rounding to a multiple of {self.k} keeps small layers whole; raise --percent"


@dataclass
class Policy:
    """How a pruning method chooses channels: which units, how they are ranked and rounded."""
    name: str
    shortcut_groups: bool = False      # prune convs meeting at shortcuts, with one shared mask
    rounding: object = KeepCount()     # kept count -> rounded kept count
    importance: object = BNImportance()   # (model, conv) -> per-channel scores


POLICIES = {
    "normal": Policy("normal"),
    "tiny": Policy("tiny"),
    "regular-pow2": Policy("regular-pow2", rounding=PowerOfTwo()),
    "regular-x8": Policy("regular-x8", rounding=Multiple(8)),
    "shortcut": Policy("shortcut", shortcut_groups=True),
    "l1": Policy("l1", importance=L1Importance()),
}


@dataclass
class Unit:
    """Convs that keep one channel set (one conv, or every conv of a shortcut group)."""
    convs: list
    width: int
    split: int = 1                     # a grouped route reads equal slices: keep equal counts in each


@dataclass
class PrunePlan:
    """The decision: kept output channels per conv, and residual blocks to remove."""
    masks: dict = field(default_factory=dict)          # conv index -> bool tensor (True = keep)
    removed_blocks: list = field(default_factory=list)  # ResidualBlock
    threshold: float = None
    safe_percent: float = None
    policy: str = ""

    def removed_layers(self):
        return {i for b in self.removed_blocks for i in (*b.convs, b.shortcut)}

    def pruned_channels(self):
        return sum(int((~m).sum()) for m in self.masks.values())


# ----------------------------------------------------------------------------- planning


def make_units(model, graph, policy):
    """Prunable units for a policy; normal-style policies leave shortcut groups whole."""
    units, seen = [], set()
    for conv in graph.prunable:
        group = graph.groups[graph.group_of[conv]]
        if graph.in_shortcut_group(conv) and not policy.shortcut_groups:
            continue
        members = sorted(group) if policy.shortcut_groups else [conv]
        if members[0] in seen:
            continue
        seen.update(members)
        width = model.conv(conv).out_channels
        units.append(Unit(members, width, max(graph.split_of[c] for c in members)))
    if not units:
        raise PruneError(f"{model.cfg_path or 'the cfg'}: no prunable layers for the '{policy.name}' method "
                         f"(every conv feeds a [yolo] head{' or a shortcut' if not policy.shortcut_groups else ''})")
    return units


def unit_scores(model, unit, importance):
    """Per-channel importance of a unit: the max over its convs, so a shared channel is kept
    if any conv writing into that residual stream still needs it (the union of their masks)."""
    return torch.stack([importance(model, c) for c in unit.convs]).amax(0).float()


def round_count(n, width, policy):
    """Kept count after the policy's rounding, never above the layer width."""
    return min(policy.rounding(n), width)


def top_k_mask(scores, k, split=1):
    """Keep the k strongest channels; with split > 1, the k/split strongest of each slice."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    per = scores.numel() // split
    k_each = math.ceil(k / split)
    for s in range(split):
        part = scores[s * per:(s + 1) * per]
        mask[s * per + torch.topk(part, k_each).indices] = True
    return mask


def safe_limit(scores_by_unit):
    """(threshold, percent) beyond which some unit would lose every channel."""
    all_scores = torch.cat(list(scores_by_unit))
    highest_safe = min(float(s.max()) for s in scores_by_unit)
    return highest_safe, float((all_scores < highest_safe).float().mean())


def plan_channels(model, graph, policy, percent, layer_keep=None):
    """Choose kept channels for every unit of ``policy`` at ``percent`` of prunable channels.

    BN importance: one global threshold at the ``percent`` quantile of |gamma| over all
    units (network slimming). L1 importance: the same ``percent`` within each layer.
    ``layer_keep`` (fraction, 0..1) guarantees each unit that share of its strongest
    channels; without it a percent past the safe limit is refused.
    """
    if not 0 < percent < 1:
        raise PruneError(f"--percent {percent} is outside (0, 1); pass a fraction such as 0.5")
    if layer_keep is not None and not 0 < layer_keep <= 1:
        raise PruneError(f"--layer-keep {layer_keep} is outside (0, 1]; pass a fraction such as 0.1")
    units = make_units(model, graph, policy)
    scores = [unit_scores(model, u, policy.importance) for u in units]
    safe_thr, safe_pct = safe_limit(scores)
    plan = PrunePlan(policy=policy.name, safe_percent=safe_pct)

    if policy.importance.global_threshold:
        ordered = torch.sort(torch.cat(scores)).values
        plan.threshold = float(ordered[min(int(len(ordered) * percent), len(ordered) - 1)])
        if plan.threshold > safe_thr and layer_keep is None:
            raise PruneError(
                f"--percent {percent:.3f} would remove every channel of some layer (threshold "
                f"{plan.threshold:.4g} > smallest per-layer max |gamma| {safe_thr:.4g}); the safe limit is "
                f"--percent {safe_pct:.3f}, or pass --layer-keep 0.1 to keep each layer's strongest channels")
    for unit, s in zip(units, scores):
        if policy.importance.global_threshold:
            n_keep = int((s >= plan.threshold).sum())
        else:
            n_keep = unit.width - int(unit.width * percent)
        if layer_keep is not None:
            n_keep = max(n_keep, math.ceil(layer_keep * unit.width))
        n_keep = max(n_keep, 1)
        n_keep = round_count(n_keep, unit.width, policy)
        n_keep = min(unit.width, unit.split * math.ceil(n_keep / unit.split))
        mask = top_k_mask(s, n_keep, unit.split)
        for c in unit.convs:
            plan.masks[c] = mask.clone()
    return plan


def unit_key(unit):
    """How a plan names a unit: its first conv's layer index."""
    return unit.convs[0]


def plan_kept(model, graph, policy, kept):
    """Masks for chosen kept counts (``{unit_key: count}``, units left out keep every channel),
    each unit keeping its strongest channels by the policy's importance. How the counts were
    chosen (yoloslim/prune/latency_plan.py) is none of the surgery's business."""
    units = make_units(model, graph, policy)
    known = {unit_key(u) for u in units}
    stray = sorted(set(kept) - known)
    if stray:
        raise PruneError(f"kept counts name layers {stray} that are not prunable units of the '{policy.name}' policy")
    plan = PrunePlan(policy=policy.name)
    for unit in units:
        n_keep = kept.get(unit_key(unit), unit.width)
        if not 0 < n_keep <= unit.width or n_keep % unit.split:
            raise PruneError(f"layer {unit_key(unit)}: cannot keep {n_keep} of {unit.width} channels "
                             f"(positive, a multiple of its route split {unit.split})")
        mask = top_k_mask(unit_scores(model, unit, policy.importance), n_keep, unit.split)
        for c in unit.convs:
            plan.masks[c] = mask.clone()
    return plan


def plan_layers(model, graph, n_blocks):
    """Remove the ``n_blocks`` residual blocks whose last BN has the smallest mean |gamma|."""
    blocks = graph.blocks
    if not blocks:
        raise PruneError(f"{model.cfg_path or 'the cfg'}: has no residual blocks (conv, conv, shortcut) to remove")
    if not 0 < n_blocks <= len(blocks):
        raise PruneError(f"--layers {n_blocks}: choose between 1 and {len(blocks)} (the residual blocks in this cfg)")
    strength = [float(model.gamma(b.convs[1]).detach().abs().mean()) for b in blocks]
    order = sorted(range(len(blocks)), key=lambda k: strength[k])
    return PrunePlan(removed_blocks=sorted((blocks[k] for k in order[:n_blocks]), key=lambda b: b.shortcut),
                     policy=f"layer({n_blocks})")


# ----------------------------------------------------------------------------- surgery


def _stand_in(layer, removed_shortcut_input):
    """The layer whose output replaces a removed shortcut's (its block's input), transitively."""
    while layer in removed_shortcut_input:
        layer = removed_shortcut_input[layer]
    return layer


def _removed_block_constant(model, consts, block):
    """A removed block leaves its input plus its last conv's constant output ``act(beta)``."""
    beta = model.beta(block.convs[1]).detach().float().view(1, -1, 1, 1)
    act = getattr(model.module_list[block.convs[1]], "activation", torch.nn.Identity())
    return consts[block.input] + act(beta).view(-1)


def propagate_constants(model, graph, plan):
    """Per layer, the constant each output channel lacks in the compact model.

    Pruned channels contribute ``act(beta)``; a removed residual block contributes its last
    conv's ``act(beta)`` to the stream it was added to. Each layer kind says what its input
    constants become at its output (yoloslim/darknet/kinds.py).
    """
    removed = plan.removed_layers()
    block_of_shortcut = {b.shortcut: b for b in plan.removed_blocks}
    consts = [None] * len(graph.module_defs)
    with torch.no_grad():
        for i, (kind, mdef) in enumerate(zip(graph.kinds, graph.module_defs)):
            if i in block_of_shortcut:
                consts[i] = _removed_block_constant(model, consts, block_of_shortcut[i])
                continue
            keep = plan.masks.get(i) if i not in removed else None
            in_consts = [consts[j] for j in graph.sources[i]]
            consts[i] = kind.constants(mdef, model.module_list[i], in_consts, keep, model.out_channels[i])
    return consts


def output_masks(model, graph, plan):
    """Per layer, which of its original output channels the compact model keeps."""
    removed_input = {b.shortcut: b.input for b in plan.removed_blocks}
    masks = [None] * len(graph.module_defs)
    for i, (kind, mdef) in enumerate(zip(graph.kinds, graph.module_defs)):
        if i in removed_input:
            masks[i] = masks[_stand_in(i, removed_input)]
            continue
        in_masks = [masks[j] for j in graph.sources[i]]
        masks[i] = kind.out_mask(mdef, in_masks, plan.masks.get(i), model.out_channels[i])
    return masks


def compact_module_defs(model, graph, plan, out_masks):
    """Edited copy of [net] + layers: new ``filters=``, removed blocks gone, references renumbered."""
    removed = plan.removed_layers()
    removed_input = {b.shortcut: b.input for b in plan.removed_blocks}
    new_index, n = {}, 0
    for i in range(len(graph.module_defs)):
        if i not in removed:
            new_index[i] = n
            n += 1

    def renumber(ref, i, relative):
        target = new_index[_stand_in(ref, removed_input)]
        return target - new_index[i] if relative else target

    defs = [copy.deepcopy(model.hyperparams)]
    for i, (kind, mdef) in enumerate(zip(graph.kinds, graph.module_defs)):
        if i in removed:
            continue
        d = copy.deepcopy(mdef)
        if kind.has_weights:
            d["filters"] = int(out_masks[i].sum())
        refs = graph.sources[i][1:] if kind.reads_previous else graph.sources[i]
        for key in kind.refs:
            raw = d[key] if isinstance(d[key], list) else [d[key]]
            targets, refs = refs[:len(raw)], refs[len(raw):]
            new = [renumber(j, i, r < 0) for j, r in zip(targets, raw)]
            d[key] = new if isinstance(d[key], list) else new[0]
        defs.append(d)
    return defs


def build_compact(model, plan, graph=None, compensate=True):
    """The pruned model: compensated, with weights copied by mask. ``model`` is not modified.

    ``compensate=False`` drops the pruned channels' constants instead of folding them into
    their consumers (what a naive pruner does); it exists to measure what compensation buys.
    """
    graph = graph or analyze(model.module_defs, model.in_channels)
    removed = plan.removed_layers()
    consts = propagate_constants(model, graph, plan)
    if not compensate:
        consts = [torch.zeros_like(c) for c in consts]
    masks = output_masks(model, graph, plan)
    defs = compact_module_defs(model, graph, plan, masks)
    compact = Darknet.without_init(defs, model.img_size)
    compact.cfg_path = None
    compact.version, compact.seen = model.version.copy(), model.seen

    compact_convs = iter(i for i, k in enumerate(compact.kinds) if k.has_weights)
    with torch.no_grad():
        for i, kind in enumerate(graph.kinds):
            if not kind.has_weights or i in removed:
                continue
            src_seq = model.module_list[i]
            dst_seq = compact.module_list[next(compact_convs)]
            srcs = graph.sources[i]
            in_m = masks[srcs[0]] if srcs else torch.ones(model.in_channels, dtype=torch.bool)
            in_const = consts[srcs[0]] if srcs else None
            kind.copy_compact(src_seq, dst_seq, in_m, masks[i], in_const)
    return compact.train(model.training)


def zeroed_reference(model, plan):
    """The original model with every pruned gamma set to 0: what the compact model must equal."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for conv, keep in plan.masks.items():
            ref.gamma(conv)[~keep] = 0
        for block in plan.removed_blocks:
            ref.gamma(block.convs[1]).zero_()
    return ref


def prune(model, policy, percent=None, layer_keep=None, n_blocks=0, graph=None, kept=None):
    """One call for the front ends: optional layer removal, then channel pruning unless
    ``percent`` is None. ``graph``: ``model``'s analysis when the caller has it already.
    ``kept``: chosen kept counts per unit (``{unit_key: count}``, of the model after any layer
    removal) in place of a ratio, as the budget planner hands them over; same surgery.

    Returns (compact model, list of plans applied in order).
    """
    plans, current = [], model
    graph = graph or analyze(model.module_defs, model.in_channels)
    if n_blocks:
        plan = plan_layers(current, graph, n_blocks)
        current = build_compact(current, plan)
        plans.append(plan)
        graph = analyze(current.module_defs, current.in_channels)   # the graph with the blocks gone
    if percent is not None and kept is not None:
        raise PruneError("pass a ratio or kept counts, not both")
    if percent is not None or kept is not None:
        plan = (plan_channels(current, graph, policy, percent, layer_keep) if kept is None
                else plan_kept(current, graph, policy, kept))
        current = build_compact(current, plan, graph)
        plans.append(plan)
    return current, plans


def write_pruned(compact, folder, name, reader=DEFAULT_READER):
    """Write ``name.cfg`` and ``name.weights`` (for ``reader``, yoloslim/darknet/bn_readers.py) into ``folder``;
    check the byte count on the way."""
    cfg_path = os.path.join(folder, f"{name}.cfg")
    weights_path = os.path.join(folder, f"{name}.weights")
    write_model_cfg(compact.all_defs, cfg_path)
    compact.save_darknet_weights(weights_path, reader=reader)
    expected = header_size(*compact.version[:2]) + 4 * compact.darknet_float_count()
    if os.path.getsize(weights_path) != expected:
        raise PruneError(f"{weights_path}: wrote {os.path.getsize(weights_path)} bytes, expected {expected}")
    compact.cfg_path = cfg_path
    return cfg_path, weights_path
