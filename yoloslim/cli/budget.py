"""``--target-ms`` for the prune scripts: prune to a latency budget on the runtime users deploy on.

    normal_prune.py --cfg m.cfg --weights m.weights --target-ms 40 --runtime onnxruntime --threads 2

The latency-aware planner (yoloslim/prune/latency_plan.py) chooses the kept channels from
per-layer latency tables measured on that runtime, size and thread count (cached per machine);
``--target-flops`` / ``--target-params`` given with it are further budgets of the same plan
(alone they keep choosing a ratio, yoloslim/cli/auto_percent.py). After the written model is
timed against the original, interleaved, the run says whether the budget was met.
"""
from dataclasses import dataclass

from yoloslim.cli import checks
from yoloslim.cli.auto_percent import AUTO
from yoloslim.errors import PruneError
from yoloslim.prune.latency_plan import BudgetUnreachable, plan_to_budget

DEFAULT_LAYER_KEEP = 0.05   # the planner's floor per layer when --layer-keep is not given
VERIFY_RUNS = 10            # timed runs of the budget check when --latency-runs is 0
CALIBRATION_ROUNDS = 4      # plans made against the measured model after the first, at most
CALIBRATION_RUNS = 10       # timed runs of each calibration measurement
CLOSE_ENOUGH = 0.05         # a plan measured at most this far under the budget (never over) is kept
AIM = 1 - CLOSE_ENOUGH / 2  # re-plans aim this far into that window, so the final check's noise stays in it


@dataclass
class BudgetRequest:
    target_ms: float
    runtime: str
    target_flops: float = None
    target_params: float = None


def add_budget_options(p):
    g = p.add_argument_group("pruning to a latency budget (the latency-aware planner)")
    g.add_argument("--target-ms", type=checks.positive_float, default=None,
                   help="prune until the model is predicted to run in this many ms on --runtime (one of opencv, "
                        "onnxruntime, openvino, torch) with --threads at --img-size; channels go where removing "
                        "them saves the most time per |gamma| lost; --target-flops / --target-params join it as "
                        "further budgets")


def check_budget(args, channels=True):
    """The BudgetRequest of ``args`` (None without --target-ms); contradictions refused in one line
    before any work."""
    if args.target_ms is None:
        return None
    if not channels or args.percent not in (None, AUTO):
        raise PruneError(f"--percent {args.percent:g} fixes the ratio but --target-ms asks for the plan that meets "
                         f"a latency budget; drop one")
    quality = [f for f, v in (("--max-drop", args.max_drop), ("--min-agreement", args.min_agreement)) if v is not None]
    if quality:
        raise PruneError(f"--target-ms and {quality[0]} are alternative yardsticks; pass only one")
    if not args.runtime:
        raise PruneError("--target-ms needs the runtime the budget is in: pass --runtime opencv, onnxruntime or "
                         "openvino (and --threads as deployed)")
    if len(args.runtime) != 1:
        raise PruneError(f"--target-ms is a budget on one runtime but --runtime names {len(args.runtime)} "
                         f"({','.join(args.runtime)}); pass one")
    return BudgetRequest(args.target_ms, args.runtime[0], args.target_flops, args.target_params)


def run_budget(request, model, policy, graph, size, threads, layer_keep=None, n_blocks=0):
    """Plan and build the pruned model, calibrating the plan's target against the measured model;
    prints the prediction. Returns (compact, plans, BudgetReport)."""
    layer_keep = layer_keep if layer_keep is not None else DEFAULT_LAYER_KEEP
    print(f"planning to --target-ms {request.target_ms:g} on {request.runtime} ({threads} thread(s), {size} px, "
          f"--layer-keep {layer_keep:g}) ...", flush=True)

    def plan(target):
        return plan_to_budget(model, policy, request.runtime, size, threads, target, request.target_flops,
                              request.target_params, layer_keep, graph, n_blocks)

    target, (compact, plans, report) = first_plan(plan, request, model, size, threads)
    cached = ("all from the cache" if not report.measured_points else
              "every layer from the cache, the whole-model calibration measured again (this machine no longer ran "
              "the model as fast as when it was cached)" if not report.measured_layers else
              f"{report.measured_points} measured")
    print(f"latency tables: {cached}; the rest of the model (not convs) predicted as one constant")
    compact, plans, report = calibrate(plan, request, model, (compact, plans, report), size, threads, target)
    print("\n".join(report.lines()))
    return compact, plans, report


