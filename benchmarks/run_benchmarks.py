"""Write the second (accuracy) edition of the benchmarks, benchmarks/results/second_edition.md, and its
figures: every pruning method on converged models. (BENCHMARKS.md holds the third edition,
deployment speed: benchmarks/deploy_benchmarks.py.)

    python benchmarks/run_benchmarks.py            # the full run, from nothing (see benchmarks/results/second_edition.md for its wall time)
    python benchmarks/run_benchmarks.py --quick    # a smoke run in minutes; writes under runs/bench-quick/

Three models, each trained on the built-in synthetic set with L1 sparsity on its BN gammas
during training (the recipe `slim.py` measured): yolov3-tiny fine-tuned from the real COCO
weights, the narrow residual yolov3 and yolov4-tiny from scratch. For every method that
applies, at a fixed ratio: parameters, GFLOPs, OpenCV DNN and PyTorch batch-1 CPU latency
(each pruned model timed interleaved with its original in the same process), mAP@0.5 right
after pruning, the label-free agreement score, and mAP@0.5 after fine-tuning with and without
distillation; each row judged against the targets. Then a ratio sweep, iterative against
one-shot pruning, an input-size study, surgery time, and the earlier toolkits' published
figures set beside ours. Training stages are cached under --work: an interrupted run resumes.
Training and fine-tuning stages run --jobs at a time in worker processes; pruning, timing and
the input-size study run alone, so the latency columns are taken on an otherwise idle machine.
"""
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.chdir(ROOT)

from bench_models import (MODELS, finetune_models, prune_model, quick_settings,  # noqa: E402
                                     train_models, worker_threads)
from bench_report import write_figures, write_report  # noqa: E402
from results_file import rewrite_from  # noqa: E402
from bench_studies import input_size_study, iterative_vs_oneshot, ratio_sweep, surgery_times  # noqa: E402
from yoloslim.cli import checks  # noqa: E402
from yoloslim.errors import cli_main  # noqa: E402
from yoloslim.io import atomic_write  # noqa: E402
from yoloslim.pipeline.stages import ensure_data, machine_line, run_parallel  # noqa: E402


def parse_args(argv=None):
    import argparse
    p = checks.Parser(prog="benchmarks/run_benchmarks.py", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 64 training images, 1-epoch stages, 3 timed runs (under 15 min)")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), help="models to benchmark")
    p.add_argument("--work", type=checks.output_dir, help="cache of data and training stages "
                   "(default runs/bench, or runs/bench-quick with --quick)")
    p.add_argument("--out", type=checks.output_file,
                   help="the report (default benchmarks/results/second_edition.md; with --quick, <work>/BENCHMARKS.md)")
    p.add_argument("--figures", type=checks.output_dir,
                   help="folder for the figures and results.json (default benchmarks/results; "
                        "with --quick, <work>/results)")
    p.add_argument("--no-studies", action="store_true",
                   help="methods tables only: no sweep, iterative, input-size or surgery sections")
    p.add_argument("--report-only", action="store_true",
                   help="measure nothing: write the report and figures again from <figures>/results.json")
    p.add_argument("--threads", type=checks.positive_int,
                   help="torch threads for each training stage (default 1: faster here) and for timing (default torch's)")
    p.add_argument("--jobs", type=checks.positive_int, default=os.cpu_count() or 1,
                   help="training stages run at once, each in its own process (default: one per CPU core)")
    p.add_argument("--latency-runs", type=checks.number(int, lo=1, hi=10000), help="timed runs per model (default 30; --quick 3)")
    args = p.parse_args(argv)
    args.work = args.work or ("runs/bench-quick" if args.quick else "runs/bench")
    args.out = args.out or (os.path.join(args.work, "BENCHMARKS.md") if args.quick
                            else os.path.join("benchmarks", "results", "second_edition.md"))
    args.figures = args.figures or (os.path.join(args.work, "results") if args.quick else "benchmarks/results")
    args.settings = quick_settings() if args.quick else {}
    args.latency_runs = args.latency_runs or args.settings.get("latency_runs", 30)
    return args


def save_results(args, results, t0):
    results["wall_min"] = (time.time() - t0) / 60
    os.makedirs(args.figures, exist_ok=True)
    with atomic_write(os.path.join(args.figures, "results.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    write_figures(results, args.figures)
    write_report(args, results)


def rewrite_report(args):
    path = os.path.join(args.figures, "results.json")

    def write(results):
        write_figures(results, args.figures)
        write_report(args, results)
    rewrite_from(path, write)
    print(f"wrote {args.out} and {args.figures}/ from {path}")


def main(argv=None):
    args = parse_args(argv)
    if args.report_only:
        return rewrite_report(args)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    t0 = time.time()
    n_train, n_val = args.settings.get("n_train", 800), args.settings.get("n_val", 200)
    data = ensure_data(os.path.join(args.work, "data"), n_train, n_val, 160)
    results = {"command": " ".join(["python", "benchmarks/run_benchmarks.py", *sys.argv[1:]]),
               "machine": machine_line(), "latency_runs": args.latency_runs, "jobs": args.jobs,
               "stage_threads": worker_threads(args), "quick": args.quick,
               "data": {"n_train": n_train, "n_val": n_val, "img_size": 160}, "models": {}}
    specs = [MODELS[name] for name in args.models]
    trained = train_models(args, specs, data)
    for spec in specs:       # one at a time, nothing else running: the latency columns want an idle machine
        results["models"][spec.name] = prune_model(args, spec, trained[spec.name], data)
    finetune_models(args, list(results["models"].values()), data)
    save_results(args, results, t0)   # the method tables, before the studies (an interrupted run resumes from its cache)
    if not args.no_studies:
        results["sweep"] = {spec.name: ratio_sweep(args, spec, results["models"][spec.name], data) for spec in specs}
        results["iterative"] = run_parallel(iterative_vs_oneshot, [
            dict(args=args, spec=spec, result=results["models"][spec.name], data=data) for spec in specs],
            args.jobs, name=lambda job: f"iterative {job['spec'].name}", threads=worker_threads(args))
        results["input_size"] = input_size_study(args, specs[0], results["models"][specs[0].name], data)
        results["surgery"] = surgery_times(args)
    save_results(args, results, t0)
    print(f"wrote {args.out} and {args.figures}/ in {results['wall_min']:.1f} min")


if __name__ == "__main__":
    cli_main(main)
