"""The prune ratio found, not guessed: bisection over quick evaluations of planned models.

Two kinds of search, both over the ratio (``--percent``) of one policy:

* quality: the largest ratio whose pruned model, before any fine-tuning, keeps mAP@0.5 within
  ``max_drop`` of the unpruned model's (labels) or agrees with it at ``min_agreement`` or more
  (no labels, yoloslim/eval/agreement.py). Each probe plans and builds the compact model in memory and
  scores it on a small subset; nothing is written.
* budget: the smallest ratio whose plan meets ``target_params`` / ``target_flops`` (a fraction of
  the original when <= 1, else an absolute count). Only counted, never evaluated.

Both assume the quantity is monotone in the ratio (a larger ratio prunes a superset of the
channels under one global threshold). Rounding policies can make it step-wise, which bisection
tolerates; the evaluated curve is returned so a user can see where it was not monotone.
"""
from dataclasses import dataclass, field

from yoloslim.errors import PruneError
from yoloslim.prune.graph import analyze
from yoloslim.prune.engine import BNImportance, make_units, prune, safe_limit, unit_scores
from yoloslim.deploy.measure import count_flops, count_params

MAX_RATIO = 0.98        # the search never asks for more: every layer would be down to --layer-keep
STEP = 0.005            # the ratio grid: 8 probes over [0, 0.98], finer than any rounding policy resolves
DEFAULT_MAX_DROP = 0.03    # mAP@0.5 before fine-tuning; the README's tiny run lost 0.022 at 0.35 and recovered
DEFAULT_MIN_AGREEMENT = 0.95
SEARCH_IMAGES = 64      # validation images per probe: enough to rank ratios, fast enough to probe 8 times


@dataclass
class Probe:
    """One evaluated ratio."""
    ratio: float
    params: int
    flops: float
    metric: float = None        # mAP@0.5 or agreement on the subset; None in a budget search
    ok: bool = None             # whether it met the criterion


@dataclass
class Criterion:
    """What the search must keep or reach; exactly one field is set."""
    max_drop: float = None
    min_agreement: float = None
    target_params: float = None
    target_flops: float = None

    def name(self):
        key, value = next((k, v) for k, v in vars(self).items() if v is not None)
        return f"--{key.replace('_', '-')} {value:g}"

    def is_budget(self):
        return self.target_params is not None or self.target_flops is not None


@dataclass
class SearchResult:
    ratio: float
    criterion: str
    base: Probe                 # the unpruned model (ratio 0)
    probes: list = field(default_factory=list)
    metric_name: str = ""       # 'mAP@0.5' or 'agreement', '' for a budget search
    images: int = 0

    def curve(self):
        """Probes sorted by ratio, the unpruned model first: the evaluated curve."""
        return [self.base] + sorted(self.probes, key=lambda p: p.ratio)

    def chosen(self):
        return next(p for p in self.curve() if p.ratio == self.ratio)

    def lines(self):
        head = f"{'ratio':>6} {'params':>11} {'GFLOPs':>8}" + (f" {self.metric_name:>10}" if self.metric_name else "")
        rows = [head]
        for p in self.curve():
            metric = f" {p.metric:10.4f}" if self.metric_name else ""
            mark = "  <- chosen" if p.ratio == self.ratio else "  (fails)" if p.ok is False else ""
            rows.append(f"{p.ratio:6.3f} {p.params:11,} {p.flops / 1e9:8.3f}{metric}{mark}")
        return rows

    def as_dict(self):
        return {"ratio": self.ratio, "criterion": self.criterion, "metric": self.metric_name, "images": self.images,
                "curve": [vars(p) for p in self.curve()]}


# ----------------------------------------------------------------------------- bisection
def ratio_grid(hi, step=STEP):
    """0, step, 2 step, ... up to ``hi`` (and ``hi`` itself): round ratios, 0.355 rather than 0.3546."""
    grid = [round(k * step, 6) for k in range(int(hi / step + 1e-9) + 1)]
    return grid if grid[-1] >= hi - 1e-9 else grid + [round(hi, 6)]


