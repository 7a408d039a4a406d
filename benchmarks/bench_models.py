"""The benchmark's models and the per-method measurements: train once, then prune, time, fine-tune.

A model is a ``ModelSpec``: its topology, where its weights start, the sparsity-training
recipe, the methods that apply to it at their fixed ratios, and the targets its rows are
judged against. ``bench_model`` returns one dict per model that the report reads.
"""
import os
import statistics
import time
from dataclasses import dataclass, field

from yoloslim.pipeline.stages import Method, derive_cfg, measure, prune_checkpoint, run_parallel, run_training, save_pruned
from yoloslim.train.config import TrainConfig

IMG_SIZE = 160
BATCH_SIZE = 8
LR0 = 0.003                    # Adam; where every training stage starts (fine-tunes: see finetune_lr0)
FINETUNE_EPOCHS = 4


@dataclass
class Targets:
    """What a row must reach (issue 13), after fine-tuning, against the unpruned model."""
    label: str
    params_cut: float          # fraction of parameters removed, at least
    speedup: float             # OpenCV DNN speed-up, at least
    max_drop: float            # mAP@0.5 below the unpruned model, at most


RESIDUAL = Targets("residual yolov3", params_cut=0.90, speedup=3.0, max_drop=0.01)
TINY = Targets("tiny", params_cut=0.50, speedup=1.5, max_drop=0.01)
SPEED_PER_FLOP = 0.8           # every method: speed-up at least this share of the FLOP cut


@dataclass
class ModelSpec:
    name: str
    title: str
    cfg: str                   # topology ("coco-tiny": the real COCO cfg); classes and anchors re-derived
    start: str                 # "coco-tiny" (real COCO yolov3-tiny weights) or "scratch"
    epochs: int
    s: float                   # L1 strength on BN gamma, constant, during the whole training
    prune: int                 # which BNs carry it (train.py --prune)
    lrf: float                 # final LR / lr0 (cosine); 1.0 = constant
    methods: list
    sweep_policy: str
    sweep: tuple
    targets: Targets
    notes: list = field(default_factory=list)


MODELS = {
    "tiny": ModelSpec(
        "tiny", "yolov3-tiny, fine-tuned from the real COCO weights", "coco-tiny", "coco-tiny",
        epochs=26, s=0.002, prune="tiny", lrf=0.05,
        methods=[Method("tiny (= normal)", "tiny", 0.35, layer_keep=0.05),
                 Method("regular 2^n", "regular-pow2", 0.35, layer_keep=0.05),
                 Method("regular x8", "regular-x8", 0.35, layer_keep=0.05),
                 Method("filter L1", "l1", 0.35)],
        sweep_policy="tiny", sweep=(0.2, 0.3, 0.35, 0.4, 0.5, 0.6), targets=TINY,
        notes=["tiny and normal are one policy on a model without shortcuts: one row"]),
    "narrow": ModelSpec(
        "narrow", "narrow residual yolov3, from scratch", "cfg/yolov3-narrow.cfg", "scratch",
        epochs=60, s=0.002, prune="shortcut", lrf=1.0,
        methods=[Method("normal", "normal", 0.8, layer_keep=0.05),
                 Method("regular 2^n", "regular-pow2", 0.8, layer_keep=0.05),
                 Method("regular x8", "regular-x8", 0.8, layer_keep=0.05),
                 Method("shortcut", "shortcut", 0.87, layer_keep=0.05),
                 Method("layer+channel", "shortcut", 0.86, n_blocks=2, layer_keep=0.05),
                 Method("filter L1", "l1", 0.5)],
        sweep_policy="shortcut", sweep=(0.7, 0.8, 0.85, 0.87, 0.88, 0.9), targets=RESIDUAL,
        notes=["layer+channel removes 2 whole residual blocks before pruning channels"]),
    "yolov4-tiny": ModelSpec(
        "yolov4-tiny", "yolov4-tiny, from scratch", "cfg/yolov4-tiny.cfg", "scratch",
        epochs=60, s=0.002, prune="shortcut", lrf=1.0,
        methods=[Method("normal", "normal", 0.7, layer_keep=0.05),
                 Method("regular 2^n", "regular-pow2", 0.7, layer_keep=0.05),
                 Method("regular x8", "regular-x8", 0.7, layer_keep=0.05),
                 Method("filter L1", "l1", 0.5)],
        sweep_policy="normal", sweep=(0.5, 0.6, 0.7, 0.8, 0.85, 0.9), targets=TINY,
        notes=["no layer of yolov3-tiny's COCO weights has yolov4-tiny's shape: trained from scratch",
               "judged by the tiny targets (the issue sets none for yolov4-tiny)"]),
}


