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

DEFAULT_LAYER_KEEP = 0.05   # the planner's floor per layer when --layer-keep is not given
VERIFY_RUNS = 10            # timed runs of the budget check when --latency-runs is 0


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


def run_budget(args, request, model, policy, graph, size, n_blocks=0):
    """Plan and build the pruned model; prints the prediction. Returns (compact, plans, BudgetReport)."""
    from yoloslim.prune.latency_plan import plan_to_budget
    layer_keep = args.layer_keep if args.layer_keep is not None else DEFAULT_LAYER_KEEP
    print(f"planning to --target-ms {request.target_ms:g} on {request.runtime} ({args.threads} thread(s), {size} px, "
          f"--layer-keep {layer_keep:g}) ...", flush=True)
    compact, plans, report = plan_to_budget(model, policy, request.runtime, size, args.threads, request.target_ms,
                                            request.target_flops, request.target_params, layer_keep, graph, n_blocks)
    cached = "all from the cache" if not report.measured_points else f"{report.measured_points} measured"
    print(f"latency tables: {cached}; the rest of the model (not convs) predicted as one constant")
    print("\n".join(report.lines()))
    return compact, plans, report


def budget_line(report, measured, original_measured):
    """'budget met: predicted X ms, measured Y ms, target T ms' (or missed, with by how much)."""
    target = report.target["ms"]
    if measured is None:
        return (f"budget not checked: predicted {report.predicted_ms:.2f} ms, target {target:g} ms "
                f"(the written model was not timed)")
    verdict = "met" if measured <= target else f"missed by {measured / target - 1:.0%}"
    return (f"budget {verdict}: predicted {report.predicted_ms:.2f} ms, measured {measured:.2f} ms, target "
            f"{target:g} ms on {report.runtime} (original: predicted {report.original_ms:.2f} ms, measured "
            f"{original_measured:.2f} ms, interleaved)")
