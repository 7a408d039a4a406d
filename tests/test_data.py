"""Synthetic data generator, data set loading, augmentation and up-front data validation."""
import os

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from yoloslim.data.datasets import LoadImages, LoadImagesAndLabels, label_path_for, letterbox, parse_label_file
from yoloslim.errors import DataError
from yoloslim.eval.metrics import scale_coords
from yoloslim.darknet.cfg import load_classes, parse_data_cfg
from yoloslim.data.synthetic import CLASS_NAMES, generate


def tree_bytes(root):
    """{relative path: bytes} of every file under root."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A tiny generated set (8 train, 3 val, 160 px)."""
    out = str(tmp_path_factory.mktemp("gen") / "shapes")
    generate(out, n_train=8, n_val=3, img_size=160, seed=0, workers=1, progress=False)
    return out


# ----------------------------------------------------------------------------- generator

def test_generator_is_deterministic_and_independent_of_workers(shapes, tmp_path):
    again = str(tmp_path / "again")
    generate(again, n_train=8, n_val=3, img_size=160, seed=0, workers=2, progress=False)
    assert tree_bytes(again) == tree_bytes(shapes)


def test_generator_seed_changes_images_and_labels(shapes, tmp_path):
    other = str(tmp_path / "other")
    generate(other, n_train=8, n_val=3, img_size=160, seed=1, workers=1, progress=False)
    a, b = tree_bytes(shapes), tree_bytes(other)
    assert a.keys() == b.keys()
    for name in ("images/train/000000.jpg", "labels/train/000000.txt", "images/val/000002.jpg"):
        assert a[name] != b[name]


def test_generator_cache_skips_identical_request(shapes, tmp_path):
    assert generate(shapes, n_train=8, n_val=3, img_size=160, seed=0, workers=1, progress=False) is False
    small = str(tmp_path / "small")
    assert generate(small, n_train=2, n_val=1, img_size=160, seed=0, workers=1, progress=False) is True
    # another parameter set in the same folder is a rebuild, not a silent reuse
    assert generate(small, n_train=3, n_val=1, img_size=160, seed=0, workers=1, progress=False) is True


def test_generator_layout_and_labels(shapes):
    data = parse_data_cfg(os.path.join(shapes, "shapes.data"))
    assert data["classes"] == len(CLASS_NAMES) == 5
    assert load_classes(data["names"]) == list(CLASS_NAMES)
    for split, n in (("train", 8), ("val", 3)):
        lines = open(os.path.join(shapes, f"{split}.txt")).read().split()
        assert lines == [f"images/{split}/{i:06d}.jpg" for i in range(n)]
    for split, n in (("train", 8), ("val", 3)):
        for i in range(n):
            img = cv2.imread(os.path.join(shapes, "images", split, f"{i:06d}.jpg"))
            assert img.shape == (160, 160, 3)
            rows = np.loadtxt(os.path.join(shapes, "labels", split, f"{i:06d}.txt"), ndmin=2)
            assert 1 <= len(rows) <= 8
            cls, cx, cy, w, h = rows.T
            assert set(cls) <= set(range(5))
            assert (w > 0).all() and (h > 0).all()
            assert (cx - w / 2 >= -1e-6).all() and (cx + w / 2 <= 1 + 1e-6).all()
            assert (cy - h / 2 >= -1e-6).all() and (cy + h / 2 <= 1 + 1e-6).all()


# ----------------------------------------------------------------------------- loading

def test_label_path_for():
    expected = os.path.join("a", "labels", "train", "x.txt")
    assert label_path_for(os.path.join("a", "images", "train", "x.jpg")) == expected
    # only the last 'images' folder is replaced
    assert label_path_for("/images/set/images/x.png") == "/images/set/labels/x.txt"
    assert label_path_for("/data/x.jpeg") == "/data/x.txt"


def test_dataset_items_and_collate(shapes):
    ds = LoadImagesAndLabels(os.path.join(shapes, "train.txt"), img_size=128, nc=5)
    assert len(ds) == 8
    img, labels, path, ((h0, w0), ((ratio, _), (dw, dh))) = ds[0]
    assert img.shape == (3, 128, 128) and img.dtype == torch.float32
    assert 0 <= img.min() and img.max() <= 1
    assert (h0, w0) == (160, 160) and ratio == pytest.approx(0.8) and (dw, dh) == (0, 0)
    # a square image scales uniformly: normalized labels are the file's labels
    rows = np.loadtxt(label_path_for(path), ndmin=2)
    assert labels[:, 1].tolist() == rows[:, 0].tolist()
    assert np.allclose(labels[:, 2:].numpy(), rows[:, 1:], atol=1e-5)

    imgs, targets, paths, shapes_ = next(iter(DataLoader(ds, batch_size=4, collate_fn=ds.collate_fn)))
    assert imgs.shape == (4, 3, 128, 128) and targets.shape[1] == 6
    assert set(targets[:, 0].long().tolist()) <= {0, 1, 2, 3} and len(paths) == len(shapes_) == 4


