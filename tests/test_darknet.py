"""Our PyTorch model against the original Darknet (pjreddie, Debian's libdarknet) on the real COCO tiny.

The real tiny's header (0.2.0) says pjreddie, so it is loaded in pjreddie's BN arithmetic and
compared as it is. A model with small variances, written for pjreddie, must be what Darknet runs;
written for OpenCV it must not be. Raw maps relative to each head's magnitude
(yoloslim.deploy.parity.TOLERANCE = 1e-4); detections to 1 px and 0.01 in score.
"""
import glob
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import HANG_LIMIT, ROOT
from yoloslim.darknet.load import load_model
from yoloslim.deploy.darknet_ref import darknet_difference, run_darknet, run_darknet_many
from yoloslim.data.datasets import letterbox, read_image, to_tensor
from yoloslim.errors import SlimError
from yoloslim.eval.metrics import non_max_suppression
from yoloslim.deploy.parity import TOLERANCE
from conftest import cfg_path
from yoloslim.darknet.model import Darknet
from yoloslim.deploy.reader_checks import reader_model, with_small_variances
from yoloslim.deploy.measure import randomize_weights

PHOTOS = sorted(glob.glob("/usr/share/darknet/data/*.jpg"))
SIZE = 416


@pytest.fixture(scope="module")
def tiny_on_photos(darknet, coco_tiny):
    """(model, inputs, Darknet runs) for every Debian test photo, letterboxed by our loader."""
    assert PHOTOS, "Darknet is installed but /usr/share/darknet/data/*.jpg is missing"
    model = load_model(coco_tiny["cfg"], coco_tiny["weights"]).eval()
    xs = np.stack([to_tensor(letterbox(read_image(p), SIZE)[0]).numpy() for p in PHOTOS])
    return model, xs, run_darknet_many(coco_tiny["cfg"], coco_tiny["weights"], xs)


def test_real_tiny_raw_outputs_match_darknet(tiny_on_photos):
    model, xs, runs = tiny_on_photos
    for path, x, run in zip(PHOTOS, xs, runs):
        assert darknet_difference(model, run, x) <= TOLERANCE, path


def test_real_tiny_read_as_opencv_is_not_what_darknet_runs(tiny_on_photos, coco_tiny):
    """The header decides: the same file read in OpenCV's arithmetic is further from Darknet."""
    model, xs, runs = tiny_on_photos
    as_opencv = load_model(coco_tiny["cfg"], coco_tiny["weights"], reader="opencv").eval()
    ours = max(darknet_difference(model, r, x) for x, r in zip(xs, runs))
    other = max(darknet_difference(as_opencv, r, x) for x, r in zip(xs, runs))
    assert ours < other / 2, (ours, other)    # measured: 3.4e-7 against 1.0e-6


@pytest.fixture(scope="module")
def small_variance_pairs(darknet, tmp_path_factory):
    """yolov3-narrow (yolov3's layers, small) with variances down to ~1e-4, written for pjreddie and for OpenCV."""
    model = with_small_variances(randomize_weights(Darknet(cfg_path("yolov3-narrow")), seed=5), seed=5).eval()
    folder = tmp_path_factory.mktemp("narrow")
    x = np.random.default_rng(1).random((3, 96, 96), dtype=np.float32)
    runs = {}
    for reader in ("pjreddie", "opencv"):
        weights = str(folder / f"{reader}.weights")
        model.save_darknet_weights(weights, reader=reader)
        runs[reader] = (weights, run_darknet(cfg_path("yolov3-narrow"), weights, x))
    return model, x, runs


def test_file_written_for_pjreddie_is_the_trained_model_in_darknet(small_variance_pairs):
    model, x, runs = small_variance_pairs
    assert darknet_difference(model, runs["pjreddie"][1], x) <= TOLERANCE
    assert darknet_difference(model, runs["opencv"][1], x) > TOLERANCE   # the gap the writer closes


def test_float64_pjreddie_arithmetic_is_what_darknet_computes(small_variance_pairs):
    """The re-implementation the AlexeyAB and pjreddie checks rely on, against the real library."""
    _, x, runs = small_variance_pairs
    for weights, run in runs.values():
        assert darknet_difference(reader_model(cfg_path("yolov3-narrow"), weights, "pjreddie"), run, x) <= TOLERANCE


def our_detections(model, x, thresh=0.25, nms=0.45):
    """(class, score, cx, cy, w, h) relative to the input, one per (box, class) above thresh."""
    with torch.no_grad():
        pred = model(torch.from_numpy(x)[None])[0]
    det = non_max_suppression(pred, thresh, nms, multi_label=True)[0].numpy()
    x1, y1, x2, y2 = (det[:, k] / SIZE for k in range(4))
    return [(int(c), float(s), *v) for c, s, *v in zip(det[:, 5], det[:, 4], (x1 + x2) / 2, (y1 + y2) / 2,
                                                         x2 - x1, y2 - y1)]


