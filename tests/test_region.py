"""YOLOv2's [region] head: read back identically by OpenCV and pjreddie Darknet, trained, pruned.

The shipped yolov2-tiny (no reorg) and yolov2 (a [reorg] passthrough) at SIZE px with random
weights: the decoded outputs (boxes, objectness, objectness x class) against OpenCV's region layer
and Darknet's detections, the raw layer output against Darknet's. The cfg copies set thresh=0:
OpenCV zeroes every class score under the region's thresh (.6 in the shipped files), which would
leave nothing to compare. Negative controls show the comparisons see the softmax and the
grid-cell anchors.
"""
import numpy as np
import pytest
import torch

from conftest import cfg_path
from test_prune import relative_difference
from yoloslim.darknet.cfg import parse_cfg_text, parse_model_cfg, write_model_cfg
from yoloslim.darknet.kinds import KINDS, RegionLayer, YOLOLayer, kind_of, layer_strides
from yoloslim.darknet.model import Darknet
from yoloslim.data.files import cfg_classes
from yoloslim.deploy.darknet_ref import darknet_difference, run_darknet
from yoloslim.deploy.measure import count_params, randomize_weights
from yoloslim.deploy.opencv_dnn import max_difference_from_opencv, random_input
from yoloslim.deploy.parity import TOLERANCE, scaled_difference
from yoloslim.prune.engine import POLICIES, prune, write_pruned, zeroed_reference
from yoloslim.pipeline.derive import scaled_anchors
from yoloslim.prune.graph import analyze
from yoloslim.train.loss import compute_loss
from yoloslim.train.transfer import cfg_for_data

SIZE = 128
MODELS = ("yolov2-tiny", "yolov2")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def at_size(name, folder):
    """A copy of the shipped cfg at SIZE px with thresh=0 (see the module docstring)."""
    defs = parse_model_cfg(cfg_path(name))
    defs[0]["width"] = defs[0]["height"] = SIZE
    for d in defs[1:]:
        if d["type"] == "region":
            d["thresh"] = 0
    path = str(folder / f"{name}.cfg")
    write_model_cfg(defs, path)
    return path


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """name -> (random-weight model, cfg copy, .weights for OpenCV, .weights for pjreddie)."""
    folder, cache = tmp_path_factory.mktemp("region"), {}

    def get(name):
        if name not in cache:
            cfg = at_size(name, folder)
            model = randomize_weights(Darknet(cfg), seed=3).eval()
            files = []
            for reader in ("opencv", "pjreddie"):
                files.append(str(folder / f"{name}-{reader}.weights"))
                model.save_darknet_weights(files[-1], reader=reader)
            cache[name] = (model, cfg, *files)
        return cache[name]
    return get


def darknet_decoded_difference(model, cfg, weights, x):
    """Our decoded rows against Darknet's region detections (all of them: thresh 0, no NMS), both
    in Darknet's order (anchor, row, column), boxes relative to the input; w and h (exp() outputs,
    up to 5x the input here) relative to their value where above 1, as every layout comparison."""
    run = run_darknet(cfg, weights, x, thresh=0.0, nms=0)
    with torch.no_grad():
        io = model.eval()(torch.from_numpy(x)[None])[0][0].double().numpy()
    ours = np.concatenate((io[:, :4] / SIZE, io[:, 4:5], io[:, 5:] * io[:, 4:5]), 1)
    theirs = np.concatenate((run.boxes, run.objectness[:, None], run.probs), 1)
    relative = np.zeros(theirs.shape, bool)
    relative[:, 2:4] = True
    return scaled_difference(ours, theirs, relative=relative)


@pytest.mark.parametrize("name", MODELS)
def test_region_matches_opencv(pairs, name):
    model, cfg, weights, _ = pairs(name)
    assert max_difference_from_opencv(model, cfg, weights, SIZE) <= TOLERANCE   # measured 2.0e-6 / 9.5e-6