def bisect_largest(ok, grid):
    """Largest x of the sorted ``grid`` with ok(x), given ok(grid[0]) and ok monotone (true, then false)."""
    if ok(grid[-1]):
        return grid[-1]
    a, b = 0, len(grid) - 1               # invariant: ok(grid[a]), not ok(grid[b])
    while b - a > 1:
        mid = (a + b) // 2
        a, b = (mid, b) if ok(grid[mid]) else (a, mid)
    return grid[a]


def bisect_smallest(ok, grid):
    """Smallest x of the sorted ``grid`` with ok(x), given ok(grid[-1]) and ok monotone (false, then true)."""
    a, b = 0, len(grid) - 1               # invariant: ok(grid[b]); grid[a] not yet known to fail
    if ok(grid[a]):
        return grid[a]
    while b - a > 1:                      # invariant: not ok(grid[a]), ok(grid[b])
        mid = (a + b) // 2
        a, b = (a, mid) if ok(grid[mid]) else (mid, b)
    return grid[b]


# ----------------------------------------------------------------------------- probes
def ratio_ceiling(model, policy, layer_keep):
    """The largest ratio a plan accepts: the safe limit unless --layer-keep guards every layer."""
    if layer_keep is not None or not policy.importance.global_threshold:
        return MAX_RATIO
    units = make_units(model, analyze(model.module_defs, model.in_channels), policy)
    _, safe = safe_limit([unit_scores(model, u, BNImportance()) for u in units])
    return min(MAX_RATIO, safe)


def resolve_budget(value, original):
    """A fraction (<= 1) of the original, or an absolute count."""
    return value * original if value <= 1 else value


class Prober:
    """Plans, builds and scores the model at a ratio; every probe is kept for the curve."""

    def __init__(self, model, policy, img_size, layer_keep=None, n_blocks=0, score=None):
        self.model, self.policy, self.img_size = model, policy, img_size
        self.layer_keep, self.n_blocks, self.score = layer_keep, n_blocks, score
        self.probes = {}

    def compact(self, ratio):
        compact, _ = prune(self.model, self.policy, ratio if ratio > 0 else None, self.layer_keep, self.n_blocks)
        return compact.eval()

    def __call__(self, ratio):
        ratio = round(ratio, 6)
        if ratio not in self.probes:
            compact = self.compact(ratio) if ratio > 0 or self.n_blocks else self.model
            metric = self.score(compact) if self.score else None
            self.probes[ratio] = Probe(ratio, count_params(compact), float(count_flops(compact, self.img_size)), metric)
        return self.probes[ratio]


def search_ratio(model, policy, criterion, img_size, score=None, layer_keep=None, n_blocks=0,
                 metric_name="", images=0, step=STEP):
    """Bisection for the ratio ``criterion`` asks for; returns a SearchResult with the curve.

    ``score(model) -> float`` is needed for a quality criterion (higher is better; the
    unpruned model's own score sets the bar for max_drop). A budget no ratio meets is a
    PruneError; a quality criterion no ratio meets returns ratio 0 with the curve, for the
    caller to show before it refuses.
    """
    prober = Prober(model, policy, img_size, layer_keep, n_blocks, None if criterion.is_budget() else score)
    base = Prober(model, policy, img_size, score=prober.score)(0.0)
    if base.metric is not None and base.metric != base.metric:   # nan: nothing to agree on
        raise PruneError(f"the unpruned model finds no objects on the {images} search images, so {metric_name} "
                         f"cannot rank ratios; pass images with objects it detects, or --data")
    ceiling = ratio_ceiling(model, policy, layer_keep)
    ok = _acceptor(criterion, base, prober)
    if criterion.is_budget():
        if not ok(ceiling):
            raise PruneError(f"{criterion.name()} cannot be met: at the largest ratio the plan allows "
                             f"({ceiling:.3f}) the model keeps {prober(ceiling).params:,} parameters and "
                             f"{prober(ceiling).flops / 1e9:.3g} GFLOPs; "
                             + ("pass --layer-keep 0.05 to go past the safe limit, or a larger target"
                                if layer_keep is None else "lower --layer-keep or pass a larger target"))
        ratio = bisect_smallest(ok, ratio_grid(ceiling, step)[1:])
    else:
        ratio = bisect_largest(ok, ratio_grid(ceiling, step))
    result = SearchResult(round(ratio, 6), criterion.name(), base, list(prober.probes.values()), metric_name, images)
    for p in result.probes:
        p.ok = ok(p.ratio)
    base.ok = True
    return result


