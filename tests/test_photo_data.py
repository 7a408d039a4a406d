"""yoloslim/data/photo_data.py (a detection set made of real photographs) as a user runs it, and sample_photos."""
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from yoloslim.darknet.model import Darknet
from yoloslim.darknet.load import load_model
from yoloslim.eval.agreement import REFERENCE_CONF, detect, image_batches
from yoloslim.data.datasets import LoadImagesAndLabels
from yoloslim.errors import DataError
from yoloslim.darknet.cfg import load_classes, parse_data_cfg
from yoloslim.data.photo_data import MARKER, MIN_BOX, Params, generate, render_image
from yoloslim.data.photo_sources import (Background, Library, build_library, crop_object, find_sources,
                                         sample_photos)
from conftest import HANG_LIMIT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SIZE, N_TRAIN, N_VAL, K, SEED = 128, 6, 3, 5, 1
ARGS = ["--n-train", str(N_TRAIN), "--n-val", str(N_VAL), "--img-size", str(SIZE), "--classes", str(K),
        "--seed", str(SEED), "--quiet"]


def run_cli(*args):
    return subprocess.run([sys.executable, "scripts/photo_data.py", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=HANG_LIMIT)


def tree_bytes(root, skip=()):
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), root)
            if rel not in skip:
                with open(os.path.join(root, rel), "rb") as f:
                    out[rel] = f.read()
    return out


def read_labels(path):
    with open(path) as f:
        return [line.split() for line in f if line.strip()]


def assert_one_error_line(result, *fragments):
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def photoset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("photos") / "set")
    result = run_cli("--out", out, *ARGS)
    assert result.returncode == 0, result.stderr
    return out, result


def test_cli_writes_darknet_and_ultralytics_layout(photoset):
    out, result = photoset
    assert f"wrote {N_TRAIN} train + {N_VAL} val images" in result.stdout
    data = parse_data_cfg(os.path.join(out, "photos.data"))
    names = load_classes(data["names"])
    assert data["classes"] == K and len(names) == K and len(set(names)) == K
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        with open(os.path.join(out, f"{split}.txt")) as f:
            assert [line.strip() for line in f] == [f"images/{split}/{i:06d}.jpg" for i in range(n)]
        assert len(os.listdir(os.path.join(out, "labels", split))) == n
    with open(os.path.join(out, "photos.yaml")) as f:
        yaml = f.read()
    assert f'path: "{os.path.abspath(out)}"' in yaml
    assert "train: images/train\n" in yaml and "val: images/val\n" in yaml and f"nc: {K}\n" in yaml
    assert re.findall(r'^  (\d+): "(.*)"$', yaml, re.M) == [(str(i), n) for i, n in enumerate(names)]
    with open(os.path.join(out, MARKER)) as f:
        marker = f.read()
    assert '"generator": "yoloslim.data.photo_data"' in marker and "grace_hopper.jpg" in marker


def test_labels_lie_inside_the_images_within_unit_range(photoset):
    out, _ = photoset
    classes, boxes = set(), 0
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        for i in range(n):
            img = cv2.imread(os.path.join(out, "images", split, f"{i:06d}.jpg"))
            assert img.shape == (SIZE, SIZE, 3)
            for cls, *xywh in read_labels(os.path.join(out, "labels", split, f"{i:06d}.txt")):
                cx, cy, w, h = map(float, xywh)
                assert 0 <= int(cls) < K
                assert all(0.0 <= v <= 1.0 for v in (cx, cy, w, h))
                assert cx - w / 2 >= -1e-6 and cx + w / 2 <= 1 + 1e-6 and cy - h / 2 >= -1e-6 and cy + h / 2 <= 1 + 1e-6
                assert min(w, h) * SIZE >= 1 - 1e-6
                classes.add(int(cls))
                boxes += 1
    assert boxes >= N_TRAIN + N_VAL and len(classes) >= 3


def test_same_seed_gives_the_same_bytes_with_any_worker_count(photoset, tmp_path):
    out, _ = photoset
    again = str(tmp_path / "again")
    generate(again, Params(N_TRAIN, N_VAL, SIZE, K, SEED), workers=2)
    skip = ("photos.yaml",)  # holds the folder's own path
    assert tree_bytes(again, skip) == tree_bytes(out, skip)
    other = str(tmp_path / "other")
    generate(other, Params(N_TRAIN, N_VAL, SIZE, K, SEED + 1), workers=1)
    assert tree_bytes(other)["images/train/000000.jpg"] != tree_bytes(out)["images/train/000000.jpg"]