@pytest.mark.parametrize("name", MODELS)
def test_region_matches_darknet(darknet, pairs, name):
    model, cfg, _, weights = pairs(name)
    x = random_input(SIZE, seed=1)[0]
    assert darknet_difference(model, run_darknet(cfg, weights, x), x) <= TOLERANCE   # measured 3.7e-6 / 1.4e-5
    assert darknet_decoded_difference(model, cfg, weights, x) <= TOLERANCE           # measured 2.8e-6 / 1.4e-5


def test_comparisons_see_the_softmax_and_the_grid_anchors(pairs, monkeypatch):
    """The same comparison fails for a region decoded like a [yolo]: logistic classes, or anchors
    taken as pixels."""
    model, cfg, weights, _ = pairs("yolov2-tiny")
    with monkeypatch.context() as m:
        m.setattr(RegionLayer, "scores", YOLOLayer.scores)
        assert max_difference_from_opencv(model, cfg, weights, SIZE) > 100 * TOLERANCE
    with monkeypatch.context() as m:
        m.setattr(RegionLayer, "pixel_anchors", YOLOLayer.pixel_anchors)
        assert max_difference_from_opencv(model, cfg, weights, SIZE) > 100 * TOLERANCE


def test_region_decoding_formula():
    head = RegionLayer([(1.0, 2.0)], nc=4)
    p = torch.zeros(1, 1, 2, 3, 9)                 # one anchor, a 2x3 grid, logits all 0
    io = head.decode(p, (64, 96))[0]               # 32 px cells
    assert torch.allclose(io[:, 0], torch.tensor([16.0, 48.0, 80.0] * 2))       # (0.5 + column) * 32
    assert torch.allclose(io[:, 2:4], torch.tensor([32.0, 64.0]).expand(6, 2))  # anchor (cells) * 32
    assert torch.allclose(io[:, 4], torch.full((6,), 0.5))
    assert torch.allclose(io[:, 5:], torch.full((6, 4), 0.25))                 # softmax, not sigmoid's 0.5


def test_region_cfg_round_trip_and_classes(tmp_path):
    defs = parse_model_cfg(cfg_path("yolov2"))
    write_model_cfg(defs, str(tmp_path / "copy.cfg"))
    again = parse_model_cfg(str(tmp_path / "copy.cfg"))
    assert [dict(d) for d in again] == [dict(d) for d in defs]
    region = again[-1]
    assert region["anchors"][:2] == [0.57273, 0.677385] and region["softmax"] == 1
    assert cfg_classes(again[1:]) == 80 and kind_of(region).is_head
    model = randomize_weights(Darknet(defs))
    model.save_darknet_weights(tmp_path / "m.weights")
    other = Darknet(again).load_darknet_weights(tmp_path / "m.weights")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


def test_derived_region_anchors_are_written_in_grid_cells():
    pixels = [(16.0, 24.0), (40.0, 64.0), (80.0, 48.0), (96.0, 120.0), (200.0, 160.0)]
    defs = cfg_for_data(cfg_path("yolov2-tiny"), 3, pixels, 256)
    i = next(k for k, d in enumerate(defs[1:]) if d["type"] == "region")
    stride = layer_strides(defs[1:])[i]
    assert stride == 32 and defs[1:][i]["anchors"][:2] == [0.5, 0.75]
    assert KINDS["region"].pixel_anchors(defs[1:][i], stride) == pixels
    assert defs[1:][i - 1]["filters"] == 5 * (5 + 3) and cfg_classes(defs[1:]) == 3
    kept, reported = scaled_anchors(cfg_path("yolov2-tiny"), parse_model_cfg(cfg_path("yolov2-tiny")), 3, 128)
    assert kept[-1]["anchors"] == parse_model_cfg(cfg_path("yolov2-tiny"))[-1]["anchors"]   # grid cells: no rescale
    assert reported[0] == pytest.approx((0.57273 * 32, 0.677385 * 32))


