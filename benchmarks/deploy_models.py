"""The third edition's measurements: models at their deployment size, every prune method timed
against its original on every installed runtime, INT8, latency-aware against gamma-only, and the
per-layer profile. Each function returns plain dicts (JSON) that ``deploy_report`` renders.

Every timing is ``yoloslim.deploy.latency.compare``: batch 1, the original and its pruned models
interleaved run by run after warm-up, on ``threads`` threads set in each runtime.
"""
import os
import shutil
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

from bench_models import IMG_SIZE as TRAIN_SIZE
from bench_models import MODELS, slug_of, train_models, val_images
from yoloslim.deploy.latency import Deployable, compare
from yoloslim.deploy.measure import count_flops, count_params, forward_with_hooks
from yoloslim.errors import PruneError, SlimError
from yoloslim.pipeline.stages import ensure_data
from yoloslim.prune.engine import POLICIES, prune, write_pruned
from yoloslim.prune.graph import analyze
from yoloslim.prune.latency_plan import plan_to_budget

SHORT_EPOCHS = 30        # the narrow recipe when no full (60-epoch) stage is cached: see narrow_stage
FULL_SHRINK = 0.88       # share of full yolov3's prunable channels whose gamma is shrunk (the narrow
                         # model's sparsity training collapsed 87.9 % below 1e-2 in the second edition)
SHRINK_FACTOR = 1e-3
INT8_METHOD = "regular x8"
INT8_MODELS = ("tiny", "narrow")                # the issue's int8 rows: full yolov3's masks are synthetic
INT8_RUNTIMES = ("onnxruntime", "openvino")     # the runtimes that run ONNX Runtime's QDQ int8 model
PROFILE_METHOD = "shortcut"                     # the narrow row whose per-layer time is explained
PLANNER_METHODS = {"tiny": "tiny (= normal)", "narrow": "shortcut", "yolov3": "shortcut"}


@dataclass
class Subject:
    """A model as deployed: what it is, at which size, and where its weights came from."""
    name: str
    title: str
    img_size: int
    model: object
    methods: list
    origin: str                      # a sentence for the report: where the weights came from
    synthetic: bool = False          # masks from shrunk random gammas: speed only
    runs: int = None                 # timed runs, where not --runs (full yolov3: --full-runs)
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- the three models
def tiny_subject(args):
    """yolov3-tiny with the real COCO weights (scripts/fetch_tiny.py's cache), at 416 px."""
    from yoloslim.darknet.load import load_model
    from yoloslim.zoo.coco_tiny import fetch_tiny
    coco = fetch_tiny(os.path.join(args.root, "weights"))
    size = args.img_size or 416
    model = load_model(coco["cfg"], coco["weights"], size).eval()
    return Subject("tiny", "yolov3-tiny, real COCO weights", size, model, MODELS["tiny"].methods,
                   "the real COCO yolov3-tiny weights (scripts/fetch_tiny.py), not sparsity-trained: "
                   "its masks are those of a user pruning the released model")


def narrow_stage(args):
    """The narrow model's sparsity training through the second edition's own cached stage.

    With the second edition's cache (``--train-cache``, default runs/bench) holding the finished
    60-epoch stage, that stage is reused as it is. From nothing, the 60 epochs take 17 min of
    training on this 2-core machine (second edition, 1 thread per stage), over this run's 15-min
    allowance for training, so a ``SHORT_EPOCHS`` recipe trains instead, in a folder of its own
    (pointing a shorter recipe at the cached folder would delete the cached 60-epoch stage).
    Only speed is measured here, and the channel counts the ratios keep differ little between
    the two (``layer_keep`` floors every layer).
    """
    spec = MODELS["narrow"]
    cache = args.train_cache
    n_train, n_val = (64, 32) if args.quick else (800, 200)
    data = ensure_data(os.path.join(cache, "data"), n_train, n_val, TRAIN_SIZE)
    full_done = os.path.isfile(os.path.join(cache, spec.name, "train", "done.json"))
    epochs = args.narrow_epochs or (1 if args.quick else spec.epochs if full_done else SHORT_EPOCHS)
    work = cache if epochs == spec.epochs else os.path.join(args.work, f"narrow-{epochs}ep")
    t0 = time.time()
    trained = train_models(SimpleNamespace(work=work, settings={"epochs": epochs}, jobs=1, threads=None),
                           [spec], data)[spec.name]
    wall = time.time() - t0
    return trained, data, {"epochs": epochs, "full_epochs": spec.epochs, "folder": os.path.dirname(trained.checkpoint),
                           "wall_min": wall / 60, "train_minutes": trained.train_minutes,
                           "cached": wall < 0.5 * 60 * trained.train_minutes, "s": spec.s, "lrf": spec.lrf}


