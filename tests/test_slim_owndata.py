"""slim.py on the user's own data and model, as a user runs it (subprocess), at toy sizes.

Three data forms (YOLO folder, Darknet .data, dataset YAML), three starting points (the COCO
yolov3-tiny by default, a .pt of ours with other classes, an AlexeyAB-header .weights pair with
the data's classes), and after every run the user's files are byte-identical.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from owndata_sets import NAMES, tree_digest, write_darknet_data, write_dataset_yaml, write_yolo_folder
from conftest import HANG_LIMIT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
QUICK = ["--img-size", "64", "--batch-size", "4", "--epochs", "1", "--sparse-epochs", "1", "--finetune-epochs", "1",
         "--latency-runs", "1", "--threads", "1"]


def slim(*args, expect=0):
    proc = subprocess.run([sys.executable, "slim.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=HANG_LIMIT, env=ENV)
    assert proc.returncode == expect, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def random_model(classes, path_stem, version=None, seen=0):
    """A yolov3-tiny of ``classes`` classes with random weights: its cfg and (.weights or .pt)."""
    from yoloslim.darknet.model import Darknet
    from yoloslim.darknet.weights import save_checkpoint
    from yoloslim.darknet.cfg import write_model_cfg
    from yoloslim.train.transfer import cfg_for_data
    cfg = path_stem + ".cfg"
    write_model_cfg(cfg_for_data(os.path.join(ROOT, "cfg", "yolov3-tiny.cfg"), classes), cfg)   # 416, as trained
    torch.manual_seed(classes)
    model = Darknet(cfg)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.1, 1.0)
    if version is None:
        save_checkpoint(model.checkpoint(), path_stem + ".pt")
        return cfg, path_stem + ".pt"
    model.version, model.seen = np.array(version, dtype=np.int32), seen
    reader = {5: "alexeyab", 0: "pjreddie"}.get(version[2], "opencv")   # the file as that Darknet writes it
    model.save_darknet_weights(path_stem + ".weights", reader=reader)
    return cfg, path_stem + ".weights"


@pytest.fixture
def users(tmp_path):
    """The user's files, all under one folder that is hashed before and after."""
    mine = tmp_path / "mine"
    folder = write_yolo_folder(str(mine / "set"))
    (mine / "model").mkdir()
    return {"mine": str(mine), "folder": folder, "data": write_darknet_data(folder),
            "yaml": write_dataset_yaml(str(mine), "set"), "model": str(mine / "model"),
            "out": str(tmp_path / "run")}


def report(out):
    with open(os.path.join(out, "report.md")) as f:
        text = f.read()
    with open(os.path.join(out, "report.json")) as f:
        return text, json.load(f)


def test_yolo_folder_with_the_coco_tiny(coco_tiny, users):
    before = tree_digest(users["mine"])
    out = slim("--data", users["folder"], "--out", users["out"], *QUICK)
    assert tree_digest(users["mine"]) == before
    assert "classes 80 -> 2" in out and "OpenCV DNN reads" in out
    text, rep = report(users["out"])
    for line in (f"source: {users['folder']} (YOLO folder)", f"classes: 2 ({', '.join(NAMES)})",
                 "images: 6 train (12 boxes), 3 val (6 boxes)", "input size: 64 px",
                 "starting point: the real COCO yolov3-tiny, 80 classes", "transfer: classes 80 -> 2",
                 "k-means (1 - IoU) on the training boxes", "method: tiny (the graph has no shortcut layers"):
        assert line in text, line
    lists = open(os.path.join(users["out"], "data", "train.txt")).read().split()
    assert len(lists) == 6 and all(p.startswith(users["folder"] + os.sep) for p in lists)
    assert rep["rows"]["pruned"]["params"] < rep["rows"]["sparsity-trained"]["params"]


def test_data_file_with_a_checkpoint_of_other_classes_and_method_override(users):
    cfg, weights = random_model(3, os.path.join(users["model"], "three"))
    before = tree_digest(users["mine"])
    out = slim("--data", users["data"], "--weights", weights, "--method", "normal", "--out", users["out"], *QUICK)
    assert tree_digest(users["mine"]) == before
    assert "classes 3 -> 2" in out
    text, _ = report(users["out"])
    assert "(Darknet .data)" in text and f"starting point: your pair ({weights}), 3 classes" in text
    assert "method: normal (--method); sparsity on the BNs it prunes (--prune normal)" in text
    stage = json.load(open(os.path.join(users["out"], "sparse", "stage.json")))["key"]["config"]
    assert stage["prune"] == "normal"


def test_yaml_with_an_alexeyab_pair_of_the_same_classes_skips_the_transfer(users):
    from yoloslim.darknet.weights import read_weights_file
    cfg, weights = random_model(2, os.path.join(users["model"], "mine2"), version=(0, 2, 5), seen=2 ** 33 + 7)
    version, seen, _ = read_weights_file(weights)
    assert tuple(version) == (0, 2, 5) and seen == 2 ** 33 + 7      # 64-bit seen in the header
    before = tree_digest(users["mine"])
    out = slim("--data", users["yaml"], "--cfg", cfg, "--weights", weights, "--out", users["out"], *QUICK)
    assert tree_digest(users["mine"]) == before
    assert "2/6 transfer: skipped" in out and "classes 2 -> 2" in out      # loaded whole, nothing re-initialised
    assert "re-initialised" not in out
    assert not os.path.exists(os.path.join(users["out"], "train"))       # no transfer stage was trained
    stage = json.load(open(os.path.join(users["out"], "sparse", "stage.json")))["key"]["config"]
    assert stage["sr"] is True and stage["weights"] == weights
    text, rep = report(users["out"])
    assert list(rep["rows"]) == ["base (your weights)", "sparsity-trained", "pruned", "pruned + fine-tuned"]
    assert "(dataset YAML)" in text and "transfer: skipped, the weights were trained on 2 classes" in text
    assert "anchors 2x2, 4x4, 6x9, 12x13, 21x26, 53x49: the base cfg's, scaled to the input size" in text  # 416 -> 64
    final = os.path.join(users["out"], "final", "tiny-finetuned.weights")
    version, seen, _ = read_weights_file(final)                          # the header travels to the deployed file,
    assert tuple(version[:2]) == (0, 2) and version[2] == 1006 and seen == 2 ** 33 + 7   # revision: its reader


