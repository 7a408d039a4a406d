"""slim.py end to end as a user runs it, at toy sizes: COCO tiny -> fine-tune -> sparsity -> prune -> distil -> OpenCV."""
import json
import os
import subprocess
import sys

from yoloslim.deploy.darknet_ref import darknet_missing
from yoloslim.deploy.parity import TOLERANCE
from conftest import HANG_LIMIT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_slim(tmp_path, *extra):
    cmd = [sys.executable, "slim.py", "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "data"),
           "--n-train", "8", "--n-val", "4", "--batch-size", "4", "--epochs", "1", "--sparse-epochs", "1",
           "--finetune-epochs", "1", "--latency-runs", "1", "--threads", "1", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=HANG_LIMIT, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_slim_runs_from_coco_tiny_and_reruns_only_what_changed(coco_tiny, tmp_path):
    out = run_slim(tmp_path, "--s", "0.01")
    assert "classes 80 -> 5" in out and "OpenCV DNN reads" in out
    report = json.load(open(tmp_path / "run" / "report.json"))
    rows = report["rows"]
    assert rows["pruned"]["params"] < rows["sparsity-trained"]["params"]
    assert report["deploy_checks"]["opencv"] < 1e-3
    md = open(tmp_path / "run" / "report.md").read()
    assert "| base mAP@0.5 | >= 0.6 |" in md
    # the thread count the timings used (--threads 1), not the one torch is back at afterwards
    assert report["timing"]["threads"] == 1 and "(1 threads)" in md and "1 thread(s) set in each runtime" in md
    assert "load average" in md and report["timing"]["runtimes"] == ["torch", "opencv", "onnxruntime"]
    assert "| ONNX Runtime ms (speed-up) |" in md and rows["pruned + fine-tuned"]["onnxruntime_ms"] > 0
    # one sparse epoch cannot collapse 40% of the gammas: the report says so instead of pruning quietly
    assert "**Sparsity fell short.**" in md and report["sparsity_shortfall"].startswith("warning:")
    assert "kept channels" in out and "sparsity training ended with" in out
    first_train = json.load(open(tmp_path / "run" / "train" / "done.json"))["result"]["seconds"]

    out = run_slim(tmp_path, "--s", "0.02")       # only the sparsity stage and what reads it retrain
    assert "[cached] " + str(tmp_path / "run" / "train") in out
    assert "[rerun] " + str(tmp_path / "run" / "sparse") in out and "--s 0.01 -> 0.02" in out
    assert "[rerun] " + str(tmp_path / "run" / "finetune") in out
    report = json.load(open(tmp_path / "run" / "report.json"))
    # the whole job counts the cached stage's recorded time, not only what this rerun trained
    assert report["job_seconds"] >= report["seconds"] + first_train - 1e-6
    assert "this invocation" in open(tmp_path / "run" / "report.md").read()


def test_slim_with_sparsity_during_the_fine_tune_prunes_the_trained_model(coco_tiny, tmp_path):
    out = run_slim(tmp_path, "--sparse-epochs", "0", "--s", "0.003", "--reader", "pjreddie")
    assert "sparsity training: done in stage 2" in out
    assert not os.path.exists(tmp_path / "run" / "sparse")          # no separate stage was trained
    report = json.load(open(tmp_path / "run" / "report.json"))
    rows = report["rows"]
    assert report["reader"] == "pjreddie" and report["deploy_checks"]["pjreddie_arithmetic"] <= 1e-6
    if darknet_missing() is None:                                   # CI installs it: the trained model runs in Darknet
        assert report["deploy_checks"]["darknet"] <= TOLERANCE and "Darknet (libdarknet) reads them" in out
    assert list(rows) == ["base (fine-tuned with sparsity)", "pruned", "pruned + fine-tuned"]
    md = open(tmp_path / "run" / "report.md").read()                # --percent auto is the tiny default
    assert "Prune ratio found, not guessed: --max-drop 0.03" in md and "<- chosen" in md
    assert open(tmp_path / "run" / "ratio_search.png", "rb").read(4) == b"\x89PNG"
    finetune = json.load(open(tmp_path / "run" / "finetune" / "stage.json"))["key"]["config"]
    assert finetune["lr0"] == 0.00015                               # lr0 x lrf of the training it continues
    assert rows["pruned"]["params"] < rows["base (fine-tuned with sparsity)"]["params"]
    stage = json.load(open(tmp_path / "run" / "train" / "stage.json"))
    assert stage["key"]["config"]["sr"] is True and stage["key"]["config"]["s"] == 0.003


def test_whole_job_counts_a_cached_stage_once():
    """With the sparsity riding the transfer (--sparse-epochs 0), stages 2 and 3 are one cached stage."""
    import slim
    train = {"out": "run/train", "seconds": 100.0, "cached": True}
    fresh = {"out": "run/finetune", "seconds": 5.0}                 # trained in this invocation: in its 10 s
    assert slim.whole_job_seconds(10.0, [train, train, fresh]) == 110.0