def narrow_subject(args):
    from yoloslim.darknet.load import model_from_checkpoint
    trained, data, record = narrow_stage(args)
    size = args.img_size or 416
    model = model_from_checkpoint(trained.checkpoint).eval()
    model.img_size = (size, size)
    how = "reused from the cache" if record["cached"] else f"trained in this run ({record['wall_min']:.1f} min)"
    recipe = ("the second edition's stage" if record["epochs"] == record["full_epochs"] else
              f"a shortened recipe: {record['epochs']} epoch(s) instead of the second edition's {record['full_epochs']}")
    return Subject("narrow", "narrow residual yolov3 (cfg/yolov3-narrow.cfg)", size, model, MODELS["narrow"].methods,
                   f"sparsity-trained from scratch on the synthetic set at {TRAIN_SIZE} px, L1 s={record['s']} on its "
                   f"prunable BN gammas ({recipe}, {how}; "
                   f"{record['train_minutes']:.1f} min of training by its own record)",
                   extra={"training": record, "val_images": val_images(data)})


def shrink_gammas(model, share=FULL_SHRINK, factor=SHRINK_FACTOR, seed=0):
    """Stand-in for sparsity training: a seeded random ``share`` of every prunable layer's channels
    get their BN gamma multiplied by ``factor``."""
    graph = analyze(model.module_defs, model.in_channels)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in graph.prunable:
            gamma = model.gamma(conv)
            n = int(round(share * gamma.numel()))
            gamma[torch.randperm(gamma.numel(), generator=g)[:n]] *= factor
    return model


def full_subject(args):
    from yoloslim.darknet.load import load_model
    from yoloslim.deploy.measure import randomize_weights
    size = args.full_size
    share = FULL_SHRINK if getattr(args, "full_shrink", None) is None else args.full_shrink
    model = shrink_gammas(randomize_weights(load_model(os.path.join(args.root, "cfg", "yolov3.cfg"), None, size)), share)
    return Subject("yolov3", "full yolov3 (cfg/yolov3.cfg)", size, model.eval(), MODELS["narrow"].methods,
                   f"seeded random weights (yoloslim.deploy.measure.randomize_weights), then the gammas of a random "
                   f"{share:.0%} of each prunable layer's channels multiplied by {SHRINK_FACTOR:g} to stand in "
                   f"for sparsity training (`--full-shrink`). **Its masks are synthetic: only its speed is measured.** "
                   f"The same share in every layer thins it everywhere alike, where a sparsity-trained model keeps "
                   f"more of its early layers: its FLOP cut at a ratio runs higher than a trained yolov3's (issue 20 "
                   f"measured x4.93 for shortcut 0.8 on masks matched to the trained narrow model's)", synthetic=True,
                   runs=args.full_runs)


SUBJECTS = {"tiny": tiny_subject, "narrow": narrow_subject, "yolov3": full_subject}


# ----------------------------------------------------------------------------- methods x runtimes
def applicable(method, graph):
    """Whether the graph allows a method: shortcut pruning needs convs meeting at shortcuts, layer
    pruning removable residual blocks."""
    if method.n_blocks and len(graph.blocks) < method.n_blocks:
        return False
    return not (POLICIES[method.policy].shortcut_groups and not graph.shortcut_groups())


def deployable(model, folder, name, img_size):
    """The model written once in every form a runtime reads (Darknet pair for OpenCV, ONNX for ONNX
    Runtime and OpenVINO), so no runtime re-exports it."""
    from yoloslim.deploy.onnx_export import export_onnx
    os.makedirs(folder, exist_ok=True)
    cfg, weights = write_pruned(model, folder, name)
    onnx = os.path.join(folder, f"{name}.onnx")
    export_onnx(model, onnx, img_size)
    return Deployable(model=model, cfg=cfg, weights=weights, onnx=onnx)


def runs_of(args, subject):
    return subject.runs or args.runs


def timing_dict(t):
    return {"median": t.median, "p10": t.p10, "p90": t.p90, "runs": t.runs}