def first_plan(plan, request, model, size, threads):
    """(the planner's target, the plan for it): the budget itself, unless the tables put it below the
    floor plan. Their level is that of the calibration set, timed among one-layer networks, and the
    machine may run the model faster than they say (yolov5n at 64 px on ONNX Runtime: 0.93 ms
    against 1.26), so a budget is refused only after the unpruned model is timed and the budget
    scaled to the tables' level fails too."""
    try:
        return request.target_ms, plan(request.target_ms)
    except BudgetUnreachable as e:
        if e.budget != "ms":
            raise
        measured = measure_original(model, request.runtime, size, threads)
        scaled = request.target_ms * e.original / measured
        if scaled <= request.target_ms:
            raise
        print(f"calibration: the unpruned model is predicted at {e.original:.2f} ms, measured {measured:.2f} ms; "
              f"planning for {scaled:.2f} ms of the tables", flush=True)
        try:
            return scaled, plan(scaled)
        except BudgetUnreachable as again:
            raise PruneError(f"--target-ms {request.target_ms:g} ms cannot be met: with every prunable layer at its "
                             f"floor (--layer-keep) the plan would run in about {again.floor * measured / e.original:.2f} "
                             f"ms here (the unpruned model measured {measured:.2f} ms, predicted {e.original:.2f}); "
                             f"raise the target or lower --layer-keep") from None


def calibrate(plan, request, model, planned, size, threads, target=None):
    """Re-plan against the measured model until it lands at most CLOSE_ENOUGH under the budget.
    ``planned`` is the plan made for ``target`` (default: the budget).

    The tables time each conv alone; the whole model runs faster or slower than their sum (fused
    layers, caches, the runtime's graph passes): measured / predicted was x0.74 to x1.44 for
    yolov3-tiny at 416 px on 1 thread (four budgets, ONNX Runtime, OpenCV, OpenVINO), and far from
    proportional in OpenVINO. So measured ms is searched as a function of the planner's target:
    each measurement times the original and the plan interleaved, and the next target comes from
    the measured points around the budget (yoloslim/cli/budget.py:next_target), CALIBRATION_ROUNDS
    times at most, aiming at AIM of the budget. The plan measured slowest within the budget is kept
    (it removed the least), else the fastest; the run's final check times it once more. A plan
    measured over the budget is never accepted as close enough: the user's budget is a ceiling.
    How the checks then land on every cfg of the zoo: benchmarks/results/budget_zoo.md.
    """
    target, points, tried = target or request.target_ms, [], []
    if planned[2].predicted_ms >= planned[2].original_ms:
        # nothing pruned: the tables say the model meets the budget as it is; only a measurement
        # may say so to the user (whole-model times drift from the cached calibration)
        original_measured = planned[2].original_timed_ms = measure_original(model, request.runtime, size, threads)
        print(f"calibration: the unpruned model is predicted at {planned[2].original_ms:.2f} ms, measured "
              f"{original_measured:.2f} ms", flush=True)
        if original_measured <= request.target_ms:
            return planned          # the caller says there is nothing to prune
        points.append((planned[2].original_ms, original_measured))
        target = next_target(points, AIM * request.target_ms)
        try:
            planned = plan(target)
        except PruneError as e:
            raise PruneError(f"--target-ms {request.target_ms:g}: the unpruned model measured "
                             f"{original_measured:.2f} ms here (the tables predicted {planned[2].original_ms:.2f}); "
                             f"scaled to that, {e}") from None
    for round_ in range(CALIBRATION_ROUNDS + 1):
        measured, original_measured = measure_plan(model, planned[0], request.runtime, size, threads)
        print(f"calibration: planned for {target:.2f} ms, predicted {planned[2].predicted_ms:.2f} ms, measured "
              f"{measured:.2f} ms", flush=True)
        tried.append((measured, planned))
        if not points:     # the unpruned model: the planner's target for it is its own prediction
            points.append((planned[2].original_ms, original_measured))
        points.append((target, measured))
        if lands(measured, request.target_ms) or round_ == CALIBRATION_ROUNDS:
            break
        target = next_target(points, AIM * request.target_ms)
        try:
            planned = plan(target)
        except PruneError:          # a target below what the ladders reach: keep what was measured
            break
    kept = slowest_within(tried, request.target_ms)
    kept[2].target["ms"] = request.target_ms      # the user's budget is what the run is judged by
    return kept


