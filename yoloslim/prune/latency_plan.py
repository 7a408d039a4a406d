"""Pruning to a budget: kept channels chosen where removal pays on the runtime, not by |gamma| alone.

    compact, plans, report = plan_to_budget(model, POLICIES["shortcut"], "onnxruntime", 416, 2, target_ms=40)

A ratio prunes every layer by one |gamma| threshold, whatever a channel costs. Here each unit
(a conv, or a shortcut group with its shared mask) is a ladder of kept counts: its width, then
each count the runtime runs well (multiples of 8 for the blocked kernels of ONNX Runtime and
OpenVINO, any count in OpenCV) or the policy's rounding allows, down to ``layer_keep``. Greedy
steps go down one rung of the unit whose step removes the least importance (the policy's, BN
|gamma| by default: the weakest channels of the unit go first) per millisecond saved, until the
predicted latency (yoloslim/deploy/layer_latency.py) meets the budget. The steps only take
channels under one importance threshold, the lowest at which the budget can be met (bisection):
importance is not comparable across layers, so a plan never removes a channel that a ratio's
global threshold would keep at the same predicted ms (up to the runtime's rounding), and among the
ones it would, it removes those whose ms pay. A FLOPs or parameter budget is the same search with those counts as the cost.

The plan is a set of kept counts handed to the engine (``prune(..., kept=)``): the same masks by
importance, the same compensation and surgery as every other policy. Which convs are prunable,
which share a mask, and the equal slices of grouped routes all come from the graph.
"""
import math
from dataclasses import dataclass, field

import torch

from yoloslim.deploy.layer_latency import LatencyCache, RuntimeTimer, build_tables, conv_shapes, grid_counts
from yoloslim.deploy.measure import count_flops, count_params
from yoloslim.errors import PruneError
from yoloslim.prune.engine import KeepCount, PrunePlan, make_units, output_masks, prune, unit_key, unit_scores
from yoloslim.prune.graph import analyze

# the kept-count step each runtime runs fast (the per-layer profiles: blocked kernels in
# ONNX Runtime and OpenVINO run multiples of 8 10-30 % faster per FLOP; OpenCV shows no such step)
RUNTIME_MULTIPLE = {"onnxruntime": 8, "openvino": 8, "torch": 8, "opencv": 1}
BUDGETS = ("ms", "flops", "params")


class BudgetUnreachable(PruneError):
    """A budget no plan reaches by the planner's own costs, even with every prunable unit at its
    floor: ``floor`` and ``original`` are the predicted values of the floor plan and of the model."""

    def __init__(self, message, budget, goal, floor, original):
        super().__init__(message)
        self.budget, self.goal, self.floor, self.original = budget, goal, floor, original


@dataclass
class BudgetReport:
    """What the planner predicted for the plan it chose (predictions; the calibration adds one measurement)."""
    predicted_ms: float          # None without a latency budget
    original_ms: float           # the unpruned model, predicted by the same tables
    target: dict                 # {"ms"|"flops"|"params": the absolute goal}
    removed_importance: float    # sum of the removed channels' importance
    total_importance: float
    predicted: dict = field(default_factory=dict)    # budget -> predicted value after pruning
    original: dict = field(default_factory=dict)     # budget -> value before
    kept: dict = field(default_factory=dict)         # unit key -> kept count
    runtime: str = None
    threads: int = None
    img_size: tuple = None
    multiple: int = 1
    steps: int = 0
    measured_points: int = 0     # table points measured in this run (0: all cached)
    measured_layers: int = 0     # of them, layer grid points (0: only the whole-model calibration, if any)
    threshold: float = None      # only channels of lower importance were candidates (None: any)
    original_timed_ms: float = None   # the unpruned model as timed by the calibration (None: not timed)

    def lines(self):
        rows = []
        for b, goal in self.target.items():
            unit = " ms" if b == "ms" else ""
            rows.append(f"plan {b}: {_fmt(self.original[b], b)}{unit} -> predicted {_fmt(self.predicted[b], b)}{unit} "
                        f"(target {_fmt(goal, b)}{unit})")
        share = self.removed_importance / self.total_importance if self.total_importance else 0.0
        bound = (f" (only channels under importance {self.threshold:.3g}, the lowest threshold that meets it)"
                 if self.threshold is not None else "")
        rows.append(f"planner: {self.steps} steps of {self.multiple} channel(s); removed {share:.1%} of the "
                    f"prunable importance{bound}")
        return rows

    def as_dict(self):
        return {k: v for k, v in vars(self).items() if k != "kept"} | {"kept": {str(k): v for k, v in self.kept.items()}}


