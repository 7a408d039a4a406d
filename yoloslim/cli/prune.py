"""What every prune script does; the scripts themselves only choose a Policy.

load -> sparsity check -> plan -> compact -> write .cfg/.weights -> verify in OpenCV -> measure.
"""
import json
import os
import time

import torch

from yoloslim.darknet.load import load_model
from yoloslim.errors import PruneError
from yoloslim.cli import checks
from yoloslim.io import atomic_folder, atomic_write, claim_folder, is_torch_file
from yoloslim.deploy.latency import CHEAP, RUNTIMES, Deployable, default_runtimes, describe, latency_columns, runtime_list
from yoloslim.deploy.parity import within
from yoloslim.pipeline.stages import measure
from yoloslim.prune.graph import analyze
from yoloslim.prune.report import channel_table, comparison_table, removed_share
from yoloslim.prune.engine import POLICIES, BNImportance, make_units, prune, unit_scores, write_pruned
from yoloslim.darknet.bn_readers import DEFAULT_READER, INPUT_READER_HELP, READER_HELP, READERS
from yoloslim.deploy.reader_checks import check_written_pair
from yoloslim.cli.auto_percent import add_search_options, percent_value, resolve_criterion, run_search
from yoloslim.cli.budget import (VERIFY_RUNS, add_budget_options, budget_line, check_budget, nothing_to_prune,
                                 run_budget)
from yoloslim.prune.ratio_search import plot_search

NEAR_ZERO = 0.01  # |gamma| below this is "sparsified": its channel contributes ~act(beta) only
SPARSE_ENOUGH = 0.1  # a sparsity-trained model has at least this share of gammas near zero


def base_parser(description, percent_default=0.35):
    p = checks.parser(description)
    p.add_argument("--cfg", required=True, type=checks.input_file, help="Darknet .cfg of the model to prune")
    p.add_argument("--weights", required=True, type=checks.input_file,
                   help="its Darknet .weights or a train.py checkpoint (recognised by content, any name)")
    p.add_argument("--data", type=checks.input_file, help=".data file; when given, mAP@0.5 is measured before and after")
    p.add_argument("--images", type=checks.image_source,
                   help="unlabelled images (folder, file or glob): the pruned model's agreement mAP@0.5 with the original")
    p.add_argument("--percent", type=percent_value, default=None,
                   help=f"fraction of prunable channels to remove, or 'auto' to find it (below); default: auto when "
                        f"--data, --images or a --target is given, else {percent_default:g}")
    p.add_argument("--layer-keep", type=checks.number(float, lo=0, hi=1, lo_open=True), default=None,
                   help="keep at least this fraction of every layer (allows a percent past the safe limit)")
    p.add_argument("--img-size", type=checks.img_size, default=None,
                   help="input size, rounded up to a multiple of 32 (default: the cfg's [net] width)")
    p.add_argument("--out", type=checks.output_dir, default=None,
                   help="output folder (default: runs/prune/<cfg>-<method>-<percent>); taken as -2, -3, ... when it exists")
    p.add_argument("--latency-runs", type=checks.timed_runs, default=10, help="timed runs for each latency median (0 = skip)")
    p.add_argument("--runtime", type=runtime_list, default=None,
                   help=f"comma-separated runtimes to time the two models on, from {','.join(RUNTIMES)} "
                        f"(when left out: those of {','.join(CHEAP)} that are installed)")
    p.add_argument("--threads", type=checks.positive_int, default=os.cpu_count(),
                   help="threads set in each runtime for the latency runs")
    p.add_argument("--reader", choices=list(READERS), default=DEFAULT_READER, help=READER_HELP)
    p.add_argument("--input-reader", choices=["auto", *READERS], default="auto", help=INPUT_READER_HELP)
    add_search_options(p)
    add_budget_options(p)
    p.set_defaults(percent_fallback=percent_default)
    return p