def test_letterbox_non_square_and_scale_back(tmp_path):
    img = np.full((100, 200, 3), 255, np.uint8)  # h=100, w=200
    out, ratio, (dw, dh) = letterbox(img, 256)
    assert out.shape == (256, 256, 3) and ratio == pytest.approx(1.28) and (dw, dh) == (0, 64)
    assert (out[:64] == 114).all() and (out[64:192] == 255).all() and (out[192:] == 114).all()
    # boxes map back to the original image exactly
    box = torch.tensor([[10.0, 20.0, 60.0, 80.0]])
    boxed = box * ratio + torch.tensor([dw, dh, dw, dh])
    assert torch.allclose(scale_coords((256, 256), boxed.clone(), img.shape), box, atol=1e-4)
    assert torch.allclose(scale_coords((256, 256), boxed.clone(), img.shape, (ratio, (dw, dh))), box, atol=1e-4)


def write_set(root, images, labels, list_name="list.txt"):
    """images: {name: array or bytes}; labels: {name: text}. Returns the list path."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "labels"), exist_ok=True)
    for name, content in images.items():
        path = os.path.join(root, "images", name)
        if isinstance(content, bytes):
            with open(path, "wb") as f:
                f.write(content)
        else:
            cv2.imwrite(path, content)
    for name, text in labels.items():
        with open(os.path.join(root, "labels", name), "w") as f:
            f.write(text)
    list_path = os.path.join(root, list_name)
    with open(list_path, "w") as f:
        f.write("".join(f"images/{n}\n" for n in images))
    return list_path


def test_targets_on_rectangular_image(tmp_path):
    img = np.zeros((100, 200, 3), np.uint8)
    # one box: x 50..150, y 25..75 in the 200x100 original
    path = write_set(str(tmp_path), {"a.png": img, "b.png": img}, {"a.txt": "3 0.5 0.5 0.5 0.5\n"})
    ds = LoadImagesAndLabels(path, img_size=256, nc=5)
    _, labels, _, _ = ds[0]
    # ratio 1.28, top pad 64: box -> x 64..192, y 96..160 of 256
    assert labels[0].tolist() == pytest.approx([0, 3, 0.5, 0.5, 0.5, 0.25]) and len(labels) == 1
    assert len(ds[1][1]) == 0  # no label file: an image without objects


def test_augmentation_keeps_boxes_inside_and_on_the_object(tmp_path):
    img = np.zeros((160, 160, 3), np.uint8)
    img[40:100, 60:140] = 255  # white box x 60..140, y 40..100
    path = write_set(str(tmp_path), {"a.png": img}, {"a.txt": "0 0.625 0.4375 0.5 0.375\n"})
    hyp = {"hsv_h": 0, "hsv_s": 0, "hsv_v": 0, "translate": 0.3, "scale": 0.5, "fliplr": 0.5, "flipud": 0.5}
    ds = LoadImagesAndLabels(path, img_size=160, augment=True, hyp=hyp, nc=1)
    torch.manual_seed(0)
    seen_boxes = 0
    for _ in range(40):
        aug, labels, _, _ = ds[0]
        xyxy = torch.cat([labels[:, 2:4] - labels[:, 4:6] / 2, labels[:, 2:4] + labels[:, 4:6] / 2], 1)
        assert (xyxy >= -1e-6).all() and (xyxy <= 1 + 1e-6).all()
        assert (labels[:, 4:6] > 0).all()
        white = (aug[0] > 0.5).nonzero()
        if len(labels) == 0:
            continue
        seen_boxes += 1
        x1, y1, x2, y2 = (xyxy[0] * 160).tolist()
        # the box hugs the white pixels (within interpolation blur)
        assert white[:, 1].min().item() == pytest.approx(x1, abs=2)
        assert white[:, 1].max().item() + 1 == pytest.approx(x2, abs=2)
        assert white[:, 0].min().item() == pytest.approx(y1, abs=2)
        assert white[:, 0].max().item() + 1 == pytest.approx(y2, abs=2)
    assert seen_boxes > 20


def test_flip_only_mirrors_labels(tmp_path):
    img = np.zeros((64, 64, 3), np.uint8)
    path = write_set(str(tmp_path), {"a.png": img}, {"a.txt": "0 0.25 0.5 0.2 0.4\n"})
    hyp = {"hsv_h": 0, "hsv_s": 0, "hsv_v": 0, "translate": 0, "scale": 0, "fliplr": 1.0}
    _, labels, _, _ = LoadImagesAndLabels(path, img_size=64, augment=True, hyp=hyp, nc=1)[0]
    assert labels[0, 2:].tolist() == pytest.approx([0.75, 0.5, 0.2, 0.4])


# ----------------------------------------------------------------------------- bad data

@pytest.fixture
def good_image():
    return np.full((32, 32, 3), 80, np.uint8)


@pytest.mark.parametrize("text, line, words", [
    ("0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2\n", 2, "expected 5 values"),
    ("99 0.5 0.5 0.2 0.2\n", 1, "class 99"),
    ("0 0.5 0.5 0.2 0.2\n\n2 1.5 0.5 0.2 0.2\n", 3, "outside [0, 1]"),
    ("0 0.5 -0.2 0.2 0.2\n", 1, "outside [0, 1]"),
    ("0 0.5 abc 0.2 0.2\n", 1, "not a number"),
    ("-1 0.5 0.5 0.2 0.2\n", 1, "class -1"),
])
def test_bad_label_line_names_file_and_line(tmp_path, good_image, text, line, words):
    path = write_set(str(tmp_path), {"img7.png": good_image}, {"img7.txt": text})
    with pytest.raises(DataError) as err:
        LoadImagesAndLabels(path, img_size=64, nc=5)
    msg = str(err.value)
    assert f"img7.txt:{line}:" in msg and words in msg and "\n" not in msg


def test_small_coordinate_overshoot_is_clipped(tmp_path):
    path = os.path.join(str(tmp_path), "x.txt")
    with open(path, "w") as f:
        f.write("1 1.004 0.5 0.2 0.2\n")
    labels = parse_label_file(path, nc=2)
    assert labels[0, 3] == 1.0  # x2 clipped to the image


def test_empty_image_file(tmp_path, good_image):
    path = write_set(str(tmp_path), {"ok.png": good_image, "zero.jpg": b""}, {})
    with pytest.raises(DataError, match=r"zero\.jpg.*empty.*list\.txt:2"):
        LoadImagesAndLabels(path, img_size=64, nc=5)


def test_unreadable_image_file(tmp_path):
    path = write_set(str(tmp_path), {"junk.jpg": b"this is not a picture"}, {})
    with pytest.raises(DataError, match=r"junk\.jpg"):
        LoadImagesAndLabels(path, img_size=64, nc=5)


def test_missing_image_in_list(tmp_path, good_image):
    path = write_set(str(tmp_path), {"ok.png": good_image}, {})
    with open(path, "a") as f:
        f.write("images/gone.jpg\n")
    with pytest.raises(DataError, match=r"list\.txt:2: image .*gone\.jpg.* does not exist"):
        LoadImagesAndLabels(path, img_size=64, nc=5)


def test_empty_list(tmp_path):
    path = os.path.join(str(tmp_path), "empty.txt")
    open(path, "w").close()
    with pytest.raises(DataError, match=r"empty\.txt: image list is empty"):
        LoadImagesAndLabels(path, img_size=64)
    with pytest.raises(DataError, match="not found"):
        LoadImagesAndLabels(os.path.join(str(tmp_path), "nope.txt"), img_size=64)


# ----------------------------------------------------------------------------- detection input

def test_load_images_file_folder_glob(tmp_path, good_image):
    folder = tmp_path / "pics"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), good_image)
    cv2.imwrite(str(folder / "b.png"), np.zeros((40, 80, 3), np.uint8))
    (folder / "notes.txt").write_text("not an image")
    items = list(LoadImages(str(folder), img_size=96))
    assert [os.path.basename(p) for p, _, _ in items] == ["a.jpg", "b.png"]
    assert all(t.shape == (3, 96, 96) for _, t, _ in items)
    assert items[1][2].shape == (40, 80, 3)  # the original image comes back untouched
    assert len(LoadImages(str(folder / "a.jpg"))) == 1
    assert len(LoadImages(str(folder / "*.png"))) == 1
    with pytest.raises(DataError, match="no images found"):
        LoadImages(str(folder / "*.bmp"))
