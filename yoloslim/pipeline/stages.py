"""Stages of the slimming pipeline, shared by ``slim.py`` (the main job) and the benchmarks.

data -> train -> sparsity-train -> prune -> fine-tune (optionally distilled) -> measure.
Training stages are cached by their arguments and the content of their inputs, so a benchmark
that prunes one sparse model with seven methods trains it once, an interrupted run picks up
where it stopped, and a changed argument or input retrains the stage (and says why).
"""
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, replace

import torch

from yoloslim.darknet.load import model_from_checkpoint
from yoloslim.io import atomic_write
from yoloslim.deploy.opencv_dnn import read_net
from yoloslim.darknet.cfg import parse_data_cfg
from yoloslim.prune.engine import POLICIES, prune, write_pruned
from yoloslim.deploy.measure import count_flops, cpu_model, count_params, opencv_latency_ms, torch_latency_ms


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
    from yoloslim.data.synthetic import generate
    generate(folder, n_train=n_train, n_val=n_val, img_size=img_size, seed=seed)
    return os.path.join(folder, "shapes.data")


def derive_cfg(src_cfg, data, img_size, path):
    """Write ``src_cfg`` adapted to the data set of the .data file ``data`` (yoloslim/pipeline/derive.py:
    class count, head filters, k-means anchors). Returns (path, anchors)."""
    from yoloslim.darknet.cfg import write_model_cfg
    from yoloslim.data.userdata import load_dataset
    from yoloslim.pipeline.derive import derive_for_data
    derived = derive_for_data(src_cfg, load_dataset(data), img_size)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_model_cfg(derived.defs, path)
    return path, derived.anchors


def run_training(config, quiet=False):
    """Train ``config`` (a ``TrainConfig``) in-process, cached by its fields and the content of
    the files it reads.

    A stage folder (``config.out``) whose ``done.json`` holds the same key is reused; one holding
    an unfinished run with the same key is resumed; anything else (another option, retrained
    weights, another data set) is deleted and trained again, and the reason is printed.
    """
    from yoloslim.train.trainer import train
    out = config.out
    key = stage_key(config)
    done = read_json(os.path.join(out, "done.json"))
    if done is not None and done.get("key") == key:
        print(f"[cached] {out}: {done['result'].get('mAP50', float('nan')):.4f} mAP@0.5 (same options and inputs)")
        return {**done["result"], "cached": True}
    started = read_json(os.path.join(out, "stage.json"))
    resume = started is not None and started.get("key") == key and done is None \
        and checkpoint_epoch(os.path.join(out, "last.pt")) < config.epochs
    if resume:
        print(f"[resume] {out}: an unfinished run with the same options and inputs")
    elif started is not None and started.get("key") == key and done is None:
        # killed between its last checkpoint and its record: a finished run cannot be resumed,
        # and the result it returns is not stored anywhere else
        print(f"[rerun] {out}: the run finished but its result was never recorded; training it again")
        shutil.rmtree(out)
    elif done is not None or started is not None:
        print(f"[rerun] {out}: {key_change((done or started).get('key') or {}, key)}; training it again")
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    with atomic_write(os.path.join(out, "stage.json"), "w") as f:
        json.dump({"key": key}, f, indent=2)
    result = train(replace(config, resume=resume, exist_ok=not resume, quiet=quiet or config.quiet))
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
    from yoloslim.data.datasets import label_path_for, read_image_list
    h = hashlib.sha256(file_digest(path).encode())
    options = parse_data_cfg(path)
    for key in ("train", "valid"):
        if options.get(key) and os.path.exists(options[key]):
            for img in read_image_list(options[key]):
                for f in (img, label_path_for(img)):
                    st = os.stat(f) if os.path.isfile(f) else None
                    h.update(f"{f}:{st.st_size if st else -1}:{st.st_mtime_ns if st else -1}\n".encode())
    return h.hexdigest()


def stage_key(config):
    """The stage's identity: every option that changes what it computes (``TrainConfig.key``)
    and a digest of every file it reads."""
    inputs = {}
    for path in config.inputs().values():
        if path not in inputs and os.path.isfile(path):
            inputs[path] = data_digest(path) if path.endswith(".data") else file_digest(path)
    return {"config": json.loads(json.dumps(config.key())), "inputs": inputs}


def key_change(old, new):
    """Why two stage keys differ, in words (first few differences)."""
    if "config" not in old:
        return "stage key format changed"
    a, b = old["config"], new["config"]
    changes = [f"--{k.replace('_', '-')} {a.get(k, '(absent)')} -> {b.get(k, '(absent)')}"
               for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    changes += [f"{path} changed" for path, digest in new["inputs"].items()
                if old.get("inputs", {}).get(path) not in (None, digest)]
    return "; ".join(changes[:4]) or "stage key format changed"


def prune_checkpoint(weights, method):
    """(original model, compact model, plans) for a .pt of ours and a Method."""
    model = model_from_checkpoint(weights).eval()
    compact, plans = prune(model, POLICIES[method.policy], method.percent, method.layer_keep, method.n_blocks)
    return model, compact, plans


def save_pruned(compact, folder, name, reader="opencv"):
    os.makedirs(folder, exist_ok=True)
    return write_pruned(compact, folder, name, reader)


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
        from yoloslim.eval.evaluate import evaluate
        row["mAP50"] = float(evaluate(model, data, img_size=size, verbose=False, progress=False,
                                      max_images=max_images)["mAP50"])
    return row


def machine_line(threads=None):
    """Where a number was measured, for every table that prints one; ``threads``: the thread count
    the measurements used, when it is not torch's current one (a trainer restores its caller's)."""
    return (f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} ({threads or torch.get_num_threads()} threads), "
            f"{time.strftime('%Y-%m-%d')}")


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