def output_folder(args, method):
    """A new, empty folder claimed atomically: never one that exists, so methods and concurrent
    runs never overwrite each other. The contents are built elsewhere and renamed into it."""
    stem = os.path.splitext(os.path.basename(args.cfg))[0]
    tag = f"{args.target_ms:g}ms-{args.runtime[0]}" if args.target_ms is not None else f"{args.percent:g}"
    base = args.out or os.path.join("runs", "prune", f"{stem}-{method}-{tag}")
    return claim_folder(base)   # an existing folder, even an empty one, may be another run's claim


def validate_inputs(args, channels=True):
    """Every input checked before any model is built or file written."""
    if channels and args.percent == 0:
        raise PruneError(f"--percent {args.percent:g} is outside (0, 1); pass a fraction such as 0.5")
    defs = checks.check_cfg(args.cfg)
    if args.data:
        data = checks.check_data(args.data)
        checks.check_classes(checks.cfg_classes(defs), data, args.data)
    if args.out is None:  # the default location must be writable too
        checks.ensure(checks.output_dir, os.path.join("runs", "prune"), "--out")
    else:   # an existing --out becomes a -2 sibling: only beside an earlier output, never among the user's files
        from yoloslim.owned import check_claimable, has_any
        check_claimable(args.out, "--out", legacy=has_any("summary.json"))
    return defs


GAMMA_BINS = (0.001, 0.01, 0.1, 1.0)  # decades of |gamma| for the one-line histogram


def gamma_histogram_line(gammas):
    """'|gamma| <0.001 0% | 0.001-0.01 2% # | ...': the share of prunable gammas per decade."""
    edges = (0.0, *GAMMA_BINS, float("inf"))
    parts = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        share = float(((gammas >= lo) & (gammas < hi)).float().mean())
        label = f"<{hi:g}" if lo == 0 else f">={lo:g}" if hi == float("inf") else f"{lo:g}-{hi:g}"
        parts.append(f"{label} {share:4.0%} {'#' * round(share * 20)}".rstrip())
    return "|gamma| histogram: " + " | ".join(parts)


def sparsity_report(model, graph, policy, percent):
    """How sparse the prunable gammas are, before pruning; warn plainly when the model does not
    look sparsity-trained, since then any percent cuts channels that still carry signal."""
    units = make_units(model, graph, policy)
    gammas = torch.cat([unit_scores(model, u, BNImportance()) for u in units])
    near = float((gammas < NEAR_ZERO).float().mean())
    print(f"sparsity: {near:.1%} of {gammas.numel()} prunable |gamma| are below {NEAR_ZERO} "
          f"(median {float(gammas.median()):.3g})")
    print(gamma_histogram_line(gammas))
    if policy.importance.global_threshold and (percent > near + 0.1 or near < SPARSE_ENOUGH):
        print(f"warning: this model does not look sparsity-trained: --percent {percent:g} removes {percent:.0%} "
              f"of the channels but only {near:.1%} have |gamma| below {NEAR_ZERO}, so live channels are cut "
              f"and accuracy may collapse (check with --data); sparsity-train first (train.py -sr) or lower --percent")
    return near


def report_removed_share(plans, percent, policy, n_blocks):
    """Say plainly when the plan removes nothing or far less than --percent asked.

    Rounding (regular prune's 2^n) and --layer-keep can keep every channel: writing the input
    back unchanged under a "pruned" name would be a silent no-op, so that is an error; removing
    under half of what was asked is a warning with the share reached.
    """
    masks = [m for plan in plans for m in plan.masks.values()]
    if percent is None or not masks:
        return None
    total = sum(m.numel() for m in masks)
    removed = sum(int((~m).sum()) for m in masks) / total
    print(f"removed {removed:.1%} of {total} prunable channels (kept {1 - removed:.1%}; --percent {percent:g} asked)")
    hint = policy.rounding.hint(policy.name)
    if removed == 0 and not n_blocks:
        raise PruneError(f"--percent {percent:g} removes no channel at all, so the output would equal the input: {hint}")
    if removed < percent / 2:
        print(f"warning: --percent {percent:g} asked to remove {percent:.0%} of prunable channels but the plan "
              f"removes {removed:.1%} (kept {1 - removed:.1%}): {hint}")
    return removed


