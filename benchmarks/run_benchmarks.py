"""Produce BENCHMARKS.md: every method on the narrow residual yolov3 and on yolov3-tiny.

    python benchmarks/run_benchmarks.py                # full run (about an hour on 2 CPU cores)
    python benchmarks/run_benchmarks.py --quick        # a few minutes: tiny epochs, for checking the script

For each model: train on the synthetic set, sparsity-train, then per method prune, measure
(params, FLOPs, PyTorch and OpenCV batch-1 CPU latency as medians after warm-up, mAP@0.5),
fine-tune with distillation (and, for the main method, also without), and measure again.
Also: a ratio sweep plot (mAP against parameters), iterative against one-shot pruning,
an input-size study, and prune surgery time on full yolov3. Training stages are cached
under --work, so an interrupted run resumes.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.chdir(ROOT)

from utils.io import atomic_write  # noqa: E402
from utils.pipeline import (Method, ensure_data, machine_line, markdown_table, measure, prune_checkpoint,  # noqa: E402
                            run_training, save_pruned)

NARROW_METHODS = [
    Method("normal", "normal", 0.6, layer_keep=0.05),
    Method("regular 2^n", "regular-pow2", 0.6, layer_keep=0.05),
    Method("regular x8", "regular-x8", 0.6, layer_keep=0.05),
    Method("shortcut", "shortcut", 0.7, layer_keep=0.05),
    Method("layer+channel", "shortcut", 0.7, n_blocks=2, layer_keep=0.05),
    Method("filter L1", "l1", 0.5),
]
TINY_METHODS = [
    Method("tiny", "tiny", 0.6, layer_keep=0.05),
    Method("regular x8", "regular-x8", 0.6, layer_keep=0.05),
    Method("filter L1", "l1", 0.5),
]
KD_AND_PLAIN = {"shortcut", "tiny"}   # methods fine-tuned both with and without distillation


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/bench", help="cache folder for data and training stages")
    p.add_argument("--out", default="BENCHMARKS.md")
    p.add_argument("--quick", action="store_true", help="tiny settings to check the script end to end")
    p.add_argument("--img-size", type=int, default=160)
    p.add_argument("--n-train", type=int, default=800)
    p.add_argument("--n-val", type=int, default=200)
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--tiny-epochs", type=int, default=10, help="normal training epochs of yolov3-tiny")
    p.add_argument("--sparse-epochs", type=int, default=6)
    p.add_argument("--finetune-epochs", type=int, default=4)
    p.add_argument("--s", type=float, default=0.005)
    p.add_argument("--lr0", type=float, default=0.003)
    p.add_argument("--latency-runs", type=int, default=30)
    p.add_argument("--only", choices=["narrow", "tiny"], help="benchmark one model only")
    p.add_argument("--latency-only", action="store_true",
                   help="re-time every model of a finished run (in --work) on a quiet machine, rewrite the report")
    args = p.parse_args()
    if args.quick:
        args.work, args.n_train, args.n_val = args.work + "-quick", 64, 32
        args.epochs, args.tiny_epochs, args.sparse_epochs, args.finetune_epochs, args.latency_runs = 1, 1, 1, 1, 3
    return args


def optim(args):
    return ["--adam", "--lr0", args.lr0, "--eval-interval", 1000]


def train_base_and_sparse(args, name, cfg, data, epochs):
    work = os.path.join(args.work, name)
    common = dict(img_size=args.img_size, batch_size=16)
    base = run_training(os.path.join(work, "train"), cfg, data, epochs, extra=optim(args), **common)
    sparse = run_training(os.path.join(work, "sparse"), None, data, args.sparse_epochs, weights=base["last"],
                          extra=optim(args) + ["-sr", "--s", args.s, "--prune", 1, "--sr-schedule", "linear"],
                          **common)
    return base, sparse


def finetune(args, work, pruned_cfg, pruned_weights, data, teacher=None):
    extra = optim(args)
    if teacher:
        extra += ["--t_cfg", teacher[0], "--t_weights", teacher[1]]
    return run_training(work, pruned_cfg, data, args.finetune_epochs, img_size=args.img_size, batch_size=16,
                        weights=pruned_weights, extra=extra)


def bench_model(args, name, cfg, data, methods, epochs):
    """One table: the sparse original, then each method after prune and after fine-tune."""
    from models import load_model
    base, sparse = train_base_and_sparse(args, name, cfg, data, epochs)
    work = os.path.join(args.work, name)
    original, _, _ = prune_checkpoint(sparse["last"], Method("none", "normal", None))
    teacher_cfg = os.path.join(work, "sparse", "model.cfg")
    with atomic_write(teacher_cfg, "w") as f:
        f.write(original.cfg_text())
    teacher = (teacher_cfg, sparse["last"])
    ref = measure(original, data, args.img_size, teacher_cfg, sparse["last_weights"], args.latency_runs)
    rows = [{"method": "original (sparse-trained)", **ref, "mAP50_ft": None, "mAP50_ft_plain": None}]
    print(f"[{name}] original: {ref}")
    for m in methods:
        t0 = time.time()
        _, compact, _ = prune_checkpoint(sparse["last"], m)
        slug = slug_of(m.name)
        cfg_p, w_p = save_pruned(compact, os.path.join(work, "pruned", slug), slug)
        row = {"method": m.name, "percent": m.percent, "blocks": m.n_blocks,
               **measure(compact, data, args.img_size, cfg_p, w_p, args.latency_runs)}
        tuned = finetune(args, os.path.join(work, "ft-kd", slug), cfg_p, w_p, data, teacher)
        row["mAP50_ft"] = float(measure(load_model(cfg_p, tuned["last"], args.img_size), data, args.img_size,
                                        runs=0)["mAP50"])
        row["mAP50_ft_plain"] = None
        if m.name in KD_AND_PLAIN:
            plain = finetune(args, os.path.join(work, "ft-plain", slug), cfg_p, w_p, data)
            row["mAP50_ft_plain"] = float(measure(load_model(cfg_p, plain["last"], args.img_size), data,
                                                  args.img_size, runs=0)["mAP50"])
        rows.append(row)
        print(f"[{name}] {m.name}: {row} ({time.time() - t0:.0f} s)")
    return {"base_mAP50": base.get("mAP50"), "rows": rows, "sparse": sparse}


def ratio_sweep(args, name, sparse, data, policy, percents):
    """mAP right after pruning (no fine-tune) and parameters, over pruning ratios."""
    points = []
    for pct in percents:
        _, compact, _ = prune_checkpoint(sparse["last"], Method(f"{pct}", policy, pct, layer_keep=0.02))
        r = measure(compact, data, args.img_size, runs=0)
        points.append({"percent": pct, "params": r["params"], "GFLOPs": r["GFLOPs"], "mAP50": r["mAP50"]})
    return points


def plot_sweeps(sweeps, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in sweeps.items():
        ax.plot([p["params"] / 1e6 for p in points], [p["mAP50"] for p in points], "o-", label=label)
        for p in points:
            ax.annotate(f"{p['percent']:.2f}", (p["params"] / 1e6, p["mAP50"]), fontsize=7)
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("mAP@0.5 right after pruning")
    ax.set_title("mAP against size over a ratio sweep (labels: --percent)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def iterative_vs_oneshot(args, sparse, data, target=0.7, cycles=2):
    """Seed 004 plan D: k cycles of (prune a smaller ratio, fine-tune, sparsity-train) vs one shot.

    Each cycle removes the same fraction r of what is left, so (1 - r)^k = 1 - target.
    """
    from models import load_model
    work = os.path.join(args.work, "narrow", "iterative")
    step = 1 - (1 - target) ** (1 / cycles)
    weights, cfg_p, history = sparse["last"], None, []
    for k in range(cycles):
        _, compact, _ = prune_checkpoint(weights, Method("iter", "shortcut", step, layer_keep=0.05))
        cfg_p, w_p = save_pruned(compact, os.path.join(work, f"cycle{k}"), f"cycle{k}")
        tuned = finetune(args, os.path.join(work, f"cycle{k}-ft"), cfg_p, w_p, data)
        history.append({"cycle": k + 1, "params": sum(p.numel() for p in compact.parameters())})
        if k < cycles - 1:
            sp = run_training(os.path.join(work, f"cycle{k}-sparse"), None, data, max(1, args.sparse_epochs // 2),
                              img_size=args.img_size, batch_size=16, weights=tuned["last"],
                              extra=optim(args) + ["-sr", "--s", args.s, "--prune", 1])
            weights = sp["last"]
        else:
            weights = tuned["last"]
    final = load_model(cfg_p, weights, args.img_size)
    return {"step_percent": step, "cycles": cycles, "history": history,
            **measure(final, data, args.img_size, runs=0)}


def input_size_study(args, cfg_path, weights_path, data, sizes):
    from models import load_model
    rows = []
    for size in sizes:
        model = load_model(cfg_path, weights_path, size)
        rows.append({"img_size": size, **measure(model, data, size, cfg_path, weights_path, args.latency_runs)})
    return rows


def surgery_times(args):
    out = os.path.join(args.work, "surgery.json")
    subprocess.run([sys.executable, "benchmarks/surgery_time.py", "--runs", "3" if args.quick else "5",
                    "--out", out], check=True)
    with open(out) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- report


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def method_table(result):
    ref = result["rows"][0]
    header = ["method", "params", "GFLOPs", "torch ms", "OpenCV ms", "OpenCV speed-up", "speed-up / FLOP cut",
              "mAP@0.5 pruned", "fine-tuned (KD)", "fine-tuned (no KD)"]
    rows = []
    for r in result["rows"]:
        flop_cut = ref["GFLOPs"] / r["GFLOPs"]
        speed = ref["opencv_ms"] / r["opencv_ms"]
        rows.append([r["method"], f"{r['params']:,} ({1 - r['params'] / ref['params']:.0%} fewer)",
                     f"{r['GFLOPs']:.3f}", f"{r['torch_ms']:.2f}", f"{r['opencv_ms']:.2f}", f"x{speed:.2f}",
                     f"{speed / flop_cut:.2f}", f"{r['mAP50']:.4f}", fmt(r.get("mAP50_ft"), ".4f"),
                     fmt(r.get("mAP50_ft_plain"), ".4f")])
    return markdown_table(header, rows)


def write_report(args, results, path):
    cmd = "python benchmarks/run_benchmarks.py" + (" --quick" if args.quick else "")
    if results.get("retimed"):
        cmd += "` then `python benchmarks/run_benchmarks.py --latency-only"
    parts = [f"# Benchmarks\n\nEvery figure below is written by `{cmd}` ({results['wall_min']:.0f} min). "
             f"Machine: {machine_line()}. Latency: batch 1, CPU, median of {args.latency_runs} runs after 5 "
             f"warm-up runs, original and pruned models timed in the same process. Data: the synthetic "
             f"shapes set ({args.n_train} train / {args.n_val} val images, {args.img_size} px). Training from "
             f"scratch: {args.epochs} epochs (yolov3-tiny: {args.tiny_epochs}), then {args.sparse_epochs} epochs of sparsity training (s={args.s}, linear "
             f"decay, --prune 1), pruning, and {args.finetune_epochs} epochs of fine-tuning. mAP@0.5 is on the "
             f"validation images at {args.img_size} px. The original row is the sparsity-trained model that "
             f"every method prunes.\n"]
    for name, title in (("narrow", "Narrow residual yolov3 (cfg/yolov3-narrow.cfg)"),
                        ("tiny", "yolov3-tiny (cfg/yolov3-tiny-5cls.cfg)")):
        if name in results:
            r = results[name]
            parts.append(f"## {title}\n\nmAP@0.5 after normal training (before sparsity): "
                         f"{fmt(r['base_mAP50'], '.4f')}\n\n{method_table(r)}\n")
    if "sweep" in results:
        parts.append("## Ratio sweep\n\n![mAP against parameters](benchmarks/results/ratio_sweep.png)\n\n" +
                     markdown_table(["model", "percent", "params", "GFLOPs", "mAP@0.5 (no fine-tune)"],
                                    [[k, p["percent"], f"{p['params']:,}", f"{p['GFLOPs']:.3f}", f"{p['mAP50']:.4f}"]
                                     for k, pts in results["sweep"].items() for p in pts]) + "\n")
    if "iterative" in results:
        it, one = results["iterative"], results["narrow"]["rows"]
        shortcut = next((r for r in one if r["method"] == "shortcut"), None)
        parts.append("## Iterative against one-shot pruning (narrow, shortcut policy)\n\n" + markdown_table(
            ["schedule", "params", "mAP@0.5 (final)"],
            [[f"{it['cycles']} cycles of {it['step_percent']:.3f} (prune, fine-tune, sparsity)", f"{it['params']:,}",
              f"{it['mAP50']:.4f}"]] +
            ([["one shot 0.7 + fine-tune (KD)", f"{shortcut['params']:,}", fmt(shortcut.get('mAP50_ft'), '.4f')],
              ["one shot 0.7 + fine-tune (no KD)", f"{shortcut['params']:,}",
               fmt(shortcut.get('mAP50_ft_plain'), '.4f')]] if shortcut else [])) + "\n")
    if "input_size" in results:
        parts.append("## Input size (narrow, shortcut-pruned and fine-tuned)\n\n" + markdown_table(
            ["input", "GFLOPs", "torch ms", "OpenCV ms", "mAP@0.5"],
            [[r["img_size"], f"{r['GFLOPs']:.3f}", f"{r['torch_ms']:.2f}", f"{r['opencv_ms']:.2f}",
              f"{r['mAP50']:.4f}"] for r in results["input_size"]]) + "\n")
    if "surgery" in results:
        s = results["surgery"]
        parts.append(f"## Prune surgery time\n\nAnalysis, masks, compensation, compact build and .cfg/.weights "
                     f"write, random weights, 416 px; `{s['command']}` on {s['machine']}. Earlier toolkits: "
                     f"0.6-1.2 s on yolov3, 0.13 s on yolov3-tiny (REFERENCE.md).\n\n" + markdown_table(
                         ["cfg", "policy", "median s", "min s", "max s", "runs"],
                         [[r["cfg"], r["policy"], f"{r['median_s']:.3f}", f"{r['min_s']:.3f}", f"{r['max_s']:.3f}",
                           r["runs"]] for r in s["rows"]]) + "\n")
    with atomic_write(path, "w") as f:
        f.write("\n".join(parts))


def slug_of(method_name):
    """Folder/file name of a method: 'regular 2^n' -> 'regular_2n'."""
    return method_name.replace(" ", "_").replace("^", "").replace("+", "_")


def pruned_paths(work, name, method):
    slug = slug_of(method)
    folder = os.path.join(work, name, "pruned", slug)
    return os.path.join(folder, f"{slug}.cfg"), os.path.join(folder, f"{slug}.weights")


def retime(args):
    """Latency again for every row of a finished run, original and pruned timed in turn.

    Training in the same run (or anything else on the machine) can disturb the first
    figures; this pass loads the written .cfg/.weights pairs and times nothing else.
    """
    from models import load_model
    from utils.opencv_dnn import read_net
    from utils.torch_utils import opencv_latency_ms, torch_latency_ms
    with open(os.path.join(args.work, "results.json")) as f:
        results = json.load(f)
    for name in ("narrow", "tiny"):
        if name not in results:
            continue
        for row in results[name]["rows"]:
            if row["method"].startswith("original"):
                cfg_p = os.path.join(args.work, name, "sparse", "model.cfg")
                w_p = os.path.join(args.work, name, "sparse", "last.weights")
            else:
                cfg_p, w_p = pruned_paths(args.work, name, row["method"])
            model = load_model(cfg_p, w_p, args.img_size)
            row["torch_ms"] = torch_latency_ms(model, args.img_size, warmup=5, runs=args.latency_runs)
            row["opencv_ms"] = opencv_latency_ms(read_net(cfg_p, w_p), args.img_size, warmup=5,
                                                 runs=args.latency_runs)
            print(f"[{name}] {row['method']}: torch {row['torch_ms']:.2f} ms, OpenCV {row['opencv_ms']:.2f} ms")
    if "input_size" in results:
        cfg_s = os.path.join(args.work, "narrow", "input-size", "shortcut-finetuned.cfg")
        w_s = os.path.join(args.work, "narrow", "input-size", "shortcut-finetuned.weights")
        for row in results["input_size"]:
            model = load_model(cfg_s, w_s, row["img_size"])
            row["torch_ms"] = torch_latency_ms(model, row["img_size"], warmup=5, runs=args.latency_runs)
            row["opencv_ms"] = opencv_latency_ms(read_net(cfg_s, w_s), row["img_size"], warmup=5,
                                                 runs=args.latency_runs)
    results["retimed"] = True
    wall = results["wall_min"]
    finish(args, results, time.time() - wall * 60)


def main():
    args = parse_args()
    if args.latency_only:
        return retime(args)
    t0 = time.time()
    data = ensure_data(os.path.join(args.work, "data"), args.n_train, args.n_val, args.img_size)
    results = {}
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    if args.only in (None, "narrow"):
        results["narrow"] = bench_model(args, "narrow", "cfg/yolov3-narrow.cfg", data, NARROW_METHODS, args.epochs)
        finish(args, results, t0)  # partial report: an interrupted run still leaves its tables
    if args.only in (None, "tiny"):
        results["tiny"] = bench_model(args, "tiny", "cfg/yolov3-tiny-5cls.cfg", data, TINY_METHODS,
                                      args.tiny_epochs)
        finish(args, results, t0)
    sweeps = {}
    for name, policy in (("narrow", "shortcut"), ("tiny", "tiny")):
        if name in results:
            sweeps[name] = ratio_sweep(args, name, results[name]["sparse"], data, policy,
                                       [0.3, 0.5, 0.6, 0.7, 0.8, 0.9])
    if sweeps:
        results["sweep"] = sweeps
        plot_sweeps(sweeps, os.path.join("benchmarks", "results", "ratio_sweep.png"))
    if "narrow" in results:
        results["iterative"] = iterative_vs_oneshot(args, results["narrow"]["sparse"], data)
        ft = os.path.join(args.work, "narrow", "ft-kd", "shortcut", "last.pt")
        pruned_cfg = os.path.join(args.work, "narrow", "pruned", "shortcut", "shortcut.cfg")
        from models import load_model
        from utils.prune_utils import write_pruned
        final = load_model(pruned_cfg, ft)
        study_dir = os.path.join(args.work, "narrow", "input-size")
        os.makedirs(study_dir, exist_ok=True)
        cfg_s, w_s = write_pruned(final, study_dir, "shortcut-finetuned")
        results["input_size"] = input_size_study(args, cfg_s, w_s, data, [128, 160, 192, 256, 320])
    results["surgery"] = surgery_times(args)
    finish(args, results, t0)
    print(f"wrote {args.out} in {results['wall_min']:.1f} min")


def finish(args, results, t0):
    results["wall_min"] = (time.time() - t0) / 60
    for path in (os.path.join(args.work, "results.json"), os.path.join("benchmarks", "results", "results.json")):
        with atomic_write(path, "w") as f:
            json.dump(results, f, indent=2, default=str)
    write_report(args, results, args.out)


if __name__ == "__main__":
    main()