def prune_rows(args, subject):
    """Every applicable method at its second-edition ratio: pruned, written, its size and FLOPs.
    Returns (original Deployable, {slug: Deployable}, rows)."""
    folder = os.path.join(args.work, subject.name)
    model, size = subject.model, subject.img_size
    graph = analyze(model.module_defs, model.in_channels)
    original = deployable(model, os.path.join(folder, "original"), "original", size)
    flops0 = count_flops(model, size)
    pruned, rows = {}, []
    for method in subject.methods:
        row = {"method": method.name, "policy": method.policy, "percent": method.percent, "blocks": method.n_blocks}
        if not applicable(method, graph):
            continue
        try:
            compact, plans = prune(model, POLICIES[method.policy], method.percent, method.layer_keep, method.n_blocks,
                                   graph=graph)
        except PruneError as e:
            rows.append({**row, "error": str(e)})
            continue
        compact.img_size = (size, size)
        slug = slug_of(method.name)
        pruned[slug] = deployable(compact, os.path.join(folder, slug), slug, size)
        flops = count_flops(compact, size)
        rows.append({**row, "slug": slug, "params": count_params(compact), "GFLOPs": flops / 1e9,
                     "flop_cut": flops0 / flops, "removed_importance": removed_importance(model, plans),
                     "timing": {}})
    base = {"params": count_params(model), "GFLOPs": flops0 / 1e9, "timing": {}}
    return original, pruned, base, rows


def time_rows(args, subject, original, pruned, base, rows):
    """Per runtime, the original and all its pruned models interleaved in one ``compare``: each
    pruned model against the same original rounds."""
    for runtime in args.runtimes:
        models = {"original": original, **pruned}
        t0 = time.time()
        timed = compare(models, runtime, subject.img_size, args.threads, runs_of(args, subject), args.warmup)
        base["timing"][runtime] = timing_dict(timed["original"])
        for row in rows:
            if "slug" in row:
                row["timing"][runtime] = {"original": timing_dict(timed["original"]),
                                          "pruned": timing_dict(timed[row["slug"]])}
        print(f"[{subject.name}] {runtime}: original {timed['original'].median:.2f} ms; "
              + ", ".join(f"{s} {timed[s].median:.2f}" for s in pruned) + f" ({time.time() - t0:.0f} s)", flush=True)


def removed_importance(model, plans):
    """Share of the prunable channels' importance the channel plan removed (|gamma| for BN
    policies, filter L1 norms for l1); None for a plan that removes whole blocks (its channel plan
    ranks another model's units)."""
    channel = [p for p in plans if p.masks]
    if not channel or any(p.removed_blocks for p in plans):
        return None
    plan = channel[-1]
    importance = POLICIES[plan.policy].importance if plan.policy in POLICIES else POLICIES["normal"].importance
    removed = total = 0.0
    for conv, keep in plan.masks.items():
        score = importance(model, conv).float()
        removed += float(score[~keep].sum())
        total += float(score.sum())
    return removed / total if total else None


def measure_subject(args, subject):
    original, pruned, base, rows = prune_rows(args, subject)
    time_rows(args, subject, original, pruned, base, rows)
    return {"title": subject.title, "img_size": subject.img_size, "origin": subject.origin,
            "synthetic": subject.synthetic, "original": base, "rows": rows,
            **{k: v for k, v in subject.extra.items() if k == "training"}}, original, pruned


# ----------------------------------------------------------------------------- INT8
def photo_folders(args):
    """(calibration, held-out) folders of real photographs (yoloslim.data.photo_sources): the
    photos themselves to calibrate on, their mirrored and cropped variants to judge on."""
    from yoloslim.data.photo_sources import COCO_PHOTOS, sample_photos
    n = len(COCO_PHOTOS)
    calib, judge = os.path.join(args.work, "photos", "calib"), os.path.join(args.work, "photos", "judge")
    paths = sample_photos(os.path.join(args.work, "photos", "all"), 3 * n, size=416)
    photos = sorted(set(os.path.basename(p).split("_", 1)[1] for p in paths))   # distinct photos found
    k = len(photos)
    for folder, chosen in ((calib, paths[:k]), (judge, paths[k:3 * k])):
        os.makedirs(folder, exist_ok=True)
        for p in chosen:
            shutil.copyfile(p, os.path.join(folder, os.path.basename(p)))
    return calib, judge, k


