"""What can be pruned, derived from ``module_defs`` alone.

Channels flow from a conv through upsample, maxpool, avgpool, single-input routes and
shortcut sums unchanged; routes concatenate them; [sam], [scale_channels], [reorg], grouped
convs and shortcuts of different widths freeze them (each kind says which, yoloslim/darknet/kinds.py).
Layers whose outputs are the same channel space (joined by ``[shortcut]``, or passed through
unchanged) are put in one *channel group* with a union-find: they must keep one channel set. No layer index appears in
this module: yolov3, -spp, -tiny, yolov4-tiny and custom cfgs are all read the same way.
"""
from dataclasses import dataclass, field

from yoloslim.darknet.kinds import kind_of, layer_shapes


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
    kinds: list = field(default_factory=list)      # the yoloslim/darknet/kinds.py kind of every layer

    def shortcut_groups(self):
        """Channel groups written by more than one conv: the convs meeting at shortcuts."""
        return [sorted(c) for c in self.groups.values() if len(c) > 1]

    def in_shortcut_group(self, conv):
        return len(self.groups[self.group_of[conv]]) > 1

    def prunable_meet_at_shortcut(self):
        """Whether any prunable convs meet at a [shortcut] (where shortcut pruning differs from normal)."""
        return any(self.in_shortcut_group(c) for c in self.prunable)


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


def analyze(module_defs, in_channels=3):
    """Build the prune Graph of a cfg's layers (``module_defs`` without ``[net]``).

    What each layer kind does to channels (keeps its input's channel space, concatenates
    slices of its inputs, or freezes them) comes from its entry in yoloslim/darknet/kinds.py.
    """
    defs = [d for d in module_defs if d["type"] not in ("net", "network")]
    n = len(defs)
    kinds = [kind_of(d) for d in defs]
    sources, widths, _ = layer_shapes(defs, in_channels)
    consumers = [[] for _ in range(n)]
    for i, srcs in enumerate(sources):
        for j in srcs:
            consumers[j].append(i)

    uf = _UnionFind(n)
    for i, (kind, mdef, srcs) in enumerate(zip(kinds, defs, sources)):
        if srcs and kind.same_channels(mdef, srcs, widths):
            for j in srcs:
                uf.union(i, j)
    convs = [i for i, k in enumerate(kinds) if k.has_weights]
    group_of = {i: uf.find(i) for i in range(n)}
    groups, members = {}, {}
    for i in range(n):
        members.setdefault(group_of[i], []).append(i)
    for c in convs:
        groups.setdefault(group_of[c], []).append(c)

    # A group is frozen when any layer in it is read by something whose channel mapping we
    # cannot edit ([yolo], a grouped conv, [sam]...). Freezing a concatenation freezes what it
    # concatenates: its mask is made of theirs.
    frozen = set()

    def freeze(layer):
        if group_of[layer] in frozen:
            return
        frozen.add(group_of[layer])
        for m in members[group_of[layer]]:
            if kinds[m].concatenates(defs[m], sources[m]):
                for j in sources[m]:
                    freeze(j)

    split_of = {c: 1 for c in convs}
    for i, (kind, mdef) in enumerate(zip(kinds, defs)):
        if kind.is_head or kind.freezes(mdef, sources[i], widths):
            for j in sources[i]:
                freeze(j)
            if not kind.is_head:
                freeze(i)
        elif kind.concatenates(mdef, sources[i]) and mdef.get("groups", 1) > 1:
            for j in sources[i]:
                for c in groups.get(group_of[j], []):
                    split_of[c] = _lcm(split_of[c], mdef["groups"])
    heads = [i for i, k in enumerate(kinds) if k.is_head]
    head_groups = {group_of[sources[h][0]] for h in heads}
    head_convs = {c for c in convs if group_of[c] in frozen and group_of[c] in head_groups}
    bn_convs = [c for c in convs if defs[c].get("batch_normalize", 0)]
    prunable = [c for c in bn_convs if group_of[c] not in frozen
                and all(defs[m].get("batch_normalize", 0) for m in groups[group_of[c]])]

    graph = Graph(defs, sources, consumers, convs, bn_convs, group_of, groups, head_convs, split_of, prunable,
                  kinds=kinds)
    graph.blocks = _residual_blocks(graph, widths)
    return graph


def constant_reaches_blocker(graph, layer):
    """True when a constant added to ``layer``'s output meets, before any conv absorbs it, a
    layer that cannot carry it exactly (a non-linear shortcut, [sam], a [yolo]...)."""
    todo, seen = list(graph.consumers[layer]), set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        kind = graph.kinds[m]
        if kind.has_weights:
            continue
        if kind.is_head or not kind.constants_exact(graph.module_defs[m]):
            return True
        todo.extend(graph.consumers[m])
    return False


def _residual_blocks(graph, widths):
    """Shortcuts that add back the input of exactly two BN convs: [in] -> conv -> conv -> (+in).

    A block is removable only when nothing else reads its inner convs (a route reading one would
    lose its source) and the constant its removal leaves behind can be compensated downstream.
    """
    blocks = []
    bn = set(graph.bn_convs)
    defs, sources, consumers = graph.module_defs, graph.sources, graph.consumers
    for i, mdef in enumerate(defs):
        if not kind_of(mdef).adds_inputs or i < 3 or mdef.get("activation", "linear") != "linear":
            continue
        first, last, source = i - 2, i - 1, sources[i][1]
        if not (first in bn and last in bn and source == i - 3 and sources[first] == [i - 3]
                and sources[last] == [first] and widths[last] == widths[source]):
            continue
        if consumers[first] != [last] or consumers[last] != [i] or constant_reaches_blocker(graph, i):
            continue
        blocks.append(ResidualBlock((first, last), i, source))
    return blocks


def _lcm(a, b):
    from math import gcd
    return a * b // gcd(a, b)


def sparsity_layers(module_defs, shortcut_groups):
    """Conv indices a policy may prune, so the ones whose BN gammas get the L1 penalty: every
    prunable conv, less those meeting at shortcuts unless the policy prunes ``shortcut_groups``."""
    graph = analyze(module_defs)
    return [c for c in graph.prunable if shortcut_groups or not graph.in_shortcut_group(c)]
