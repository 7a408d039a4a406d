"""``--percent auto`` for the prune scripts: the flags, their checks, and the search run.

The ratio is searched when ``--percent auto`` is given, or when ``--percent`` is left out and a
yardstick is at hand (``--data``, ``--images``, ``--target-params``, ``--target-flops``): a
search costs about eight quick evaluations on a small subset, cheap next to a wrong guess.
Without a yardstick the script's documented fixed ratio is used and said so.
"""
import argparse

from yoloslim.cli import checks
from yoloslim.errors import PruneError
from yoloslim.prune.ratio_search import (DEFAULT_MAX_DROP, DEFAULT_MIN_AGREEMENT, SEARCH_IMAGES, Criterion, agreement_scorer,
                                map_scorer, search_ratio)

AUTO = "auto"
_fraction = checks.number(float, lo=0, hi=1, hi_open=True)
_SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9}


def auto_or(parse):
    """An argparse ``type=``: 'auto', or what ``parse`` accepts."""
    def parse_auto(text):
        return AUTO if text.strip().lower() == AUTO else parse(text)
    parse_auto.__name__ = f"'auto' or {parse.__name__}"
    return parse_auto


percent_value = auto_or(_fraction)      # the prune scripts: 0 means "layers only" in layer_channel_prune


def budget_value(text):
    """--target-params / --target-flops: a fraction of the original (<= 1) or a count (1.2M, 3e9)."""
    raw = text.strip()
    scale = _SUFFIX.get(raw[-1:].lower(), 1)
    value = checks.number(float, lo=0, lo_open=True)(raw[:-1] if scale != 1 else raw) * scale
    if 1 < value < 1000 and scale == 1:   # neither a share nor a plausible count: a typo for 0.x or 1.2M
        raise argparse.ArgumentTypeError(f"{text} is neither a fraction of the original (0 < x <= 1) nor a count "
                                         f"(such as 1.5M or 2e9)")
    return value


def add_search_options(p):
    g = p.add_argument_group("--percent auto (the ratio found by bisection; pick one yardstick)")
    g.add_argument("--max-drop", type=checks.fraction, default=None,
                   help=f"largest ratio whose mAP@0.5 before fine-tuning stays within this of the unpruned model's "
                        f"(needs --data; default {DEFAULT_MAX_DROP} when --data is the yardstick)")
    g.add_argument("--min-agreement", type=checks.fraction, default=None,
                   help=f"largest ratio whose agreement with the unpruned model is at least this (needs --images; "
                        f"default {DEFAULT_MIN_AGREEMENT} when --images is the yardstick)")
    g.add_argument("--target-params", type=budget_value, default=None,
                   help="smallest ratio that keeps at most this many parameters: a fraction of the original (0.5) "
                        "or a count (1.5M); no evaluation")
    g.add_argument("--target-flops", type=budget_value, default=None,
                   help="smallest ratio that keeps at most this many FLOPs: a fraction (0.5) or a count (2G)")
    g.add_argument("--search-images", type=checks.positive_int, default=SEARCH_IMAGES,
                   help="images each probe of the search is scored on (the first of the validation list or --images)")


def resolve_criterion(args, fallback):
    """The search criterion for ``args`` (None: a fixed ratio), with ``args.percent`` settled.

    Contradicting flags are refused here, before any work, in one line that says which to drop.
    """
    given = {f"--{k.replace('_', '-')}": v for k, v in
             (("max_drop", args.max_drop), ("min_agreement", args.min_agreement),
              ("target_params", args.target_params), ("target_flops", args.target_flops)) if v is not None}
    if len(given) > 1:
        raise PruneError(f"{' and '.join(given)} are alternative yardsticks for --percent auto; pass only one")
    if given and args.percent not in (None, AUTO):
        raise PruneError(f"--percent {args.percent:g} fixes the ratio but {next(iter(given))} asks for it to be "
                         f"searched; drop one (or pass --percent auto)")
    if args.max_drop is not None and not args.data:
        raise PruneError("--max-drop measures mAP@0.5 against labels; pass --data (or use --min-agreement with --images)")
    if args.min_agreement is not None and not args.images:
        raise PruneError("--min-agreement compares detections on images; pass --images (or use --max-drop with --data)")
    yardstick = given or args.data or args.images
    if args.percent is None:
        args.percent = AUTO if yardstick else fallback
        if not yardstick:
            print(f"--percent not given and nothing to search with: pruning at {fallback:g}; pass --data or --images "
                  f"to have the ratio found (--percent auto)")
    if args.percent != AUTO:
        return None
    if given:
        return Criterion(**{k.lstrip("-").replace("-", "_"): v for k, v in given.items()})
    if args.data:
        return Criterion(max_drop=DEFAULT_MAX_DROP)
    if args.images:
        return Criterion(min_agreement=DEFAULT_MIN_AGREEMENT)
    raise PruneError("--percent auto needs a yardstick: --data (mAP@0.5), --images (agreement), --target-params "
                     "or --target-flops")


def search_checkpoint(checkpoint, policy, data, img_size, max_drop, layer_keep, path, max_images=SEARCH_IMAGES):
    """slim.py's stage: the largest ratio of ``policy`` within ``max_drop`` mAP@0.5 of the
    sparsity-trained checkpoint, on the first ``max_images`` validation images; curve drawn to ``path``."""
    from yoloslim.darknet.load import model_from_checkpoint
    from yoloslim.prune.engine import POLICIES
    from yoloslim.prune.ratio_search import plot_search
    model = model_from_checkpoint(checkpoint).eval()
    score, images = map_scorer(data, img_size, max_images)
    criterion = Criterion(max_drop=max_drop)
    print(f"searching the ratio for {criterion.name()} on {images} validation images, policy {policy} ...", flush=True)
    result = search_ratio(model, POLICIES[policy], criterion, img_size, score, layer_keep, 0, "mAP@0.5", images)
    print("\n".join(result.lines()))
    plot_search(result, path, f"{policy} policy")
    if result.ratio <= 0:
        raise PruneError(f"{checkpoint}: no prune ratio keeps mAP@0.5 within {criterion.name()} (curve above, "
                         f"{path}); the sparsity did not take hold: raise --s or the epochs, or loosen --max-drop")
    print(f"chosen: --percent {result.ratio:.3f} ({criterion.name()}, {len(result.probes)} probes)")
    return result


def run_search(args, model, policy, criterion, img_size, n_blocks=0):
    """Search the ratio, print the curve, and return the SearchResult (its ratio is the percent)."""
    score, metric, images = None, "", 0
    if criterion.max_drop is not None:
        score, images = map_scorer(args.data, img_size, args.search_images)
        metric = "mAP@0.5"
    elif criterion.min_agreement is not None:
        score, images = agreement_scorer(model, args.images, img_size, args.search_images)
        metric = "agreement"
    subset = f" on {images} images" if images else " (counted, not evaluated)"
    print(f"searching the ratio for {criterion.name()}{subset}, policy {policy.name} ...", flush=True)
    try:
        result = search_ratio(model, policy, criterion, img_size, score, args.layer_keep, n_blocks, metric, images)
    except PruneError as e:
        raise PruneError(f"{args.cfg}: {e}") from None
    print("\n".join(result.lines()))
    if result.ratio <= 0:
        raise PruneError(f"{args.cfg}: no ratio meets {criterion.name()} (even {min(p.ratio for p in result.probes):.3f} "
                         f"fails, curve above); the model does not look sparsity-trained: train it with -sr, or loosen "
                         f"the criterion")
    print(f"chosen: --percent {result.ratio:.3f} ({criterion.name()}, {len(result.probes)} probes)")
    return result