def refuse_without_shortcuts(graph, cfg):
    """Shortcut pruning differs from normal pruning only where convs meet at a [shortcut]: on a
    model without one it would silently be normal_prune under another name."""
    if not graph.prunable_meet_at_shortcut():
        raise PruneError(f"{cfg}: has no [shortcut] where prunable convs meet, so shortcut pruning would be "
                         f"normal pruning; use normal_prune.py (or prune_tiny.py for yolov3-tiny / yolov4-tiny)")


def run_prune(args, policy, method, n_blocks=0, channels=True, needs_shortcuts=False):
    """The whole prune run behind every script. Returns the summary dict it also writes.

    ``policy`` is a Policy or the name of one in POLICIES; ``channels=False`` skips channel
    pruning (layer removal only). Inputs are checked first; the output folder appears
    complete (pair + summary.json) or not at all.
    """
    policy = POLICIES[policy] if isinstance(policy, str) else policy
    args.budget = check_budget(args, channels)
    criterion = resolve_criterion(args, args.percent_fallback) if channels and not args.budget else None
    defs = validate_inputs(args, channels)
    model = load_model(args.cfg, args.weights, args.img_size, defs=defs,
                       reader=None if args.input_reader == "auto" else args.input_reader).eval()
    if model.read_as:
        print(f"{args.weights}: BN statistics read as written for {READERS[model.read_as].label}")
    graph = analyze(model.module_defs, model.in_channels)
    if needs_shortcuts:
        refuse_without_shortcuts(graph, args.cfg)
    args.search = None
    if criterion is not None:
        args.search = run_search(args, model, policy, criterion, args.img_size or model.img_size[0], n_blocks)
        args.percent = args.search.ratio
    t0 = time.perf_counter()
    if args.budget:
        compact, plans, args.budget_report = run_budget(args.budget, model, policy, graph,
                                                        args.img_size or model.img_size[0], args.threads,
                                                        args.layer_keep, n_blocks)
        args.percent = round(removed_share(plans), 4)
        if args.percent == 0 and not n_blocks:
            raise PruneError(nothing_to_prune(args.budget, args.budget_report) + ", nothing written")
        if args.percent > 0:
            sparsity_report(model, graph, policy, args.percent)
    else:
        compact, plans = plan_at_percent(args, model, policy, graph, channels, n_blocks)
    surgery_s = time.perf_counter() - t0
    print(channel_table(model, plans))
    if args.budget:
        print(f"removed {args.percent:.1%} of the prunable channels to meet the budget")
    else:
        report_removed_share(plans, args.percent if channels else None, policy, n_blocks)

    folder = output_folder(args, method)
    stem = os.path.splitext(os.path.basename(args.cfg))[0]
    with atomic_folder(folder) as work:
        if args.search is not None:
            plot_search(args.search, os.path.join(work, "ratio_search.png"), f"{stem} {method}")
        summary = _write_and_check(args, model, compact, plans, method, n_blocks, surgery_s, work, folder, stem)
    print(f"complete: {folder} (pruned pair and summary.json)")
    return summary


def plan_at_percent(args, model, policy, graph, channels, n_blocks):
    """The ratio's plan (fixed or searched): one |gamma| threshold, or l1's share per layer."""
    percent = args.percent if channels else None
    if percent is not None:
        sparsity_report(model, graph, policy, percent)
    compact, plans = prune(model, policy, percent, args.layer_keep, n_blocks, graph=graph)
    for plan in plans:
        if plan.threshold is not None:
            print(f"safe limit: --percent {plan.safe_percent:.3f} (threshold {plan.threshold:.4g})")
        elif plan.masks:  # l1 importance: a per-layer share, no global threshold
            print(f"l1: each layer keeps its strongest {1 - percent:.0%} of filters by L1 norm (at least one)")
    return compact, plans