def test_data_is_not_taken_for_data_dir_and_the_two_do_not_mix(users, tmp_path):
    out = slim("--dat", users["data"], "--out", str(tmp_path / "r"), expect=2)
    assert "unrecognized arguments: --dat" in out
    out = slim("--data", users["data"], "--data-dir", str(tmp_path / "d"), "--out", str(tmp_path / "r"), expect=2)
    assert "with --data nothing is generated" in out
    out = slim("--data", users["folder"], "--out", os.path.join(users["folder"], "run"), expect=2)
    assert "inside the data set's folder" in out
    assert not os.path.exists(tmp_path / "r") and not os.path.exists(os.path.join(users["folder"], "run"))


def test_darknet_weights_without_their_cfg_are_refused_before_anything_is_written(users, tmp_path):
    _, weights = random_model(2, os.path.join(users["model"], "lone"), version=(0, 2, 5))
    out = slim("--data", users["data"], "--weights", weights, "--out", str(tmp_path / "r"), expect=2)
    assert "needs the --cfg it was trained with" in out and not os.path.exists(tmp_path / "r")


def test_a_users_data_gets_the_longer_fine_tune_unless_told(users):
    """8 distilled epochs after pruning with --data (4 ended 0.0102 below the base on a photo set),
    4 on the built-in set, and --finetune-epochs wins over both."""
    import slim
    out = os.path.join(users["out"], "parsed")
    assert slim.parse_args(["--data", users["data"], "--out", out]).finetune_epochs == slim.DATA_FINETUNE_EPOCHS == 8
    assert slim.parse_args(["--data", users["data"], "--out", out, "--finetune-epochs", "2"]).finetune_epochs == 2
    assert slim.parse_args(["--out", out]).finetune_epochs == 4


def test_a_latency_budget_replaces_the_ratio(users, tmp_path):
    """--target-ms: the plan comes from the latency planner, is fine-tuned like a ratio's, and the
    report judges the measured ms against the budget (met or missed: this machine's speed decides)."""
    from yoloslim.darknet.load import load_model
    from yoloslim.deploy.layer_latency import LatencyCache, RuntimeTimer, build_tables
    cfg, weights = random_model(2, os.path.join(users["model"], "budget"), version=(0, 2, 5))
    cache_home = str(tmp_path / "xdg")
    model = load_model(cfg, weights, 64).eval()
    tables = build_tables(model, "opencv", None, 64, 1, RuntimeTimer("opencv", 1),
                          LatencyCache("opencv", 1, os.path.join(cache_home, "yoloslim", "latency")), False)
    # half the tables' prediction: slim.py times its derived cfg afresh (another cache key), and
    # under the other test worker's load two timings of one model differed by x1.74 (0.7 was refused:
    # "already meets it"); the tiny policy's floor is about a quarter of the model here
    target = round(0.5 * tables.predict({}), 3)
    before = tree_digest(users["mine"])
    proc = subprocess.run([sys.executable, "slim.py", "--data", users["data"], "--cfg", cfg, "--weights", weights,
                           "--out", users["out"], "--target-ms", str(target), "--runtime", "opencv", *QUICK],
                          cwd=ROOT, capture_output=True, text=True, timeout=HANG_LIMIT,
                          env={**ENV, "XDG_CACHE_HOME": cache_home})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert tree_digest(users["mine"]) == before
    assert f"prune (tiny, to {target:g} ms on opencv)" in proc.stdout
    assert "latency tables:" in proc.stdout and "calibration: planned for" in proc.stdout
    text, rep = report(users["out"])
    assert rep["budget"]["target"]["ms"] == target and rep["timing"]["runtimes"] == ["opencv"]
    assert "Plan found for the budget, not a ratio" in text and "ratio_search" not in text
    assert re.search(rf"budget (met|missed by [\d.]+%): predicted [\d.]+ ms, measured [\d.]+ ms, target {target:g} ms",
                     text)
    row = next(r for r in text.splitlines() if r.startswith("| OpenCV latency (--target-ms) |"))
    assert row.startswith(f"| OpenCV latency (--target-ms) | <= {target:g} ms |"), row
    assert rep["rows"]["pruned"]["params"] < rep["rows"]["sparsity-trained"]["params"]


@pytest.mark.parametrize("flags, message", [
    (["--target-ms", "5"], "--target-ms is a budget on one runtime: pass --runtime"),
    (["--target-ms", "5", "--runtime", "opencv,onnxruntime"], "--target-ms is a budget on one runtime"),
    (["--target-ms", "5", "--runtime", "opencv", "--percent", "0.5"], "--percent 0.5 fixes the ratio"),
])
def test_contradicting_a_latency_budget_is_refused_before_any_work(users, flags, message):
    out = slim("--data", users["data"], "--out", users["out"], *flags, expect=2)
    assert message in out and not os.path.exists(users["out"])