def test_existing_non_empty_folder_file_and_too_many_classes_are_refused(tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    assert_one_error_line(run_cli("--out", str(used), *ARGS), "not empty", str(used))
    assert os.listdir(used) == ["keep.txt"] and (used / "keep.txt").read_text() == "mine"
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert_one_error_line(run_cli("--out", str(a_file), *ARGS), str(a_file))
    assert a_file.read_text() == "x"
    many = ARGS[:ARGS.index("--classes")] + ["--classes", "99"] + ARGS[ARGS.index("--classes") + 2:]
    assert_one_error_line(run_cli("--out", str(tmp_path / "new"), *many), "--classes 99", "or fewer")
    assert sorted(os.listdir(tmp_path)) == ["a_file", "used"]  # nothing created, nothing left behind


def test_an_existing_empty_folder_is_filled(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("--out", str(empty), "--n-train", "1", "--n-val", "1", "--img-size", "64", "--classes", "2", "--quiet")
    assert result.returncode == 0, result.stderr
    assert os.path.isfile(empty / MARKER) and os.path.isfile(empty / "labels" / "val" / "000000.txt")
    assert sorted(os.listdir(tmp_path)) == ["empty"]  # the hidden build folder was renamed into place


def test_labels_are_the_pixels_of_the_pasted_objects():
    """White squares on black photos: every white pixel is in a label box, and every box edge
    touches white pixels (within 2 px: JPEG, blur and noise soften the edges)."""
    black = np.zeros((300, 300, 3), np.uint8)
    square = np.full((60, 60, 3), 255, np.uint8)
    mask = np.zeros((60, 60), np.uint8)
    mask[5:55, 5:55] = 255
    lib = Library(["square"], [[crop_object(square, mask, 0, "square")]], [], [Background("black", black, [])],
                  {}, [])
    for index in range(12):
        jpg, text = render_image(lib, 0, 0, index, SIZE)
        white = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_GRAYSCALE) > 120
        covered = np.zeros_like(white)
        for _, *xywh in (line.split() for line in text.splitlines()):
            cx, cy, w, h = (float(v) * SIZE for v in xywh)
            x1, y1, x2, y2 = (int(round(v)) for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
            assert min(x2 - x1, y2 - y1) >= MIN_BOX - 1
            covered[max(y1 - 2, 0):y2 + 2, max(x1 - 2, 0):x2 + 2] = True
            inside = white[max(y1 - 2, 0):y2 + 2, max(x1 - 2, 0):x2 + 2]
            ys, xs = np.nonzero(inside)
            ox, oy = max(x1 - 2, 0), max(y1 - 2, 0)
            assert abs(xs.min() + ox - x1) <= 2 and abs(xs.max() + 1 + ox - x2) <= 2, (index, text)
            assert abs(ys.min() + oy - y1) <= 2 and abs(ys.max() + 1 + oy - y2) <= 2, (index, text)
        assert not (white & ~covered).any(), f"image {index}: white pixels outside every label box"


def test_set_is_read_by_datasets_and_test_py(photoset, tmp_path):
    out, _ = photoset
    data = parse_data_cfg(os.path.join(out, "photos.data"))
    train = LoadImagesAndLabels(data["train"], img_size=SIZE, nc=K)
    assert len(train) == N_TRAIN
    img, labels, _, _ = train[0]
    assert img.shape == (3, SIZE, SIZE) and len(labels) > 0 and float(labels[:, 2:].max()) <= 1.0
    cfg = os.path.join(ROOT, "cfg", "yolov3-tiny-5cls.cfg")
    weights = str(tmp_path / "random.weights")
    torch.manual_seed(0)
    Darknet(cfg).save_darknet_weights(weights)
    result = subprocess.run([sys.executable, "test.py", "--cfg", cfg, "--weights", weights,
                             "--data", os.path.join(out, "photos.data"), "--img-size", str(SIZE)],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=HANG_LIMIT)
    assert result.returncode == 0, result.stderr
    targets = sum(len(read_labels(os.path.join(out, "labels", "val", f"{i:06d}.txt"))) for i in range(N_VAL))
    assert re.search(rf"\ball\s*\|\s*{targets}\s*\|", result.stdout), result.stdout


def test_without_scikit_image_the_always_present_photo_is_used(tmp_path):
    only = {"matplotlib": find_sources()["matplotlib"]}
    assert build_library(4, only).names == ["head", "ribbon bar", "name tag", "button"]
    with pytest.raises(DataError, match=r"--classes 5 .* pass --classes 4 or fewer, or install more .*scikit-image"):
        build_library(5, only)
    paths = sample_photos(str(tmp_path), 3, size=128, sources=only)
    images = [cv2.imread(p) for p in paths]
    assert all(max(i.shape[:2]) == 128 for i in images)
    assert len({i.tobytes() for i in images}) == 3  # the photo, mirrored, cropped


def test_coco_tiny_finds_things_on_sample_photos(coco_tiny, tmp_path):
    """With only requirements.txt installed, COCO yolov3-tiny finds objects on every sample photo."""
    torch.set_num_threads(1)
    size = 256
    model = load_model(coco_tiny["cfg"], coco_tiny["weights"], size).eval()
    names = load_classes(coco_tiny["names"])
    found = set()
    for path in sample_photos(str(tmp_path), 5, size=size):
        boxes = detect(model, next(image_batches(path, size)), REFERENCE_CONF)[0]
        assert len(boxes) > 0, f"no detection at conf {REFERENCE_CONF} on {path}"
        found |= {names[int(c)] for c in boxes[:, 5]}
    assert {"person", "motorbike", "cup", "cat"} <= found
