"""What can be pruned, derived from ``module_defs`` alone.

Channels flow from a conv through upsample, maxpool, single-input routes and shortcut
sums unchanged; routes concatenate them. Layers whose outputs are the same channel
space (joined by ``[shortcut]``, or passed through unchanged) are put in one *channel
group* with a union-find: they must keep one channel set. No layer index appears in
this module: yolov3, -spp, -tiny, yolov4-tiny and custom cfgs are all read the same way.
"""
from dataclasses import dataclass, field

from models import layer_sources


@dataclass
class ResidualBlock:
    """conv, conv, [shortcut] from=-3: removable as a whole (layer pruning)."""
    convs: tuple          # (first conv, last conv)
    shortcut: int
    input: int            # layer whose output the shortcut adds back


@dataclass
class Graph:
    module_defs: list
    sources: list                       # sources[i]: layers layer i reads
    consumers: list                     # consumers[i]: layers reading layer i
    convs: list                         # every [convolutional] index
    bn_convs: list                      # convs with batch_normalize=1
    group_of: dict                      # layer -> representative of its channel group
    groups: dict                        # representative -> convs writing that channel space
    head_convs: set                     # convs whose output reaches a [yolo] unchanged
    split_of: dict                      # conv -> channel split a grouped route imposes (1 = none)
    prunable: list = field(default_factory=list)   # convs whose output channels may be removed
    blocks: list = field(default_factory=list)     # removable residual blocks

    def shortcut_groups(self):
        """Channel groups written by more than one conv: the convs meeting at shortcuts."""
        return [sorted(c) for c in self.groups.values() if len(c) > 1]

    def in_shortcut_group(self, conv):
        return len(self.groups[self.group_of[conv]]) > 1


class _UnionFind:
    def __init__(self, n):
        self.parent = list(range(n))

    def find(self, i):
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a, b):
        self.parent[self.find(a)] = self.find(b)


def _passes_channels_through(mdef, srcs):
    """True when a layer's output is its (single) input's channel space, unchanged in order."""
    kind = mdef["type"]
    if kind in ("upsample", "maxpool", "dropout", "shortcut"):
        return True
    return kind == "route" and len(srcs) == 1 and mdef.get("groups", 1) == 1


def analyze(module_defs):
    """Build the prune Graph of a cfg's layers (``module_defs`` without ``[net]``)."""
    defs = [d for d in module_defs if d["type"] not in ("net", "network")]
    n = len(defs)
    sources = layer_sources(defs)
    consumers = [[] for _ in range(n)]
    for i, srcs in enumerate(sources):
        for j in srcs:
            consumers[j].append(i)

    uf = _UnionFind(n)
    for i, (mdef, srcs) in enumerate(zip(defs, sources)):
        if i > 0 and _passes_channels_through(mdef, srcs):
            for j in srcs:
                uf.union(i, j)
    convs = [i for i, d in enumerate(defs) if d["type"] == "convolutional"]
    group_of = {i: uf.find(i) for i in range(n)}
    groups = {}
    for c in convs:
        groups.setdefault(group_of[c], []).append(c)

    # A group is frozen when any layer in it is read by something whose channel mapping
    # we cannot edit: a [yolo] layer, or a grouped conv (depthwise) that couples in and out.
    frozen = set()
    split_of = {c: 1 for c in convs}
    for i, mdef in enumerate(defs):
        if mdef["type"] == "yolo":
            frozen.add(group_of[i - 1])
        elif mdef["type"] == "convolutional" and mdef.get("groups", 1) > 1 and i > 0:
            frozen.add(group_of[i - 1])
            frozen.add(group_of[i])
        elif mdef["type"] == "route" and mdef.get("groups", 1) > 1:
            for j in sources[i]:
                for c in groups.get(group_of[j], []):
                    split_of[c] = _lcm(split_of[c], mdef["groups"])
    head_convs = {c for c in convs if group_of[c] in frozen and _feeds_yolo(c, defs, group_of)}
    bn_convs = [c for c in convs if defs[c].get("batch_normalize", 0)]
    prunable = [c for c in bn_convs if group_of[c] not in frozen
                and all(defs[m].get("batch_normalize", 0) for m in groups[group_of[c]])]

    graph = Graph(defs, sources, consumers, convs, bn_convs, group_of, groups, head_convs, split_of, prunable)
    graph.blocks = _residual_blocks(defs, sources, bn_convs)
    return graph


def _feeds_yolo(conv, defs, group_of):
    return any(d["type"] == "yolo" and group_of[i - 1] == group_of[conv] for i, d in enumerate(defs))


def _residual_blocks(defs, sources, bn_convs):
    """Shortcuts that add back the input of exactly two BN convs: [in] -> conv -> conv -> (+in)."""
    blocks = []
    bn = set(bn_convs)
    for i, mdef in enumerate(defs):
        if mdef["type"] != "shortcut" or i < 3 or mdef.get("activation", "linear") != "linear":
            continue
        first, last, source = i - 2, i - 1, sources[i][1]
        if first in bn and last in bn and source == i - 3 and sources[first] == [i - 3] and sources[last] == [first]:
            blocks.append(ResidualBlock((first, last), i, source))
    return blocks


def _lcm(a, b):
    from math import gcd
    return a * b // gcd(a, b)


# Sparsity-training modes, as earlier toolkits number them (train.py --prune N).
SPARSITY_MODES = {0: "normal", 1: "shortcut", 2: "tiny"}


def sparsity_layers(module_defs, mode):
    """Conv indices whose BN gammas get the L1 penalty for a given ``--prune`` mode.

    0 (normal): prunable convs outside shortcut groups, the ones normal_prune will cut;
    1 (shortcut): every prunable conv, shortcut groups included;
    2 (tiny): every prunable conv (tiny models have no shortcuts, so this equals 1).
    """
    graph = analyze(module_defs)
    if mode == 0:
        return [c for c in graph.prunable if not graph.in_shortcut_group(c)]
    if mode in (1, 2):
        return list(graph.prunable)
    raise ValueError(f"unknown sparsity mode {mode}; use 0 (normal), 1 (shortcut) or 2 (tiny)")