def lands(measured, budget):
    """At most the budget, and at most CLOSE_ENOUGH under it."""
    return (1 - CLOSE_ENOUGH) * budget <= measured <= budget


def slowest_within(tried, budget):
    """Of (measured ms, plan) pairs, the plan measured slowest within the budget, else the fastest."""
    within = [t for t in tried if t[0] <= budget]
    return max(within, key=lambda t: t[0])[1] if within else min(tried, key=lambda t: t[0])[1]


def measure_plan(model, compact, runtime, size, threads):
    """(pruned, original) median ms, timed interleaved."""
    from yoloslim.deploy.latency import compare
    timed = compare({"original": model, "pruned": compact}, runtime, size, threads, CALIBRATION_RUNS)
    return timed["pruned"].median, timed["original"].median


def nothing_to_prune(request, report):
    """The refusal when the model already meets the budget, with the measurement behind it."""
    measured = (f", measured {report.original_timed_ms:.2f} ms" if report.original_timed_ms is not None
                else "")
    return (f"--target-ms {request.target_ms:g}: the unpruned model already meets it (predicted "
            f"{report.original_ms:.2f} ms{measured} on {request.runtime}); nothing to prune")


def measure_original(model, runtime, size, threads):
    """Median ms of the unpruned model as the budget check times it: interleaved with a second
    model (here a copy of itself). Alone, a small model keeps its caches warm and runs much faster
    than interleaved (yolov3-narrow at 64 px on ONNX Runtime: 0.91 ms against 2.01), and a budget
    scaled by the alone time was then missed by the check by 136%."""
    from yoloslim.deploy.latency import compare
    return compare({"original": model, "copy": model}, runtime, size, threads, CALIBRATION_RUNS)["original"].median


def next_target(points, budget):
    """The planner target whose measured ms should meet ``budget``, from (target, measured ms)
    points: between the nearest points on either side of the budget where there are both (false
    position), else along the line through the two nearest above it (in proportion, from one
    point). Never past the unpruned model's own prediction (the first point), where nothing would
    be pruned, nor to zero."""
    above = sorted((p for p in points if p[1] > budget), key=lambda p: p[1])
    below = sorted((p for p in points if p[1] <= budget), key=lambda p: -p[1])
    a, b = (above[0], below[0]) if above and below else ((above + below) * 2)[:2]   # one point: a == b
    slope = (a[1] - b[1]) / (a[0] - b[0]) if a[0] != b[0] else 0.0
    target = a[0] + (budget - a[1]) / slope if slope > 0 else a[0] * budget / a[1]
    return min(max(target, 1e-3), 0.98 * points[0][0])


def budget_line(report, measured, original_measured):
    """'budget met: predicted X ms, measured Y ms, target T ms' (or missed, with by how much)."""
    target = report.target["ms"]
    if measured is None:
        return (f"budget not checked: predicted {report.predicted_ms:.2f} ms, target {target:g} ms "
                f"(the written model was not timed)")
    verdict = "met" if measured <= target else f"missed by {measured / target - 1:.1%}"
    return (f"budget {verdict}: predicted {report.predicted_ms:.2f} ms, measured {measured:.2f} ms, target "
            f"{target:g} ms on {report.runtime} (original: predicted {report.original_ms:.2f} ms, measured "
            f"{original_measured:.2f} ms, interleaved)")
