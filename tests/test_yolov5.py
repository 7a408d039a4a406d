"""yolov5 v6.0 written as a Darknet cfg (cfg/yolov5{n,s}.cfg, scripts/yolov5_cfg.py).

What the seeds' yolov5 pruning needs from it: the published size, yolov5's box decode, the C3
bottlenecks seen as residual blocks and shortcut groups by the same graph analysis as yolov3,
and the prune scripts and train.py running on it as a user runs them.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import HANG_LIMIT, ROOT, cfg_path
from yoloslim.darknet.model import Darknet
from yoloslim.zoo.yolov5 import MODELS, YOLOV5_V6, yolov5_cfg_text
from yoloslim.deploy.opencv_dnn import opencv_forward, read_net
from yoloslim.darknet.cfg import parse_model_cfg
from yoloslim.prune.graph import analyze
from yoloslim.data.synthetic import generate
from yoloslim.deploy.measure import count_flops, count_params, randomize_weights

# ultralytics' own summaries of yolov5 v6.0 at 640 px, 80 classes (README table and model.info()):
# parameters exactly, GFLOPs rounded to 0.1 (thop: 2 x multiply-adds, as our count_flops)
PUBLISHED = {"s": (7_235_389, 16.5), "n": (1_872_157, 4.5)}
IMG = 128
ENV = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}


def backbone_c3_repeats(name):
    """Bottleneck counts of the C3 blocks with shortcuts (the backbone's), from the yaml table."""
    depth = MODELS[name][0]
    return [max(round(n * depth), 1) for _, n, module, args in YOLOV5_V6 if module == "C3" and len(args) == 1]


@pytest.mark.parametrize("name", ["s", "n"])
def test_shipped_cfg_is_the_generator_output(name):
    with open(cfg_path(f"yolov5{name}")) as f:
        assert f.read() == yolov5_cfg_text(name)


@pytest.mark.parametrize("name", ["s", "n"])
def test_params_and_flops_match_published(name):
    model = Darknet(cfg_path(f"yolov5{name}"))
    params, gflops = PUBLISHED[name]
    assert count_params(model) == params
    # we count conv multiply-adds x2 only; thop's figure adds a little (BN, activations)
    assert abs(count_flops(model, 640) / 1e9 - gflops) / gflops < 0.01


@pytest.mark.parametrize("name", ["s", "n"])
def test_c3_bottlenecks_are_residual_blocks_and_shortcut_groups(name):
    graph = analyze(parse_model_cfg(cfg_path(f"yolov5{name}"))[1:])
    repeats = backbone_c3_repeats(name)
    assert len(graph.blocks) == sum(repeats)
    # one residual stream per backbone C3: its cv1 plus the 3x3 conv of each bottleneck
    assert sorted(len(g) for g in graph.shortcut_groups()) == sorted(1 + n for n in repeats)
    for block in graph.blocks:
        first, last = block.convs
        assert graph.module_defs[first]["size"] == 1 and graph.module_defs[last]["size"] == 3
        assert graph.in_shortcut_group(last) and not graph.in_shortcut_group(first)
    # the head's C3 bottlenecks have no shortcut: plain prunable convs, not blocks
    in_blocks = {c for b in graph.blocks for c in b.convs}
    free = [c for c in graph.prunable if c not in in_blocks and not graph.in_shortcut_group(c)]
    assert len(free) > len(in_blocks)


def test_decode_matches_yolov5_formula(tmp_path):
    """OpenCV's [yolo] new_coords=1 scale_x_y=2 after logistic head convs gives yolov5's boxes:
    xy = (2*sig - 0.5 + cell) * stride, wh = (2*sig)^2 * anchor, scores = sig (obj * cls)."""
    model = randomize_weights(Darknet(cfg_path("yolov5n"), IMG), seed=3).eval()
    weights = str(tmp_path / "yolov5n.weights")
    model.save_darknet_weights(weights)
    x = np.random.default_rng(0).random((1, 3, IMG, IMG), dtype=np.float32)
    theirs = opencv_forward(read_net(cfg_path("yolov5n"), weights, exact=True), x)
    with torch.no_grad():
        maps = model.forward_raw(torch.from_numpy(x))
    for i, sig, out in zip(model.yolo_layers, maps, theirs):
        head = model.module_list[i]
        p = head.reshape(sig)[0].double()                     # (na, ny, nx, no), already sigmoid
        na, ny, nx, no = p.shape
        yv, xv = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
        xy = (p[..., :2] * 2 - 0.5 + torch.stack((xv, yv), -1)) / torch.tensor([nx, ny])
        wh = (p[..., 2:4] * 2) ** 2 * head.anchors.double().view(na, 1, 1, 2) / IMG
        ours = torch.cat((xy, wh, p[..., 4:5], p[..., 5:] * p[..., 4:5]), -1).permute(1, 2, 0, 3).reshape(-1, no)
        ours = ours.numpy()
        assert np.abs(ours[:, [0, 1, 4]] - out[:, [0, 1, 4]]).max() < 1e-4
        assert (np.abs(ours[:, 2:4] - out[:, 2:4]) / np.maximum(1, out[:, 2:4])).max() < 1e-4
        shown = out[:, 5:] > 0                                 # OpenCV zeroes scores under its threshold
        assert shown.any() and np.abs(ours[:, 5:][shown] - out[:, 5:][shown]).max() < 1e-4


@pytest.fixture(scope="module")
def trained_yolov5n(tmp_path_factory):
    """One epoch of train.py on a few synthetic images at 128 px, from a 5-class yolov5n cfg
    written by the generator's command line."""
    work = tmp_path_factory.mktemp("yolov5")
    cfg = work / "yolov5n-5cls.cfg"
    run("scripts/yolov5_cfg.py", "--model", "n", "--classes", "5", "--out", cfg)
    generate(str(work / "shapes"), n_train=16, n_val=4, img_size=IMG, seed=0, workers=1, progress=False)
    data = work / "shapes" / "shapes.data"
    run("train.py", "--cfg", cfg, "--data", data, "--epochs", "1", "--batch-size", "8", "--img-size", IMG,
        "--workers", "0", "--out", work / "train", "--quiet", "-sr", "--s", "0.001", "--prune", "1")
    return str(cfg), str(work / "train" / "last.pt"), str(data), work


def run(script, *args):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=HANG_LIMIT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_train_one_epoch(trained_yolov5n):
    cfg, last, _, _ = trained_yolov5n
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    model = Darknet(cfg).load_checkpoint_state(ckpt, last)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("script,args", [
    ("shortcut_prune.py", ["--percent", "0.5"]),                          # C3 residual streams, one mask each
    ("layer_channel_prune.py", ["--layers", "2", "--percent", "0.3"]),   # seed: remove whole bottlenecks
    ("normal_prune.py", ["--importance", "l1", "--percent", "0.3"]),     # seed: kernel (filter) L1
])
def test_prune_scripts(trained_yolov5n, script, args):
    cfg, last, data, work = trained_yolov5n
    out = work / script.replace(".py", "")
    stdout = run(script, "--cfg", cfg, "--weights", last, "--layer-keep", "0.05", "--img-size", IMG,
                 "--latency-runs", "0", "--out", out, *args)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["opencv_max_diff"] <= summary["opencv_tolerance"] and "OpenCV DNN reads them back" in stdout
    assert summary["after"]["params"] < summary["before"]["params"]
    pruned = Darknet(summary["out_cfg"])
    if script == "layer_channel_prune.py":
        assert len(analyze(pruned.module_defs).blocks) == len(analyze(Darknet(cfg).module_defs).blocks) - 2