def quick_settings():
    """The smoke run: every code path, minutes instead of an hour; its numbers mean nothing."""
    return {"n_train": 64, "n_val": 32, "epochs": 1, "finetune_epochs": 1, "latency_runs": 3,
            "sweep_points": 2, "input_sizes": (128, 160), "surgery_runs": 1}


@dataclass
class Trained:
    """The unpruned, sparsity-trained model every method of one spec starts from."""
    model: object
    checkpoint: str            # .pt of ours (the teacher for distillation, the start of every prune)
    cfg: str                   # .cfg + .weights of the same model, for OpenCV and the report
    weights: str
    train_minutes: float
    start_gammas: object       # |gamma| before training, for the before/after figure


TRAIN_THREADS = 1   # measured: 18 s per narrow epoch on 1 thread, 21 s on 2, and 2 threads kept slowing
                    # down as gammas collapsed (denormals) where 1 thread with train.py's flush did not


def worker_threads(args):
    return args.threads or TRAIN_THREADS


def finetune_lr0(lrf):
    """Fine-tuning starts where the model's training ended (lr0 x lrf): a model that converged
    under a decaying LR is knocked off its optimum by a restart at lr0 (measured on tiny, 4 distilled
    epochs: from 0.003 they ended 0.012 below the unpruned model, from 0.001 or 0.0003 0.003 below),
    while one trained at a constant LR goes on at that LR."""
    return LR0 * lrf


def stage_config(args, data, out, epochs, weights, cfg=None, lr0=LR0, **more):
    """A benchmark training stage: Adam at ``lr0``, evaluated at its end only, quiet."""
    return TrainConfig(data, cfg=cfg, weights=weights, epochs=epochs, img_size=IMG_SIZE, batch_size=BATCH_SIZE,
                       out=out, lr0=lr0, eval_interval=1000, threads=worker_threads(args), quiet=True, **more)


def starting_weights(spec):
    """(source cfg, initial weights) of a spec."""
    if spec.start == "coco-tiny":
        from yoloslim.zoo.coco_tiny import fetch_tiny
        coco = fetch_tiny()
        return coco["cfg"], coco["weights"]
    return spec.cfg, None


def train_models(args, specs, data):
    """Every spec's sparsity training, ``args.jobs`` stages at a time; {name: Trained}."""
    from yoloslim.darknet.load import load_model
    from yoloslim.train.sparsity import policy_layers as sparsity_layers
    from yoloslim.train.sparsity import gamma_values
    jobs, start_gammas = [], {}
    for spec in specs:
        work = os.path.join(args.work, spec.name)
        src_cfg, weights = starting_weights(spec)
        cfg, _ = derive_cfg(src_cfg, data, IMG_SIZE, os.path.join(work, f"{spec.name}-data.cfg"))
        start = load_model(src_cfg, weights, IMG_SIZE) if weights else load_model(cfg, None, IMG_SIZE)
        start_gammas[spec.name] = gamma_values(start, sparsity_layers(start.module_defs, spec.prune))
        config = stage_config(args, data, os.path.join(work, "train"), args.settings.get("epochs", spec.epochs),
                              weights, cfg=cfg, sr=True, s=spec.s, prune=spec.prune, sr_schedule="constant",
                              lrf=spec.lrf)
        jobs.append(dict(config=config))
    # longest first (by epochs), so the short stage fills the gap at the end rather than leaving one
    order = sorted(range(len(specs)), key=lambda i: -jobs[i]["config"].epochs)
    specs, jobs = [specs[i] for i in order], [jobs[i] for i in order]
    print(f"training {', '.join(s.name for s in specs)} ({args.jobs} at a time)", flush=True)
    results = run_parallel(run_training, jobs, args.jobs, name=lambda job: job["config"].out,
                           threads=worker_threads(args))
    return {spec.name: trained_model(job["config"].out, result, start_gammas[spec.name])
            for spec, job, result in zip(specs, jobs, results)}


