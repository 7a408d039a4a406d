"""Stages of the slimming pipeline, shared by ``slim.py`` (the main job) and the benchmarks.

data -> train -> sparsity-train -> prune -> fine-tune (optionally distilled) -> measure.
Training stages are cached by their arguments, so a benchmark that prunes one sparse
model with seven methods trains it once, and an interrupted run picks up where it stopped.
"""
import json
import os
import platform
import time
from dataclasses import dataclass

import torch

from models import model_from_checkpoint
from utils.io import atomic_write
from utils.opencv_dnn import read_net
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


def run_training(out, cfg, data, epochs, img_size, batch_size, weights=None, extra=(), quiet=False):
    """train.py in-process; skipped when ``out`` already holds a finished run with these arguments."""
    import train
    argv = ["--data", data, "--epochs", str(epochs), "--img-size", str(img_size), "--batch-size", str(batch_size),
            "--out", out, "--workers", "0", *map(str, extra)]
    if cfg:
        argv += ["--cfg", cfg]
    if weights:
        argv += ["--weights", weights]
    done_file = os.path.join(out, "done.json")
    if os.path.isfile(done_file):
        with open(done_file) as f:
            done = json.load(f)
        if done.get("argv") == argv:
            print(f"[cached] {out}: {done['result'].get('mAP50', float('nan')):.4f} mAP@0.5")
            return done["result"]
    resume = os.path.isfile(os.path.join(out, "last.pt"))
    opt = train.parse_args(argv + (["--resume"] if resume else ["--exist-ok"]) + (["--quiet"] if quiet else []))
    result = train.train(opt)
    result = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
    with atomic_write(done_file, "w") as f:
        json.dump({"argv": argv, "result": result}, f, indent=2)
    return result


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