def unmatched(dets, others, px=1.0, score=0.01):
    """Detections of ``dets`` with no detection of the same class in ``others`` within px and score."""
    tol = px / SIZE
    return [d for d in dets if not any(o[0] == d[0] and abs(o[1] - d[1]) <= score
                                       and max(abs(a - b) for a, b in zip(o[2:], d[2:])) <= tol for o in others)]


def test_real_tiny_detections_match_darknet(tiny_on_photos):
    model, xs, runs = tiny_on_photos
    total = 0
    for path, x, run in zip(PHOTOS, xs, runs):
        theirs, ours = run.detections(0.25), our_detections(model, x)
        assert not unmatched(theirs, ours), f"{path}: Darknet finds what we do not"
        assert not unmatched(ours, theirs), f"{path}: we find what Darknet does not"
        total += len(theirs)
    assert total >= len(PHOTOS)  # real photos, real detections: an empty comparison proves nothing


def test_bad_pair_is_one_line_error(darknet, coco_tiny, tmp_path):
    x = np.zeros((3, 64, 64), np.float32)
    with pytest.raises(SlimError, match="Darknet cannot run this pair") as e:
        run_darknet(coco_tiny["cfg"], str(tmp_path / "missing.weights"), x)
    assert "\n" not in str(e.value)


def test_darknet_stray_bytes_and_last_complaint_are_one_line(darknet, monkeypatch, tmp_path):
    """Darknet's error() may print bytes that are not UTF-8 after its message (seen on AlexeyAB's
    enet-coco.cfg): still one SlimError line, naming Darknet's complaint rather than its last line."""
    import yoloslim.deploy.darknet_ref as ref
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\nprintf 'Type not recognized: [scale_channels]\\n7 prog: \\231\\377\\n' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(ref.sys, "executable", str(fake))
    with pytest.raises(SlimError) as e:
        run_darknet(str(tmp_path / "any.cfg"), str(tmp_path / "any.weights"), np.zeros((3, 32, 32), np.float32))
    assert "\n" not in str(e.value) and "(Type not recognized: [scale_channels])" in str(e.value)


def test_missing_darknet_is_one_clear_line(monkeypatch):
    import yoloslim.deploy.darknet_ref as ref
    monkeypatch.setattr(ref, "LIB_PATH", "/nonexistent/libdarknet.so")
    assert "apt-get install darknet" in ref.darknet_missing()
    with pytest.raises(SlimError, match="Darknet is not installed"):
        ref.run_darknet("x.cfg", "x.weights", np.zeros((3, 32, 32), np.float32))


def test_ci_cannot_pass_without_darknet(tmp_path):
    """The darknet fixture skips locally but fails under CI=true when the library is missing."""
    (tmp_path / "test_needs.py").write_text(textwrap.dedent("""
        def test_needs_darknet(darknet):
            assert darknet
    """))

    def run(ci):
        env = {k: v for k, v in os.environ.items() if k != "CI"}
        env["DARKNET_LIB"] = "/nonexistent/libdarknet.so"
        env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "tests"), ROOT])  # our conftest as a plugin
        if ci:
            env["CI"] = "true"
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "conftest", str(tmp_path)],
                              capture_output=True, text=True, env=env, cwd=tmp_path)

    local, ci = run(False), run(True)
    assert local.returncode == 0 and "1 skipped" in local.stdout and "not installed" in local.stdout
    assert ci.returncode == 1 and "1 error" in ci.stdout and "CI=true but Darknet is not installed" in ci.stdout


def test_border_benchmark_measures_interior_and_band(darknet, coco_tiny, tmp_path):
    """benchmarks/border_exactness.py as a user runs it, on the real tiny: an exact interior, a measured band."""
    out = tmp_path / "border"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "border_exactness.py"), "--sections", "tiny",
                           "--tiny-cfg", coco_tiny["cfg"], "--tiny-weights", coco_tiny["weights"], "--out", str(out)],
                          capture_output=True, text=True, timeout=HANG_LIMIT)
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads((tmp_path / "border.json").read_text())["results"]
    for head in result["heads"]:
        ny = int(head["grid"].split("x")[0])
        assert 0 < head["margin_cells"] < ny // 2          # a band, and an interior beyond it
        assert head["max_raw_interior"] <= 1e-5 < head["max_raw_band"]
        assert head["max_raw_by_distance"][head["margin_cells"] - 1] > 1e-5
    assert "exact from (cells in)" in (tmp_path / "border.md").read_text()
