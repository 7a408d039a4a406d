"""The read-back comparison shared by the OpenCV and Darknet checks: scale-aware, NaN-aware."""
import numpy as np
import pytest
import torch

from conftest import cfg_path
from yoloslim.darknet.model import Darknet
from yoloslim.deploy.opencv_dnn import max_difference_from_opencv, max_layout_difference, opencv_read_back, random_input
from yoloslim.deploy.parity import FLOAT32_FACTOR, TOLERANCE, float32_error, read_back_tolerance, scaled_difference, within
from yoloslim.deploy.measure import randomize_weights


def test_nan_or_inf_anywhere_is_a_mismatch():
    a = np.zeros((4, 85), np.float32)
    for bad in (np.nan, np.inf):
        b = a.copy()
        b[3, 40] = bad
        assert scaled_difference(a, b) == float("inf") and scaled_difference(b, a) == float("inf")
        assert not within(max_layout_difference([a], [b]))
    assert not within(float("nan"))
    assert scaled_difference(a, a[:3]) == float("inf")


def test_error_is_measured_against_the_head_magnitude():
    ref = np.linspace(-40, 40, 170).reshape(2, 85)
    noisy = ref + 2e-3  # float32 noise of a head whose raw values reach 40
    assert scaled_difference(noisy, ref, scale=40.0) <= TOLERANCE
    assert scaled_difference(noisy, ref, scale=1.0) > TOLERANCE
    relative = np.zeros(ref.shape, bool)
    relative[:, 2:4] = True                  # w, h = anchor * exp(raw): float error grows with the value
    wide = ref.copy()
    wide[:, 2:4] = 1e4
    drifted = wide.copy()
    drifted[:, 2:4] *= 1 + 1e-6              # 1e-2 absolute, 1e-6 relative
    assert scaled_difference(drifted, wide, 1.0, relative) <= TOLERANCE
    assert scaled_difference(drifted, wide, 1.0) > TOLERANCE


@pytest.fixture(scope="module")
def loud_tiny(tmp_path_factory):
    """yolov4-tiny whose head values reach ~40, as an untrained deep model's do."""
    model = randomize_weights(Darknet(cfg_path("yolov4-tiny")), seed=1).eval()
    with torch.no_grad():
        for i in model.yolo_layers:
            model.module_list[i - 1].Conv2d.weight *= 30
    folder = tmp_path_factory.mktemp("loud")
    cfg, weights = cfg_path("yolov4-tiny"), str(folder / "loud.weights")
    model.save_darknet_weights(weights)
    return model, cfg, weights


def test_opencv_gate_passes_float_noise_of_large_heads(loud_tiny):
    model, cfg, weights = loud_tiny
    assert within(max_difference_from_opencv(model, cfg, weights, 256))


def test_opencv_gate_catches_a_wrong_weight(loud_tiny):
    model, cfg, weights = loud_tiny
    other = randomize_weights(Darknet(cfg_path("yolov4-tiny")), seed=1).eval()  # heads not scaled
    assert not within(max_difference_from_opencv(other, cfg, weights, 256))


def test_gate_tolerance_follows_the_models_own_float32_error(loud_tiny):
    model, cfg, weights = loud_tiny
    x = random_input(128)
    noise = float32_error(model, x)
    assert 0 < noise < TOLERANCE / FLOAT32_FACTOR  # a small model: the fixed bound applies
    assert read_back_tolerance(model, x) == TOLERANCE
    diff, tolerance = opencv_read_back(model, cfg, weights, 128)
    assert tolerance == TOLERANCE and within(diff, tolerance)


NEW_COORDS_CFG = """[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=18
activation=logistic

[yolo]
mask=0,1,2
anchors=6,9, 20,24, 58,40
classes=1
num=3
new_coords=1
scale_x_y=2.0
"""


def decoded_difference(model, raw_a, raw_b, monkeypatch):
    """max_layout_difference between the decoded outputs of two raw head maps (scale 1)."""
    from yoloslim.deploy.opencv_dnn import torch_in_opencv_layout
    outs = []
    for raw in (raw_a, raw_b):
        monkeypatch.setattr(model, "forward_raw", lambda x, raw=raw: [raw])
        outs.append(torch_in_opencv_layout(model, np.zeros((1, 3, 64, 64), np.float32)))
    return max_layout_difference(outs[0], outs[1])


def test_decode_gain_bounds_how_new_coords_heads_enlarge_a_raw_error(tmp_path, monkeypatch):
    """wh = (2t)^2 * anchor: a raw error e moves the normalized box size by up to 8 t (a/size) e, so a
    deep Scaled-YOLOv4 model's float noise passes the gate only with this gain (benchmarks/parity_noise.py)."""
    from yoloslim.deploy.parity import decode_gain
    path = tmp_path / "nc.cfg"
    path.write_text(NEW_COORDS_CFG)
    model = Darknet(str(path)).eval()
    assert decode_gain(model, 64) == pytest.approx(4 * (58 / 64) ** 0.5)        # the widest anchor, 3.81
    assert decode_gain(randomize_weights(Darknet(cfg_path("yolov3-tiny"))), 416) == 1.0   # classic heads
    g = torch.Generator().manual_seed(0)
    raw = torch.rand(1, 18, 32, 32, generator=g) * 0.98 + 0.01
    e = 1e-4
    noisy = raw + e * (torch.randint(0, 2, raw.shape, generator=g) * 2 - 1)
    diff = decoded_difference(model, raw, noisy, monkeypatch)
    assert diff <= decode_gain(model, 64) * e * 1.01                        # first order; 1% for the second
    assert diff > 2 * e                                                     # the gain is needed: 1 was too tight
