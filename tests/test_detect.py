"""detect.py on the real COCO yolov3-tiny, checked against an independent OpenCV DNN pipeline.

The photo is matplotlib's bundled sample ``grace_hopper.jpg`` (a portrait: COCO's tiny model
finds a person and a tie in it). The reference pipeline below shares no code with detect.py:
its own letterbox, ``cv2.dnn.blobFromImage``, OpenCV's Darknet importer and ``cv2.dnn.NMSBoxes``.
"""
import hashlib
import importlib.util
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import detect  # noqa: E402
from conftest import HANG_LIMIT

PERSON, TIE = 0, 27
CONF, IOU = 0.25, 0.45


def sample_photo_path():
    """matplotlib's sample photo, found without importing matplotlib (slow to import)."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "mpl-data", "sample_data", "grace_hopper.jpg")
    return path if os.path.isfile(path) else None


@pytest.fixture(scope="module")
def photo():
    path = sample_photo_path()
    if path is None:
        pytest.skip("matplotlib's sample_data/grace_hopper.jpg is not installed: no real photo to detect in")
    img = cv2.imread(path)
    assert img is not None and img.shape == (600, 512, 3)
    return path, img


@pytest.fixture(scope="module")
def tiny_model(coco_tiny):
    return detect.load_detector(coco_tiny["cfg"], coco_tiny["weights"], 416, "torch")


# ----------------------------------------------------------------------------- the reference
def reference_letterbox(img, size):
    """Aspect-preserving resize into a size x size grey canvas, centred (the same recipe as ours)."""
    h0, w0 = img.shape[:2]
    r = min(size / h0, size / w0)
    nw, nh = int(round(w0 * r)), int(round(h0 * r))
    resized = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
    left, top = (size - nw) // 2, (size - nh) // 2
    canvas = np.full((size, size, 3), 114, np.uint8)
    canvas[top:top + nh, left:left + nw] = resized
    return canvas, r, left, top


def opencv_reference(cfg, weights, img, size, conf_thres=CONF, iou_thres=IOU):
    """(cls, conf, x1, y1, x2, y2) from OpenCV DNN alone, highest confidence first."""
    net = cv2.dnn.readNetFromDarknet(cfg, weights)
    canvas, r, left, top = reference_letterbox(img, size)
    net.setInput(cv2.dnn.blobFromImage(canvas, 1 / 255.0, (size, size), swapRB=True, crop=False))
    rows = np.concatenate(net.forward(net.getUnconnectedOutLayersNames()), 0)
    scores = rows[:, 5:]  # OpenCV's yolo rows hold obj * class probability
    cls, conf = scores.argmax(1), scores.max(1)
    keep = (rows[:, 4] > conf_thres) & (conf > conf_thres)
    rows, cls, conf = rows[keep], cls[keep], conf[keep]
    xywh = np.stack([(rows[:, 0] - rows[:, 2] / 2) * size, (rows[:, 1] - rows[:, 3] / 2) * size,
                     rows[:, 2] * size, rows[:, 3] * size], 1)
    found = []
    for c in np.unique(cls):
        idx = np.nonzero(cls == c)[0]
        kept = cv2.dnn.NMSBoxes(xywh[idx].tolist(), conf[idx].tolist(), conf_thres, iou_thres)
        for k in np.asarray(kept).reshape(-1):
            x, y, w, h = xywh[idx[k]]
            h0, w0 = img.shape[:2]
            x1, x2 = np.clip([(x - left) / r, (x + w - left) / r], 0, w0)
            y1, y2 = np.clip([(y - top) / r, (y + h - top) / r], 0, h0)
            found.append((int(c), float(conf[idx[k]]), x1, y1, x2, y2))
    return sorted(found, key=lambda d: -d[1])


def assert_same_detections(ours, theirs):
    assert [d[0] for d in ours] == [d[0] for d in theirs], (ours, theirs)
    for a, b in zip(ours, theirs):
        assert abs(a[1] - b[1]) < 0.01, (a, b)
        assert np.abs(np.array(a[2:]) - np.array(b[2:])).max() < 1.0, (a, b)


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("size", [320, 416])
def test_torch_detections_match_independent_opencv_pipeline(coco_tiny, tiny_model, photo, size):
    _, img = photo
    ours = detect.detect_image(tiny_model, img, size, CONF, IOU)
    theirs = opencv_reference(coco_tiny["cfg"], coco_tiny["weights"], img, size)
    assert ours, "the COCO model finds nothing in the photo: preprocessing or decoding is broken"
    assert_same_detections(ours, theirs)


def test_photo_shows_a_person_and_a_tie(tiny_model, photo):
    _, img = photo
    dets = detect.detect_image(tiny_model, img, 320, CONF, IOU)
    classes = {d[0] for d in dets}
    assert {PERSON, TIE} <= classes, dets
    person = next(d for d in dets if d[0] == PERSON)
    x1, y1, x2, y2 = person[2:]
    # the person fills most of the portrait; the box is in original-image pixels
    assert person[1] > 0.5 and (x2 - x1) > 0.6 * img.shape[1] and (y2 - y1) > 0.6 * img.shape[0]


def test_opencv_backend_agrees_with_torch_backend(coco_tiny, tiny_model, photo):
    _, img = photo
    net = detect.load_detector(coco_tiny["cfg"], coco_tiny["weights"], 320, "opencv")
    assert_same_detections(detect.detect_image(net, img, 320, CONF, IOU),
                           detect.detect_image(tiny_model, img, 320, CONF, IOU))


def test_converted_checkpoint_detects_the_same_and_converts_back_byte_identical(coco_tiny, tiny_model, photo,
                                                                                 tmp_path):
    import convert
    pt, back = str(tmp_path / "tiny.pt"), str(tmp_path / "tiny.weights")
    convert.convert(coco_tiny["cfg"], coco_tiny["weights"], pt)
    convert.convert(None, pt, back, reader="pjreddie")  # the cfg travels inside the .pt; 0.2.0 is pjreddie's
    assert sha256(back) == sha256(coco_tiny["weights"])
    _, img = photo
    from_pt = detect.load_detector(None, pt, 320, "torch")
    assert detect.detect_image(from_pt, img, 320) == detect.detect_image(tiny_model, img, 320)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def folder_state(folder):
    return {name: sha256(os.path.join(folder, name)) for name in sorted(os.listdir(folder))}


def run_detect(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "detect.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=HANG_LIMIT)


def test_cli_writes_annotated_images_and_detections_never_into_the_source(coco_tiny, photo, tmp_path):
    path, img = photo
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    cv2.imwrite(str(src / "hopper.jpg"), img)
    cv2.imwrite(str(src / "blank.png"), np.full((200, 300, 3), 114, np.uint8))
    before = folder_state(src)
    model = ["--cfg", coco_tiny["cfg"], "--weights", coco_tiny["weights"], "--names", coco_tiny["names"],
             "--img-size", "320"]

    done = run_detect(*model, "--source", str(src), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert folder_state(src) == before
    assert sorted(os.listdir(out)) == ["blank.json", "blank.png", "detections.txt", "hopper.jpg", "hopper.json"]
    annotated = cv2.imread(str(out / "hopper.jpg"))
    assert annotated.shape == img.shape and np.abs(annotated.astype(int) - img.astype(int)).max() > 100
    record = json.loads((out / "hopper.json").read_text())
    assert "person" in [d["name"] for d in record["detections"]]
    assert json.loads((out / "blank.json").read_text())["detections"] == []
    rows = [line.split("\t") for line in (out / "detections.txt").read_text().splitlines()]
    assert rows and all(len(r) == 8 and r[0].endswith("hopper.jpg") for r in rows)
    assert any(r[2] == "person" and float(r[3]) > 0.5 for r in rows)

    refused = run_detect(*model, "--source", str(src), "--out", str(src))
    assert refused.returncode == 2
    assert refused.stderr.startswith("error:") and len(refused.stderr.strip().splitlines()) == 1
    assert "Traceback" not in refused.stderr
    assert folder_state(src) == before
