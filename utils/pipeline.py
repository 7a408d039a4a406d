"""Stages of the slimming pipeline, shared by ``slim.py`` (the main job) and the benchmarks.

data -> train -> sparsity-train -> prune -> fine-tune (optionally distilled) -> measure.
Training stages are cached by their arguments and the content of their inputs, so a benchmark
that prunes one sparse model with seven methods trains it once, an interrupted run picks up
where it stopped, and a changed argument or input retrains the stage (and says why).
"""
import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass

import torch

from models import model_from_checkpoint
from utils.io import atomic_write
from utils.opencv_dnn import read_net
from utils.parse_config import parse_data_cfg
from utils.prune_utils import POLICIES, prune, write_pruned
from utils.torch_utils import count_flops, count_params, opencv_latency_ms, torch_latency_ms


@dataclass
class Method:
    """A benchmark row: which policy, how much, and whether whole blocks go first."""
    name: str
    policy: str
    percent: float = None
    n_blocks: int = 0
    layer_keep: float = None


def ensure_data(folder, n_train, n_val, img_size, seed=0):
    """The synthetic data set (generated once, then reused); returns its .data path."""
    from utils.synthetic import generate
    generate(folder, n_train=n_train, n_val=n_val, img_size=img_size, seed=seed)
    return os.path.join(folder, "shapes.data")


def derive_cfg(src_cfg, data, img_size, path):
    """Write ``src_cfg`` adapted to a data set: its class count, and anchors from k-means on its
    training boxes (as many as the cfg has). Returns (path, anchors)."""
    from utils.anchors import kmeans_anchors, label_sizes
    from utils.parse_config import write_model_cfg
    from utils.transfer import cfg_for_data
    options = parse_data_cfg(data)
    n_anchors = sum(len(m["mask"]) for m in cfg_for_data(src_cfg, 1)[1:] if m["type"] == "yolo")
    anchors = kmeans_anchors(label_sizes(options["train"], img_size), n_anchors)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_model_cfg(cfg_for_data(src_cfg, options["classes"], anchors, img_size), path)
    return path, anchors


def run_training(out, cfg, data, epochs, img_size, batch_size, weights=None, extra=(), quiet=False):
    """train.py in-process, cached by a key of its arguments and the content of its input files.

    A stage folder whose ``done.json`` holds the same key is reused; one holding an unfinished
    run with the same key is resumed; anything else (other arguments, retrained weights,
    another data set) is deleted and trained again, and the reason is printed.
    """
    import train
    argv = ["--data", data, "--epochs", str(epochs), "--img-size", str(img_size), "--batch-size", str(batch_size),
            "--out", out, "--workers", "0", *map(str, extra)]
    if cfg:
        argv += ["--cfg", cfg]
    if weights:
        argv += ["--weights", weights]
    key = stage_key(argv, resolved_options(train, argv))
    done = read_json(os.path.join(out, "done.json"))
    if done is not None and done.get("key") == key:
        print(f"[cached] {out}: {done['result'].get('mAP50', float('nan')):.4f} mAP@0.5 (same arguments and inputs)")
        return done["result"]
    started = read_json(os.path.join(out, "stage.json"))
    resume = started is not None and started.get("key") == key and done is None \
        and checkpoint_epoch(os.path.join(out, "last.pt")) < epochs
    if resume:
        print(f"[resume] {out}: an unfinished run with the same arguments and inputs")
    elif started is not None and started.get("key") == key and done is None:
        # killed between its last checkpoint and its record: train.py refuses to resume a
        # finished run, and the result it returns is not stored anywhere else
        print(f"[rerun] {out}: the run finished but its result was never recorded; training it again")
        shutil.rmtree(out)
    elif done is not None or started is not None:
        old = (done or started).get("key") or {"argv": (done or started).get("argv", []), "inputs": {}}
        print(f"[rerun] {out}: {key_change(old, key)}; training it again")
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    with atomic_write(os.path.join(out, "stage.json"), "w") as f:
        json.dump({"key": key}, f, indent=2)
    opt = train.parse_args(argv + (["--resume"] if resume else ["--exist-ok"]) + (["--quiet"] if quiet else []))
    result = train.train(opt)
    result = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
    with atomic_write(os.path.join(out, "done.json"), "w") as f:
        json.dump({"key": key, "result": result}, f, indent=2)
    return result