def _write_and_check(args, model, compact, plans, method, n_blocks, surgery_s, work, folder, stem):
    """Write the pair into ``work`` (renamed to ``folder`` afterwards), verify and measure it."""
    work_cfg, work_weights = write_pruned(compact, work, f"{stem}-{method}", args.reader)
    cfg_out, weights_out = (os.path.join(folder, os.path.basename(p)) for p in (work_cfg, work_weights))
    size = args.img_size or model.img_size[0]
    diff, tolerance, reader_diff = check_written_pair(compact, work_cfg, work_weights, args.reader, size)
    label = READERS[args.reader].label
    as_read = "" if args.reader == "opencv" else " (its numbers; the BN arithmetic is checked next)"
    print(f"wrote {cfg_out} and {weights_out} for {label}; OpenCV DNN reads them back with max |diff| {diff:.2e} "
          f"of the head magnitude{as_read} (tolerance {tolerance:.2g}; surgery {surgery_s:.2f} s)")
    print(f"{label}'s BN arithmetic (float64) on the written pair: max |diff| {reader_diff:.2e} from the pruned model")
    if not within(diff, tolerance):
        raise PruneError(f"{cfg_out}: OpenCV's outputs differ from the pruned model by {diff:.3g} of the head "
                         f"magnitude (tolerance {tolerance:.2g}); please report this")
    if not within(reader_diff):
        raise PruneError(f"{weights_out}: in {label}'s arithmetic the pair is {reader_diff:.3g} of the head "
                         f"magnitude from the pruned model; please report this")

    darknet_input = not is_torch_file(args.weights)  # a checkpoint has no Darknet pair: OpenCV times one written from it
    before = measure(model, args.data, size, runs=0)   # latency below, the two models interleaved
    after = measure(compact, args.data, size, runs=0)
    latency = time_pair(args, model, compact, (args.cfg, args.weights) if darknet_input else None,
                        (work_cfg, work_weights), size, before, after)
    after["weights_MB"] = os.path.getsize(work_weights) / 1e6
    if args.images:
        from yoloslim.eval.agreement import agreement
        found = agreement(model, compact, args.images, size)
        before.update(agreement=1.0, boxes=found.reference_boxes)
        after.update(agreement=found.score, boxes=found.candidate_boxes)
    if darknet_input:
        before["weights_MB"] = os.path.getsize(args.weights) / 1e6
    print(comparison_table(before, after))
    if not args.data:
        print("note: accuracy was not measured (no --data): the table shows only size and speed; "
              "pass --data to compare mAP@0.5 before and after")
    summary = {"method": method, "cfg": args.cfg, "weights": args.weights, "percent": args.percent,
               "layers_removed": n_blocks, "out_cfg": cfg_out, "out_weights": weights_out,
               "reader": args.reader, "reader_max_diff": reader_diff, "input_read_as": model.read_as,
               "opencv_max_diff": diff, "opencv_tolerance": tolerance, "surgery_s": surgery_s, "before": before, "after": after,
               "latency": latency,
               "safe_percent": next((p.safe_percent for p in plans if p.safe_percent is not None), None),
               "ratio_search": args.search.as_dict() if args.search is not None else None,
               "budget": check_against_budget(args, latency, before, after)}
    with atomic_write(os.path.join(work, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def time_pair(args, model, compact, pair, compact_pair, size, before, after):
    """Latency of the original and the pruned model on each --runtime, interleaved run by run, into
    ``before`` / ``after``; returns how it was measured (None when --latency-runs is 0)."""
    runs = args.latency_runs or (VERIFY_RUNS if args.budget else 0)
    if not runs:
        return None
    runtimes = args.runtime or default_runtimes()
    original = Deployable(model, *(pair or (None, None)))
    pruned = Deployable(compact, *compact_pair)
    timed = latency_columns({"original": original, "pruned": pruned}, runtimes, size, args.threads, runs)
    before.update(timed["original"])
    after.update(timed["pruned"])
    print(describe(runtimes, size, args.threads, runs, 5))
    return {"runtimes": runtimes, "threads": args.threads, "runs": runs, "warmup": 5, "img_size": size}


def check_against_budget(args, latency, before, after):
    """Print whether the written model met --target-ms, as measured; the summary's 'budget' entry."""
    if not args.budget:
        return None
    report = args.budget_report
    key = f"{report.runtime}_ms"
    measured = after.get(key) if latency else None
    print(budget_line(report, measured, before.get(key)))
    return {**report.as_dict(), "measured_ms": measured, "original_measured_ms": before.get(key),
            "met": measured is not None and measured <= report.target["ms"]}