def _fmt(value, budget):
    if budget == "ms":
        return f"{value:.2f}" if value >= 0.01 else f"{value:.3g}"     # a sub-0.01 target is not 0.00
    return f"{value:,.0f}" if budget == "params" else f"{value / 1e9:.3f}G"


# ----------------------------------------------------------------------------- what a count changes
@dataclass
class Rung:
    """A unit's kept-count ladder and the importance each rung keeps."""
    unit: object
    counts: list          # allowed kept counts, descending (counts[0] = width)
    kept_score: list      # importance kept at each count
    pos: int = 0

    @property
    def count(self):
        return self.counts[self.pos]

    def next_count(self):
        return self.counts[self.pos + 1] if self.pos + 1 < len(self.counts) else None


def ladder(unit, scores, policy, multiple, layer_keep):
    """Allowed kept counts of ``unit`` (descending) with the importance kept at each."""
    width, split = unit.width, unit.split
    floor = max(1, math.ceil((layer_keep or 0) * width))
    step = multiple if isinstance(policy.rounding, KeepCount) else 1
    allowed = {min(width, policy.rounding(n)) for n in range(1, width + 1)}
    allowed = {n for n in allowed if n % step == 0 and n % split == 0 and n >= floor} | {width}
    counts = sorted(allowed, reverse=True)
    per = width // split
    sorted_slices = [torch.sort(scores[s * per:(s + 1) * per], descending=True).values.cumsum(0) for s in range(split)]
    kept = [float(sum(c[n // split - 1] for c in sorted_slices)) for n in counts]
    return Rung(unit, counts, kept)


def width_model(model, graph, units):
    """(base, coeff): each conv's full input width, and how many input channels it loses per
    channel a unit removes ({conv: {unit index: coefficient}}). Channel counts flow linearly
    (routes add, grouped routes take a slice), so one removal per unit finds every coefficient."""
    convs = [c for c in graph.convs]

    def in_widths(masks):
        out = output_masks(model, graph, PrunePlan(masks=masks))
        return {c: (int(out[graph.sources[c][0]].sum()) if graph.sources[c] else model.in_channels) for c in convs}

    base = in_widths({})
    coeff = {c: {} for c in convs}
    for k, unit in enumerate(units):
        mask = torch.ones(unit.width, dtype=torch.bool)
        per = unit.width // unit.split
        mask[[s * per for s in range(unit.split)]] = False
        reduced = in_widths({c: mask for c in unit.convs})
        for c in convs:
            if reduced[c] != base[c]:
                coeff[c][k] = (base[c] - reduced[c]) / unit.split
    return base, coeff


# ----------------------------------------------------------------------------- the planner
class BudgetPlanner:
    """Costs of any kept counts of ``model``'s units under ``policy``, and the greedy search.

    ``tables``: LatencyTables of the model (needed for a latency budget or prediction only).
    """

    def __init__(self, model, policy, graph=None, layer_keep=0.05, multiple=1, img_size=None, tables=None):
        self.model, self.policy, self.tables = model, policy, tables
        self.graph = graph or analyze(model.module_defs, model.in_channels)
        self.units = make_units(model, self.graph, policy)
        self.scores = [unit_scores(model, u, policy.importance) for u in self.units]
        self.ladders = [ladder(u, s, policy, multiple, layer_keep) for u, s in zip(self.units, self.scores)]
        self.rungs = self.ladders
        self.multiple = multiple
        self.shapes = conv_shapes(model, img_size)
        self.base_in, self.coeff = width_model(model, self.graph, self.units)
        self.unit_of = {c: k for k, u in enumerate(self.units) for c in u.convs}
        self.affected = [sorted({c for c in self.shapes if k in self.coeff[c] or self.unit_of.get(c) == k})
                         for k in range(len(self.units))]
        # units whose step costs change when unit k steps: they share a conv
        self.neighbours = [[j for j in range(len(self.units)) if set(self.affected[j]) & set(self.affected[k])]
                           for k in range(len(self.units))]
        self.full = {"flops": float(count_flops(model, img_size)), "params": float(count_params(model))}
        self.constants = {b: v - self._sum(b, self.widths({})) for b, v in self.full.items()}

    # --- widths and costs
    def widths(self, kept):
        """{conv: (in, out)} for kept counts {unit index: count}."""
        result = {}
        for c, (_, _, cout) in self.shapes.items():
            cin = self.base_in[c] - sum(a * (self.units[k].width - kept[k]) for k, a in self.coeff[c].items()
                                        if k in kept)
            k = self.unit_of.get(c)
            result[c] = (round(cin), kept.get(k, cout) if k is not None else cout)
        return result

    def conv_cost(self, budget, conv, cin, cout):
        if budget == "ms":
            return self.tables.conv_ms(conv, cin, cout)
        shape = self.shapes[conv][0]
        return shape.flops(cin, cout) if budget == "flops" else shape.params(cin, cout)

    def _sum(self, budget, widths):
        return sum(self.conv_cost(budget, c, *w) for c, w in widths.items())

    def cost(self, kept, budget):
        """Predicted ms, FLOPs or parameters of the model at kept counts {unit index: count}."""
        constant = self.tables.constant_ms if budget == "ms" else self.constants[budget]
        return constant + self._sum(budget, self.widths(kept))

    def kept_of(self, plan):
        """{unit index: kept count} of an engine PrunePlan (a ratio's plan, for comparisons)."""
        return {k: int(plan.masks[u.convs[0]].sum()) if u.convs[0] in plan.masks else u.width
                for k, u in enumerate(self.units)}

    def removed_importance(self, kept):
        """Importance of the channels the counts remove, each unit losing its weakest first (as the
        engine's masks do)."""
        total = 0.0
        for k, (u, s) in enumerate(zip(self.units, self.scores)):
            n = kept.get(k, u.width)
            if n < u.width:
                total += float(s.sum()) - _kept_score(s, n, u.split)
        return total

    def total_importance(self):
        return float(sum(float(s.sum()) for s in self.scores))

    # --- the search
    def _step(self, k, current, to=None):
        """Widths of the convs unit k changes going down to rung ``to`` (default the next), or None
        past its floor."""
        rung = self.rungs[k]
        to = rung.pos + 1 if to is None else to
        if to >= len(rung.counts):
            return None
        nxt = rung.counts[to]
        drop = rung.count - nxt
        changed = {}
        for c in self.affected[k]:
            cin, cout = current[c]
            changed[c] = (cin - self.coeff[c].get(k, 0) * drop, nxt if self.unit_of.get(c) == k else cout)
        return changed

    def _saved(self, budget, current, changed):
        return sum(self.conv_cost(budget, c, round(current[c][0]), current[c][1])
                   - self.conv_cost(budget, c, round(w[0]), w[1]) for c, w in changed.items())

    def search(self, goals, rungs=None):
        """Kept counts {unit index: count} meeting every goal {budget: absolute value}, greedily: each
        step takes the unit whose next rung removes the least importance per unit of cost saved on
        the first budget not yet met. Only the steps whose convs changed are evaluated again.
        ``rungs``: the ladders to walk (default every unit's whole ladder)."""
        self.rungs = rungs or self.ladders
        for rung in self.rungs:
            rung.pos = 0
        current = {c: (float(w[0]), w[1]) for c, w in self.widths({}).items()}
        values = {b: self.cost({}, b) for b in goals}
        gains, steps = {}, 0
        while True:
            unmet = [b for b in goals if values[b] > goals[b]]
            if not unmet:
                return {k: r.count for k, r in enumerate(self.rungs)}, steps
            budget = unmet[0]
            k = self._best_step(current, budget, gains)
            if k is None:
                raise BudgetUnreachable(self._unreachable(budget, goals[budget], values[budget]), budget,
                                        goals[budget], values[budget], self.cost({}, budget))
            to = gains[k][1][2]
            changed = self._step(k, current, to)
            for b in goals:
                values[b] -= self._saved(b, current, changed)
            current.update(changed)
            self.rungs[k].pos = to
            for j in self.neighbours[k]:
                gains.pop(j, None)
            steps += 1

    def search_below_threshold(self, goals):
        """search() among the channels under the lowest importance threshold at which it meets
        ``goals``: (kept counts, steps, threshold).

        Raw importance per ms saved is not comparable across layers: on yolov3-tiny transferred
        to a photo set (256 px, ONNX Runtime) the unbounded search met the ratio's 8.36 ms by
        taking 8 of the 32 channels of the second conv, whose |gamma| sparsity had left alone,
        and ended 0.073 mAP@0.5 below the ratio's model after the same fine-tune. Bounded by a
        threshold, a plan only removes channels a global |gamma| threshold would (the lowest that
        meets the budget, found by bisection), and within them those that save the most ms."""
        thresholds = torch.unique(torch.cat([s.flatten() for s in self.scores]))
        lo, hi, best = 0, len(thresholds) - 1, None
        while lo <= hi:     # bisection: the smallest threshold whose channels below it meet the goals
            mid = (lo + hi) // 2
            try:
                kept, steps = self.search(goals, self._bounded(float(thresholds[mid])))
            except PruneError:
                lo = mid + 1
                continue
            best, hi = (kept, steps, float(thresholds[mid])), mid - 1
        if best is None:    # no threshold does: the unbounded search reaches further, or says how far it can
            return (*self.search(goals), None)
        return best

    def _bounded(self, threshold):
        """Ladders that keep every channel whose importance reaches ``threshold``."""
        return [_bounded(r, int((s >= threshold).sum())) for r, s in zip(self.ladders, self.scores)]

    def floor(self):
        """Kept counts {unit index: count} with every unit at the bottom of its ladder: the fastest plan."""
        return {k: r.counts[-1] for k, r in enumerate(self.ladders)}

    def by_key(self, kept):
        """{unit key: count} of the units kept counts {unit index: count} prune, as the engine takes them."""
        return {unit_key(self.units[k]): n for k, n in kept.items() if n < self.units[k].width}

    def build(self, kept):
        """(compact model, engine plans) of kept counts {unit index: count}: the engine's masks by
        importance, compensation and surgery."""
        return prune(self.model, self.policy, graph=self.graph, kept=self.by_key(kept))

    def _best_step(self, current, budget, gains):
        best, best_key = None, None
        for k in range(len(self.rungs)):
            if k not in gains or gains[k][0] != budget:
                gains[k] = (budget, self._gain(k, current, budget))
            gain = gains[k][1]
            if gain is None:
                continue
            key = (gain[0] / gain[1], -gain[1])
            if best_key is None or key < best_key:
                best, best_key = k, key
        return best

    def _gain(self, k, current, budget):
        """(importance removed, cost saved, rung) going down unit k's ladder to the first rung that
        saves anything: where the table is flat between grid points a single rung saves nothing, but
        the rungs below it may. None when no rung below saves."""
        rung = self.rungs[k]
        for to in range(rung.pos + 1, len(rung.counts)):
            saved = self._saved(budget, current, self._step(k, current, to))
            if saved > 0:
                return rung.kept_score[rung.pos] - rung.kept_score[to], saved, to
        return None

    def _unreachable(self, budget, goal, value):
        unit = " ms" if budget == "ms" else ""
        return (f"--target-{budget} {_fmt(goal, budget)}{unit} cannot be met: with every prunable layer at its "
                f"floor (--layer-keep) the plan reaches {_fmt(value, budget)}{unit}; raise the target or lower "
                f"--layer-keep" + (" (the layers the policy cannot prune and everything but the convs stay)"
                                   if budget == "ms" else ""))


def _bounded(rung, above):
    """``rung`` limited to the counts that keep at least ``above`` channels (those over a threshold)."""
    keep = [k for k, n in enumerate(rung.counts) if n >= above]
    return Rung(rung.unit, [rung.counts[k] for k in keep], [rung.kept_score[k] for k in keep])


def _kept_score(scores, n, split):
    per = scores.numel() // split
    return float(sum(torch.topk(scores[s * per:(s + 1) * per], n // split).values.sum() for s in range(split)))


def resolve_goal(value, original):
    """A fraction (<= 1) of the original, or an absolute value (FLOPs and parameter budgets)."""
    return value * original if value <= 1 else value


# ----------------------------------------------------------------------------- one call
def plan_to_budget(model, policy, runtime, img_size, threads, target_ms=None, target_flops=None, target_params=None,
                   layer_keep=0.05, graph=None, n_blocks=0, multiple=None, timer=None, cache=None, progress=True):
    """Prune ``model`` to the budget(s) with the least importance removed.

    ``target_ms``: predicted ms on ``runtime`` at ``img_size`` with ``threads`` (tables measured
    or read from the cache); ``target_flops`` / ``target_params``: a fraction of the original
    (<= 1) or an absolute count. ``multiple``: the kept-count step (default the runtime's,
    RUNTIME_MULTIPLE; 1 without a runtime). ``n_blocks`` residual blocks are removed first, as
    layer_channel_prune does. Returns (compact model, engine plans, BudgetReport).
    """
    if target_ms is None and target_flops is None and target_params is None:
        raise PruneError("plan_to_budget needs a target: target_ms, target_flops or target_params")
    if target_ms is not None and not target_ms > 0:
        raise PruneError(f"--target-ms {target_ms:g} must be positive")
    size = img_size or model.img_size[0]
    multiple = multiple or (RUNTIME_MULTIPLE.get(runtime, 1) if runtime else 1)
    original = model
    plans = []
    if n_blocks:
        model, plans = prune(model, policy, None, None, n_blocks, graph=graph)
        graph = None
    planner = BudgetPlanner(model, policy, graph, layer_keep, multiple, size)
    original_tables = None
    if target_ms is not None:
        timer = timer or RuntimeTimer(runtime, threads)
        cache = cache or LatencyCache(runtime, threads)
        planner.tables = build_tables(model, runtime, table_grids(planner), size, threads, timer, cache, progress)
        original_tables = planner.tables if not n_blocks else build_tables(original, runtime, None, size, threads,
                                                                           timer, cache, progress)
    goals, before = _goals(planner, original, original_tables, size, target_ms, target_flops, target_params)
    kept, steps, threshold = planner.search_below_threshold(goals)
    compact, channel_plans = planner.build(kept)
    built = {id(t): t for t in (planner.tables, original_tables) if t}.values()
    measured, measured_layers = sum(t.measured for t in built), sum(t.measured_layers for t in built)
    report = BudgetReport(
        predicted_ms=planner.cost(kept, "ms") if planner.tables else None,
        original_ms=before.get("ms"), target=goals, removed_importance=planner.removed_importance(kept),
        total_importance=planner.total_importance(), predicted={b: planner.cost(kept, b) for b in goals},
        original=before, kept=planner.by_key(kept), runtime=runtime, threads=threads, img_size=size,
        multiple=multiple, steps=steps, measured_points=measured, measured_layers=measured_layers,
        threshold=threshold)
    return compact, plans + channel_plans, report


def plan_at_floor(model, policy, layer_keep=0.05, multiple=1, graph=None):
    """The fastest plan ``policy`` allows: every prunable unit at the floor of its ladder (``layer_keep``
    of its width, in ``multiple``). No plan of the policy runs faster, so its speed-up is the
    ceiling of channel pruning under it. Returns (compact model, engine plans)."""
    planner = BudgetPlanner(model, policy, graph, layer_keep, multiple)
    return planner.build(planner.floor())


def table_grids(planner):
    """Which counts each conv is timed at: a grid over the widths the planner can give it."""
    grids = {}
    for c, (_, cin, cout) in planner.shapes.items():
        ins = grid_counts(cin) if planner.coeff[c] else [cin]
        outs = grid_counts(cout) if c in planner.unit_of else [cout]
        grids[c] = (ins, outs)
    return grids


def _goals(planner, original, original_tables, size, target_ms, target_flops, target_params):
    """({budget: absolute goal}, {budget: the unpruned model's value}); the latency budget is first,
    so the search spends its steps where milliseconds are saved."""
    goals, before = {}, {}
    if target_ms is not None:
        goals["ms"], before["ms"] = float(target_ms), original_tables.predict({})
    full = planner.full if original is planner.model else {"flops": float(count_flops(original, size)),
                                                             "params": float(count_params(original))}
    for budget, value in (("flops", target_flops), ("params", target_params)):
        if value is not None:
            before[budget] = full[budget]
            goals[budget] = resolve_goal(value, full[budget])
    return goals, before