def _acceptor(criterion, base, prober):
    """ok(ratio) for the criterion; ratio 0 (the unpruned model) meets every quality criterion."""
    if criterion.target_params is not None:
        goal = resolve_budget(criterion.target_params, base.params)
        return lambda r: prober(r).params <= goal
    if criterion.target_flops is not None:
        goal = resolve_budget(criterion.target_flops, base.flops)
        return lambda r: prober(r).flops <= goal
    if criterion.max_drop is not None:
        return lambda r: r == 0 or prober(r).metric >= base.metric - criterion.max_drop
    return lambda r: r == 0 or prober(r).metric >= criterion.min_agreement


# ----------------------------------------------------------------------------- scores
def map_scorer(data, img_size, max_images=SEARCH_IMAGES):
    """score(model) = mAP@0.5 on the first ``max_images`` validation images (loader built once)."""
    from yoloslim.eval import evaluate as tester
    from yoloslim.darknet.cfg import parse_data_cfg
    loader = tester.build_loader(parse_data_cfg(data)["valid"], img_size, 16, 0, max_images)
    n = len(loader.dataset)

    def score(model):
        return float(tester.evaluate(model, loader, img_size=img_size, verbose=False, progress=False)["mAP50"])
    return score, n


def agreement_scorer(reference, images, img_size, max_images=SEARCH_IMAGES):
    """score(model) = agreement with ``reference`` on the first ``max_images`` images (loaded once)."""
    from yoloslim.eval.agreement import agreement_on_batches, image_batches
    batches = []
    for batch in image_batches(images, img_size):
        batches.append(batch[:max_images - sum(len(b) for b in batches)])
        if sum(len(b) for b in batches) >= max_images:
            break
    n = sum(len(b) for b in batches)
    return (lambda model: agreement_on_batches(reference, model, batches).score), n


# ----------------------------------------------------------------------------- figure
def plot_search(result, path, title="prune ratio search"):
    """The evaluated curve: the metric (left axis) and params / FLOPs as a share of the original
    (right axis) against the ratio, the chosen ratio marked."""
    from yoloslim.plots import pyplot, save_png
    plt = pyplot()
    curve = result.curve()
    ratios = [p.ratio for p in curve]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    twin = ax.twinx() if result.metric_name else ax
    if result.metric_name:
        ax.plot(ratios, [p.metric for p in curve], "o-", color="#3b6ea8", label=result.metric_name)
        ax.set_ylabel(result.metric_name)
    twin.plot(ratios, [p.params / result.base.params for p in curve], "s--", color="#c0504d", label="params")
    twin.plot(ratios, [p.flops / result.base.flops for p in curve], "^--", color="#9bbb59", label="FLOPs")
    twin.set_ylabel("share of the original")
    ax.axvline(result.ratio, color="k", linewidth=0.8)
    ax.set_xlabel("prune ratio (--percent)")
    ax.set_title(f"{title}: {result.criterion} -> {result.ratio:.3f}", fontsize=10)
    handles = [h for a in {ax, twin} for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="lower left")
    fig.tight_layout()
    save_png(fig, path)
    return path