def run_parallel(fn, jobs, workers=1, name=None, threads=1):
    """``fn(**job)`` for every job, results in job order, up to ``workers`` at a time.

    Each concurrent job runs in a fresh (spawned) process with ``threads`` torch threads: torch's
    thread pool does not survive a fork, and training stages run on 1 thread each, so two cores
    train two stages in the time of one. With one worker the jobs run here, in order. The first
    job to fail cancels the ones not yet started and its error is raised here.
    """
    if workers <= 1 or len(jobs) <= 1:
        return [fn(**job) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    results, t0 = [None] * len(jobs), time.time()
    pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn"),
                               initializer=torch.set_num_threads, initargs=(threads,))
    try:
        futures = {pool.submit(fn, **job): i for i, job in enumerate(jobs)}
        for n, future in enumerate(as_completed(futures), 1):
            i = futures[future]
            results[i] = future.result()
            label = name(jobs[i]) if name else f"job {i + 1}"
            print(f"[{n}/{len(jobs)}] {label} done ({(time.time() - t0) / 60:.1f} min)", flush=True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def checkpoint_epoch(path):
    """Epochs a train.py checkpoint has completed; -1 when there is none to resume."""
    if not os.path.isfile(path):
        return -1
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # unreadable or foreign: not a run this stage can resume
        return -1


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def data_digest(path):
    """A .data file, its lists, and the size and mtime of every image and label they name."""
    from utils.datasets import label_path_for, read_image_list
    h = hashlib.sha256(file_digest(path).encode())
    options = parse_data_cfg(path)
    for key in ("train", "valid"):
        if options.get(key) and os.path.exists(options[key]):
            for img in read_image_list(options[key]):
                for f in (img, label_path_for(img)):
                    st = os.stat(f) if os.path.isfile(f) else None
                    h.update(f"{f}:{st.st_size if st else -1}:{st.st_mtime_ns if st else -1}\n".encode())
    return h.hexdigest()


# Options that change where or how fast a stage runs, not what it computes: not part of its key.
RUNTIME_FLAGS = ("--threads", "--workers", "--quiet", "--device")


def resolved_options(train, argv):
    """Every train.py option after defaults are filled in: a changed default also changes the key."""
    opt = vars(train.parse_args(list(argv)))
    return {k: v for k, v in sorted(opt.items())
            if k not in train.RUNTIME_OPTIONS and not (v is None and k in train.KEYED_WHEN_SET)}


def stage_key(argv, options=None):
    """The stage's identity: its arguments (less RUNTIME_FLAGS), the options they resolve to, and a
    digest of every input file they name."""
    kept, skip = [], False
    for tok in argv:
        if skip:
            skip = False
        elif tok in RUNTIME_FLAGS:
            skip = tok != "--quiet"
        else:
            kept.append(tok)
    argv, inputs = kept, {}
    for value in argv:
        if value in inputs or not os.path.isfile(value):
            continue
        inputs[value] = data_digest(value) if value.endswith(".data") else file_digest(value)
    return {"argv": list(argv), "options": options or {}, "inputs": inputs}


def key_change(old, new):
    """Why two stage keys differ, in words (first few differences)."""
    def options(argv):
        opts, flag = {}, None
        for tok in argv:
            if tok.startswith("-") and not tok.lstrip("-").replace(".", "").isdigit():
                flag = tok
                opts[flag] = ""
            elif flag is not None:
                opts[flag] = (opts[flag] + " " + tok).strip()
        return opts
    a, b = options(old.get("argv", [])), options(new["argv"])
    changes = [f"{k} {a.get(k, '(absent)') or '(set)'} -> {b.get(k, '(absent)') or '(set)'}"
               for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    changes += [f"{path} changed" for path, digest in new["inputs"].items()
                if old.get("inputs", {}).get(path) not in (None, digest)]
    if not changes:   # same command line, other defaults (train.py changed)
        changes = [f"--{k.replace('_', '-')} default {old.get('options', {}).get(k)} -> {v}"
                   for k, v in new.get("options", {}).items() if old.get("options", {}).get(k) != v]
    return "; ".join(changes[:4]) or "stage key format changed"


def prune_checkpoint(weights, method):
    """(original model, compact model, plans) for a .pt of ours and a Method."""
    model = model_from_checkpoint(weights).eval()
    compact, plans = prune(model, POLICIES[method.policy], method.percent, method.layer_keep, method.n_blocks)
    return model, compact, plans


def save_pruned(compact, folder, name):
    os.makedirs(folder, exist_ok=True)
    return write_pruned(compact, folder, name)


def measure(model, data=None, img_size=None, cfg_path=None, weights_path=None, runs=20, max_images=None):
    """Size, FLOPs, batch-1 CPU latency (median of ``runs`` after warm-up) and mAP@0.5."""
    size = img_size or model.img_size[0]
    row = {"params": count_params(model), "GFLOPs": count_flops(model, size) / 1e9}
    if runs:
        row["torch_ms"] = torch_latency_ms(model, size, warmup=5, runs=runs)
        if cfg_path and weights_path:
            row["opencv_ms"] = opencv_latency_ms(read_net(cfg_path, weights_path), size, warmup=5, runs=runs,
                                                channels=model.in_channels)
    if data:
        from test import evaluate
        row["mAP50"] = float(evaluate(model, data, img_size=size, verbose=False, progress=False,
                                      max_images=max_images)["mAP50"])
    return row


def machine_line():
    """Where a number was measured, for every table that prints one."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"{time.strftime('%Y-%m-%d')}")


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