def int8_rows(args, subject, original, pruned, calib, judge, n_photos):
    """The x8-rounded prune quantized (export.py --int8's recipe), timed beside the float pruned
    and float original models; its agreement with the float pruned model's detections."""
    from yoloslim.deploy.exported import ExportedDetector
    from yoloslim.deploy.int8 import quantize
    from yoloslim.eval.agreement import agreement
    slug = slug_of(INT8_METHOD)
    if slug not in pruned:
        return None
    float_pruned = pruned[slug]
    int8 = quantize(float_pruned.onnx, os.path.join(os.path.dirname(float_pruned.onnx), f"{slug}-int8.onnx"),
                    calib, subject.img_size, limit=n_photos)
    judged_on = subject.extra.get("val_images") or judge
    found = agreement(float_pruned.model, ExportedDetector(int8, float_pruned.model.nc, args.threads), judged_on,
                      subject.img_size)
    out = {"model": subject.name, "method": INT8_METHOD, "calibration": f"{n_photos} photos", "agreement": {
        "score": found.score, "images": found.images, "reference_boxes": found.reference_boxes,
        "candidate_boxes": found.candidate_boxes,
        "on": "the synthetic validation images it was trained on" if subject.extra.get("val_images")
        else "mirrored and cropped variants of the photos (held out from calibration)"}, "timing": {}}
    for runtime in [r for r in args.runtimes if r in INT8_RUNTIMES]:
        timed = compare({"original": Deployable(onnx=original.onnx), "pruned": Deployable(onnx=float_pruned.onnx),
                         "pruned int8": Deployable(onnx=int8)}, runtime, subject.img_size, args.threads, runs_of(args, subject),
                        args.warmup)
        out["timing"][runtime] = {k: timing_dict(v) for k, v in timed.items()}
        print(f"[{subject.name}] int8 {runtime}: " + ", ".join(f"{k} {v.median:.2f} ms" for k, v in timed.items()),
              flush=True)
    return out


# ----------------------------------------------------------------------------- latency-aware planner
def planner_rows(args, subject, result, original, pruned):
    """The planner against the gamma-only prune at the same measured budget: the target is the
    gamma-only prune's measured median ms on ``runtime``; both are then timed interleaved with the
    original, and the importance each removed is counted the same way."""
    method = next((m for m in subject.methods if m.name == PLANNER_METHODS.get(subject.name)), None)
    row = next((r for r in result["rows"] if method and r["method"] == method.name and "slug" in r), None)
    runtime = args.planner_runtime
    if row is None or runtime not in row["timing"]:
        return None
    target = row["timing"][runtime]["pruned"]["median"]
    t0 = time.time()
    try:
        compact, plans, budget = plan_to_budget(subject.model, POLICIES[method.policy], runtime, subject.img_size,
                                                args.threads, target_ms=target, layer_keep=method.layer_keep or 0.05)
    except SlimError as e:      # a budget the planner says it cannot meet is a result, not the end of the run
        print(f"[{subject.name}] planner: {e}", flush=True)
        return {"model": subject.name, "method": method.name, "runtime": runtime, "target_ms": target,
                "error": str(e)}
    plan_s = time.time() - t0
    compact.img_size = (subject.img_size, subject.img_size)
    aware = deployable(compact, os.path.join(args.work, subject.name, "latency-aware"), "latency_aware",
                       subject.img_size)
    timed = compare({"original": original, "gamma-only": pruned[row["slug"]], "latency-aware": aware}, runtime,
                    subject.img_size, args.threads, runs_of(args, subject), args.warmup)
    flops0 = result["original"]["GFLOPs"] * 1e9
    return {"model": subject.name, "method": method.name, "runtime": runtime, "target_ms": target,
            "plan_s": plan_s, "budget": budget_fields(budget),
            "timing": {k: timing_dict(v) for k, v in timed.items()},
            "gamma-only": {"params": row["params"], "GFLOPs": row["GFLOPs"], "flop_cut": row["flop_cut"],
                           "removed_importance": row["removed_importance"]},
            "latency-aware": {"params": count_params(compact), "GFLOPs": count_flops(compact, subject.img_size) / 1e9,
                              "flop_cut": flops0 / count_flops(compact, subject.img_size),
                              "removed_importance": removed_importance(subject.model, plans)}}


def budget_fields(budget):
    """The planner's BudgetReport as JSON: its predictions, and the share of importance it says it
    removed (its own count: per unit, where ours is per conv)."""
    fields = {k: getattr(budget, k, None) for k in ("predicted_ms", "original_ms", "target", "removed_importance",
                                                    "total_importance", "measured_points")}
    total = fields["total_importance"]
    fields["removed_share"] = fields["removed_importance"] / total if total and fields["removed_importance"] is not None \
        else None
    return fields


# ----------------------------------------------------------------------------- per-layer profile
ACTIVATIONS = ("leaky", "relu", "mish", "logistic", "swish", "tanh", "elu", "selu", "gelu", "linear", "hardswish")