def trained_model(folder, result, start_gammas):
    from yoloslim.io import atomic_write
    model, _, _ = prune_checkpoint(result["last"], Method("none", "normal", None))
    model_cfg = os.path.join(folder, "model.cfg")
    with atomic_write(model_cfg, "w") as f:
        f.write(model.cfg_text())
    return Trained(model, result["last"], model_cfg, result["last_weights"], stage_minutes(folder), start_gammas)


def stage_minutes(folder):
    """Training time of a stage from its own per-epoch record, so a cached or resumed stage still
    reports what it cost to train."""
    import csv
    with open(os.path.join(folder, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    return sum(float(r["epoch_s"] or 0) + float(r["eval_s"] or 0) for r in rows) / 60


def time_pair(original, compact, pair_original, pair_compact, runs):
    """OpenCV DNN and PyTorch batch-1 latency of a pruned model and its original, interleaved."""
    from yoloslim.deploy.opencv_dnn import read_net
    from yoloslim.deploy.measure import interleaved_ms, opencv_forward, torch_forward
    nets = [read_net(*pair_original), read_net(*pair_compact)]
    cv = interleaved_ms([opencv_forward(n, IMG_SIZE, original.in_channels) for n in nets], 5, runs)
    pt = interleaved_ms([torch_forward(m, IMG_SIZE) for m in (original, compact)], 5, runs)
    med = [statistics.median(t) for t in cv + pt]
    return {"opencv_ms_original": med[0], "opencv_ms": med[1], "torch_ms_original": med[2], "torch_ms": med[3]}


def val_images(data):
    return os.path.join(os.path.dirname(data), "images", "val")


def prune_method(args, spec, trained, method, data):
    """One row before fine-tuning: prune, write the pair, measure, time against the original."""
    from yoloslim.eval.agreement import agreement
    from yoloslim.errors import PruneError
    slug = slug_of(method.name)
    row = {"method": method.name, "policy": method.policy, "percent": method.percent, "blocks": method.n_blocks}
    try:
        _, compact, _ = prune_checkpoint(trained.checkpoint, method)
    except PruneError as e:      # e.g. a quick run's barely trained model: say so in the row
        return {**row, "error": str(e)}
    pair = save_pruned(compact, os.path.join(args.work, spec.name, "pruned", slug), slug)
    row.update(measure(compact, data, IMG_SIZE, runs=0))
    row.update(time_pair(trained.model, compact, (trained.cfg, trained.weights), pair, args.latency_runs))
    row["agreement"] = agreement(trained.model, compact, val_images(data), IMG_SIZE).score
    row["pair"] = list(pair)
    return row


def prune_model(args, spec, trained, data):
    """Every method of a spec, pruned and timed (one at a time: latency wants an idle machine);
    returns what the report needs, less the fine-tuned scores (``finetune_models``)."""
    from yoloslim.train.sparsity import policy_layers as sparsity_layers
    from yoloslim.train.sparsity import gamma_stats, gamma_values, log_histograms
    print(f"\n=== {spec.title} ===", flush=True)
    layers = sparsity_layers(trained.model.module_defs, spec.prune)
    original = {"method": "unpruned (sparsity-trained)", **measure(trained.model, data, IMG_SIZE, runs=0)}
    rows = []
    for method in spec.methods:
        t0 = time.time()
        rows.append(prune_method(args, spec, trained, method, data))
        print(f"[{spec.name}] {method.name}: " + ", ".join(f"{k} {v:.4g}" for k, v in rows[-1].items()
                                                           if isinstance(v, float)) + f" ({time.time() - t0:.0f} s)",
              flush=True)
    timed = [r for r in rows if "opencv_ms_original" in r]
    if timed:   # the original's latency: the median over its interleaved pairs
        for key in ("opencv_ms", "torch_ms"):
            original[key] = statistics.median(r[key + "_original"] for r in timed)
    return {"spec": spec.name, "title": spec.title, "start": spec.start, "epochs": args.settings.get("epochs", spec.epochs),
            "s": spec.s, "lrf": spec.lrf, "train_minutes": trained.train_minutes, "original": original, "rows": rows,
            "gamma_stats": gamma_stats(trained.model, layers), "checkpoint": trained.checkpoint,
            "gamma_histograms": log_histograms([trained.start_gammas, gamma_values(trained.model, layers)]),
            "pair": [trained.cfg, trained.weights], "targets": vars(spec.targets), "notes": spec.notes}


def finetune_models(args, results, data):
    """Every pruned row fine-tuned with and without distillation, ``args.jobs`` at a time; the
    scores go into the rows."""
    jobs, slots = [], []
    for result in results:
        teacher = (result["pair"][0], result["checkpoint"])
        for row in result["rows"]:
            if "error" in row:
                continue
            for recipe in ("kd", "plain"):
                folder = os.path.join(args.work, result["spec"], f"ft-{recipe}", slug_of(row["method"]))
                jobs.append(dict(args=args, folder=folder, pair=row["pair"], data=data, teacher=teacher,
                                 distill=recipe == "kd", lr0=finetune_lr0(result["lrf"])))
                slots.append((row, recipe))
    print(f"\nfine-tuning {len(jobs)} pruned models ({args.jobs} at a time)", flush=True)
    scores = run_parallel(finetune_and_score, jobs, args.jobs, name=lambda job: job["folder"],
                          threads=worker_threads(args))
    for (row, recipe), score in zip(slots, scores):
        row[f"mAP50_{recipe}"], row[f"agreement_{recipe}"] = score["mAP50"], score["agreement"]
        if recipe == "kd":
            row["finetune_epochs"] = args.settings.get("finetune_epochs", FINETUNE_EPOCHS)
            row["kd_checkpoint"] = score["checkpoint"]


def finetune_and_score(args, folder, pair, data, teacher, distill, lr0):
    """Fine-tune a pruned pair (distilled from the unpruned ``teacher`` (cfg, checkpoint) or not),
    then its mAP@0.5 and its agreement with the teacher. Runs in a worker process."""
    from yoloslim.darknet.load import load_model, model_from_checkpoint
    from yoloslim.eval.agreement import agreement
    distillation = dict(t_cfg=teacher[0], t_weights=teacher[1]) if distill else {}
    result = run_training(stage_config(args, data, folder, args.settings.get("finetune_epochs", FINETUNE_EPOCHS),
                                       pair[1], cfg=pair[0], lr0=lr0, **distillation))
    tuned = load_model(pair[0], result["last"], IMG_SIZE)
    reference = model_from_checkpoint(teacher[1]).eval()
    return {"mAP50": measure(tuned, data, IMG_SIZE, runs=0)["mAP50"], "checkpoint": result["last"],
            "agreement": agreement(reference, tuned, val_images(data), IMG_SIZE).score}


def slug_of(method_name):
    """Folder/file name of a method: 'regular 2^n' -> 'regular_2n'."""
    keep = "".join(c if c.isalnum() else "_" for c in method_name.replace("^", ""))
    return "_".join(part for part in keep.split("_") if part)