SMALL = """[net]
width=96
height=96
channels=3
[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky
[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky
[convolutional]
filters=24
size=1
activation=linear
[region]
anchors=0.5,0.7, 1.5,1.2, 3.0,3.2
classes=3
num=3
coords=4
softmax=1
"""


def test_region_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    model = Darknet(parse_cfg_text(SMALL)).train()
    imgs = torch.rand(4, 3, 96, 96)
    targets = torch.tensor([[0, 0, 0.3, 0.4, 0.2, 0.3], [1, 1, 0.6, 0.5, 0.4, 0.2],
                            [2, 2, 0.5, 0.5, 0.6, 0.6], [3, 1, 0.2, 0.7, 0.1, 0.15]])
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(10):
        loss, items = compute_loss(model(imgs), targets, model, img_hw=imgs.shape[-2:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(items)
    assert all(torch.isfinite(i).all() for i in losses) and losses[0][2] > 0   # the class term is live
    assert losses[-1][3] < 0.6 * losses[0][3], [float(i[3]) for i in losses]
    assert losses[-1][2] < losses[0][2]                                         # softmax classes learn


def test_region_trains_end_to_end(tmp_path):
    """train.py on a region cfg: one epoch on synthetic shapes, evaluated and written."""
    import train
    from yoloslim.data.synthetic import generate
    generate(str(tmp_path / "data"), n_train=8, n_val=4, img_size=96, seed=0, workers=1, progress=False)
    cfg = tmp_path / "small.cfg"
    cfg.write_text(SMALL.replace("classes=3", "classes=5").replace("filters=24", "filters=30"))
    out = tmp_path / "run"
    result = train.train(train.parse_args(["--cfg", str(cfg), "--data", str(tmp_path / "data" / "shapes.data"),
                                           "--epochs", "1", "--batch-size", "4", "--img-size", "96",
                                           "--workers", "0", "--out", str(out), "--quiet"]))
    assert result is not None and any(p.suffix == ".weights" for p in out.iterdir())


@pytest.mark.parametrize("name", MODELS)
def test_pruned_region_model_reads_back(darknet, pairs, name, tmp_path):
    model, _, _, _ = pairs(name)
    compact, (plan,) = prune(model, POLICIES["normal"], percent=0.5, layer_keep=0.05)
    assert plan.pruned_channels() > 0 and count_params(compact) < count_params(model)
    assert relative_difference(compact, zeroed_reference(model, plan), size=64) < 1e-5
    cfg, weights = write_pruned(compact, str(tmp_path), "pruned")
    for d in parse_model_cfg(cfg)[1:]:
        assert d["type"] != "region" or d["thresh"] == 0
    assert max_difference_from_opencv(compact, cfg, weights, SIZE) <= TOLERANCE
    compact.save_darknet_weights(tmp_path / "pj.weights", reader="pjreddie")
    x = random_input(SIZE, seed=2)[0]
    assert darknet_decoded_difference(compact, cfg, str(tmp_path / "pj.weights"), x) <= TOLERANCE


def test_reorg_producer_is_frozen_and_the_rest_prunes():
    """yolov2's passthrough conv feeds a [reorg], which mixes channels with positions: the graph
    keeps that conv whole (derived from the kinds, no index written here) and prunes the others."""
    defs = parse_model_cfg(cfg_path("yolov2"))[1:]
    graph = analyze(defs)
    reorg = next(i for i, d in enumerate(defs) if d["type"] == "reorg")
    (producer,) = graph.sources[reorg]
    assert defs[producer]["type"] == "convolutional" and producer not in graph.prunable
    assert graph.sources[producer][0] in graph.prunable or defs[graph.sources[producer][0]]["type"] == "route"
    assert len(graph.prunable) >= 20 and graph.head_convs == {len(defs) - 2}