def layer_kinds(model, img_size):
    """Per Darknet layer index: (kind label, output resolution 'HxW'), from the model's own
    layers (no index hard-coded): the convs reading the image, stride-2 convs, stride-1 3x3, 1x1,
    and everything else."""
    graph = analyze(model.module_defs, model.in_channels)
    shapes = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: shapes.__setitem__(k, tuple(o.shape[-2:])))
             for k, m in enumerate(model.module_list)]
    forward_with_hooks(model, hooks, img_size, img_size)
    out = {}
    for i, mdef in enumerate(graph.module_defs):
        hw = shapes.get(i)
        res = f"{hw[0]}x{hw[1]}" if hw and len(hw) == 2 else "-"
        if not graph.kinds[i].has_weights:
            kind = "non-conv"
        elif not graph.sources[i]:
            kind = "first conv"
        elif int(mdef.get("stride", 1)) > 1:
            kind = "stride-2 conv"
        elif int(mdef.get("size", 1)) == 1:
            kind = "1x1 conv"
        else:
            kind = f"stride-1 {mdef.get('size')}x{mdef.get('size')} conv"
        out[i] = (kind, res)
    return out


def opencv_layer_index(name):
    """Darknet layer index of an OpenCV layer name: 'conv_12', 'bn_12' -> 12; OpenCV's importer
    numbers a conv's activation one past the conv ('leaky_13' is layer 12's)."""
    prefix, _, number = name.rpartition("_")
    if not number.isdigit():
        return None
    return int(number) - 1 if prefix in ACTIVATIONS else int(number)


def opencv_profile(pairs, img_size, threads, runs, warmup):
    """{name: {darknet layer: median ms}} from OpenCV's per-layer timer, the nets interleaved
    round by round like latency.compare."""
    import cv2
    from yoloslim.deploy.opencv_dnn import read_net
    before = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        nets = {name: read_net(*pair) for name, pair in pairs.items()}
        x = np.random.default_rng(0).random((1, 3, img_size, img_size), dtype=np.float32)
        per = {name: [] for name in nets}
        names = list(nets)
        for r in range(warmup + runs):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                net = nets[name]
                net.setInput(x)
                net.forward(net.getUnconnectedOutLayersNames())
                if r >= warmup:
                    _, times = net.getPerfProfile()
                    per[name].append(np.asarray(times, dtype=float).ravel() * 1000 / cv2.getTickFrequency())
    finally:
        cv2.setNumThreads(before)
    out = {}
    for name, net in nets.items():
        med = np.median(np.stack(per[name]), axis=0)
        layers = {}
        for lname, ms in zip(net.getLayerNames(), med):
            index = opencv_layer_index(lname)
            layers[index] = layers.get(index, 0.0) + float(ms)
        out[name] = layers
    return out


def grouped(layer_ms, kinds):
    """(by kind, by resolution) sums of per-layer ms; layers OpenCV adds that map to no Darknet
    layer count as non-conv."""
    by_kind, by_res = {}, {}
    for index, ms in layer_ms.items():
        kind, res = kinds.get(index, ("non-conv", "-"))
        by_kind[kind] = by_kind.get(kind, 0.0) + ms
        by_res[res] = by_res.get(res, 0.0) + ms
    return by_kind, by_res


def profile_rows(args, subject, original, pruned, result):
    """Per-layer time of the original and the ``PROFILE_METHOD`` prune in OpenCV, grouped."""
    slug = slug_of(PROFILE_METHOD)
    if slug not in pruned or "opencv" not in args.runtimes:
        return None
    compact = pruned[slug].model
    timed = opencv_profile({"original": (original.cfg, original.weights), "pruned": (pruned[slug].cfg,
                            pruned[slug].weights)}, subject.img_size, args.threads, runs_of(args, subject), args.warmup)
    kinds = {"original": layer_kinds(subject.model, subject.img_size),
             "pruned": layer_kinds(compact, subject.img_size)}
    flops = {"original": layer_flops(subject.model, subject.img_size), "pruned": layer_flops(compact, subject.img_size)}
    out = {"model": subject.name, "method": PROFILE_METHOD, "runtime": "opencv", "img_size": subject.img_size}
    for name in ("original", "pruned"):
        by_kind, by_res = grouped(timed[name], kinds[name])
        fk, fr = grouped(flops[name], kinds[name])
        out[name] = {"total_ms": sum(timed[name].values()), "by_kind": by_kind, "by_res": by_res,
                     "gflops_by_kind": {k: v / 1e9 for k, v in fk.items()},
                     "gflops_by_res": {k: v / 1e9 for k, v in fr.items()}}
    return out


def layer_flops(model, img_size):
    """{layer index: FLOPs} of one forward pass (each kind's own count, as count_flops)."""
    found = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k, kind=kind: found.__setitem__(k, kind.flops(mod, o)))
             for k, (kind, m) in enumerate(zip(model.kinds, model.module_list))]
    forward_with_hooks(model, hooks, img_size, img_size)
    return found
