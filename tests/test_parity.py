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
