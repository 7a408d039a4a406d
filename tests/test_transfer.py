"""Transfer learning from the real COCO yolov3-tiny into a 5-class cfg (Darknet's partial loading)."""
import math
import os
import subprocess
import sys

import pytest
import torch

from yoloslim.darknet.model import Darknet
from yoloslim.darknet.load import load_model
from yoloslim.errors import WeightsError
from yoloslim.train.loss import layer_strides
from yoloslim.train.transfer import load_partial, ranges
from conftest import HANG_LIMIT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY5 = os.path.join(ROOT, "cfg", "yolov3-tiny-5cls.cfg")
NARROW = os.path.join(ROOT, "cfg", "yolov3-narrow.cfg")
IMG = 160


@pytest.fixture(scope="module")
def coco(coco_tiny):
    return load_model(coco_tiny["cfg"], coco_tiny["weights"])


def layer_tensors(module):
    return {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}


def head_convs(model):
    return [i - 1 for i in model.yolo_layers]


def check_prior(model, conv_index, img_size):
    """Objectness biases at log(8 / cells) (plus a small random init), class biases at log(0.6 / (nc - 0.99))."""
    yolo = model.module_list[conv_index + 1]
    b = model.module_list[conv_index].Conv2d.bias.detach().view(yolo.na, yolo.no)
    cells = (img_size / layer_strides(model.module_defs)[conv_index + 1]) ** 2
    assert torch.allclose(b[:, 4], torch.full((yolo.na,), math.log(8 / cells)), atol=0.2)
    assert torch.allclose(b[:, 5:], torch.full_like(b[:, 5:], math.log(0.6 / (yolo.nc - 0.99))), atol=0.2)


@pytest.mark.parametrize("source", ["weights", "pt"])
def test_class_change_loads_backbone_and_reinitialises_heads_with_the_prior(coco, coco_tiny, tmp_path, source):
    path = coco_tiny["weights"]
    if source == "pt":                       # a checkpoint of ours carries its cfg
        path = str(tmp_path / "coco.pt")
        torch.save(coco.checkpoint(), path)
    torch.manual_seed(0)
    model = Darknet(TINY5, IMG)
    report = load_partial(model, path)
    heads = head_convs(model)
    assert (report.source_classes, report.target_classes) == (80, 5)
    assert report.heads_reinit == heads and report.reinit == heads
    convs = [i for i, m in enumerate(model.module_defs) if m["type"] == "convolutional"]
    assert report.loaded == [i for i in convs if i not in heads]
    for i in report.loaded:                 # every loaded tensor equals the source bit for bit
        mine, theirs = layer_tensors(model.module_list[i]), layer_tensors(coco.module_list[i])
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), i
    for i in heads:
        assert model.module_list[i].Conv2d.weight.shape[0] == 3 * (5 + 5)
        check_prior(model, i, IMG)
    lines = "\n".join(report.lines())
    assert "classes 80 -> 5" in lines and f"re-initialised  {ranges(heads, report.no_params)}" in lines


def test_solves_the_source_class_count_without_its_cfg(coco, coco_tiny, tmp_path):
    lone = tmp_path / "lone.weights"        # no lone.cfg beside it
    lone.write_bytes(open(coco_tiny["weights"], "rb").read())
    model = Darknet(TINY5, IMG)
    report = load_partial(model, str(lone))
    assert report.source_classes == 80 and report.heads_reinit == head_convs(model)
    assert torch.equal(model.module_list[0].Conv2d.weight, coco.module_list[0].Conv2d.weight)


def test_cutoff_stops_loading_and_other_networks_are_refused(coco, coco_tiny):
    torch.manual_seed(0)
    fresh = Darknet(TINY5, IMG)
    model = Darknet(TINY5, IMG)
    model.load_state_dict(fresh.state_dict())
    cutoff = 6
    report = load_partial(model, coco_tiny["weights"], cutoff=cutoff)
    assert report.loaded and max(report.loaded) < cutoff and min(report.cut) >= cutoff
    assert torch.equal(model.module_list[report.loaded[-1]].Conv2d.weight,
                       coco.module_list[report.loaded[-1]].Conv2d.weight)
    past = report.cut[0]
    assert torch.equal(model.module_list[past].Conv2d.weight, fresh.module_list[past].Conv2d.weight)
    for i in head_convs(model):              # past the cutoff too: fresh heads start at the prior
        check_prior(model, i, IMG)
    with pytest.raises(WeightsError, match="another network"):
        load_partial(Darknet(NARROW, IMG), coco_tiny["weights"])


def test_train_cli_prints_loaded_reinitialised_frozen(coco_tiny, tmp_path):
    from yoloslim.data.synthetic import generate
    generate(str(tmp_path / "d"), n_train=8, n_val=4, img_size=IMG, seed=0, workers=1, progress=False)
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", "--cfg", TINY5, "--weights", coco_tiny["weights"], "--data",
           str(tmp_path / "d" / "shapes.data"), "--epochs", "1", "--batch-size", "8", "--img-size", str(IMG),
           "--workers", "0", "--threads", "1", "--freeze", "9", "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=HANG_LIMIT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "classes 80 -> 5" in proc.stdout
    heads = ", ".join(str(i) for i in head_convs(Darknet(TINY5)))
    assert f"re-initialised  {heads} " in proc.stdout
    assert "frozen          0-8 for the first 1 epoch(s)" in proc.stdout
    trained = torch.load(out / "last.pt", weights_only=True)["model"]
    coco = load_model(coco_tiny["cfg"], coco_tiny["weights"]).state_dict()
    assert torch.equal(trained["module_list.0.Conv2d.weight"], coco["module_list.0.Conv2d.weight"])
    assert torch.equal(trained["module_list.8.BatchNorm2d.running_mean"], coco["module_list.8.BatchNorm2d.running_mean"])
    assert not torch.equal(trained["module_list.10.Conv2d.weight"], coco["module_list.10.Conv2d.weight"])
