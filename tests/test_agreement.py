"""Agreement score: the pruned model's mAP@0.5 against the unpruned model's detections (no labels needed)."""
import copy
import glob
import os
import shutil
import subprocess
import sys

import pytest
import torch

from yoloslim.darknet.load import load_model
from yoloslim.eval.agreement import agreement
from conftest import HANG_LIMIT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = "/usr/share/darknet/data"
SIZE = 256
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def write_photo_views(out, n=5):
    """``n`` views (flips, crops) of the photograph matplotlib ships, which COCO models detect on.

    Synthetic shapes are no fallback: COCO yolov3-tiny finds nothing on them, so every score
    would be NaN. matplotlib is a requirement, so this photo is there wherever the suite runs.
    """
    import cv2
    import matplotlib
    photo = cv2.imread(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data",
                                    "grace_hopper.jpg"))
    h, w = photo.shape[:2]
    views = [photo, cv2.flip(photo, 1), photo[: h * 3 // 4], photo[:, w // 8: w * 7 // 8], cv2.flip(photo[h // 8:], 1)]
    for i, view in enumerate(views[:n]):
        cv2.imwrite(os.path.join(out, f"view{i}.jpg"), view)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photos: Darknet's samples when installed, else views of matplotlib's sample photograph."""
    out = tmp_path_factory.mktemp("photos")
    found = sorted(glob.glob(os.path.join(PHOTOS, "*.jpg")))[:5]
    for f in found:
        shutil.copy(f, out)
    if not found:
        write_photo_views(str(out))
    return str(out)


@pytest.fixture(scope="module")
def tiny(coco_tiny):
    torch.set_num_threads(1)
    return load_model(coco_tiny["cfg"], coco_tiny["weights"], SIZE).eval()


def test_a_model_agrees_with_itself_exactly(tiny, photos):
    found = agreement(tiny, tiny, photos, SIZE)
    assert found.reference_boxes > 0 and found.candidate_boxes == found.reference_boxes
    assert found.score == pytest.approx(1.0, abs=1e-9)


def test_agreement_drops_when_a_head_is_zeroed(tiny, photos):
    broken = copy.deepcopy(tiny)
    with torch.no_grad():   # the first [yolo]'s conv: weights zero, objectness far below any threshold
        conv = broken.module_list[broken.yolo_layers[0] - 1].Conv2d
        conv.weight.zero_()
        conv.bias.fill_(-10.0)
    found = agreement(tiny, broken, photos, SIZE)
    assert found.candidate_boxes < found.reference_boxes
    assert found.score < 0.9


def test_test_py_agreement_cli(coco_tiny, photos):
    cmd = [sys.executable, "test.py", "--cfg", coco_tiny["cfg"], "--weights", coco_tiny["weights"],
           "--reference-cfg", coco_tiny["cfg"], "--reference-weights", coco_tiny["weights"],
           "--source", photos, "--img-size", str(SIZE)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=HANG_LIMIT, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "agreement mAP@0.5 1.0000" in proc.stdout
    bad = subprocess.run(cmd[:-4] + ["--img-size", str(SIZE)], cwd=ROOT, capture_output=True, text=True,
                         timeout=HANG_LIMIT, env=ENV)   # --reference-weights without --source
    assert bad.returncode == 2 and "--source" in bad.stderr


def test_prune_script_reports_agreement_with_images(coco_tiny, photos, tmp_path):
    cmd = [sys.executable, "prune_tiny.py", "--cfg", coco_tiny["cfg"], "--weights", coco_tiny["weights"],
           "--percent", "0.3", "--img-size", str(SIZE), "--images", photos, "--latency-runs", "0",
           "--out", str(tmp_path / "p")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=HANG_LIMIT, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = next(line for line in proc.stdout.splitlines() if "agreement mAP@0.5" in line)
    cells = [c.strip() for c in row.split("|") if c.strip()]
    assert cells[1] == "1.0000" and 0 <= float(cells[2]) < 1.0   # pruning without sparsity training changes boxes
    assert any("boxes at conf" in line for line in proc.stdout.splitlines())
