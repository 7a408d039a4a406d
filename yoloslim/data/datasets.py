"""Image/label loading for training, evaluation and detection (YOLO/Darknet format).

Data set layout: a list file with one image path per line; each image's labels live in a
.txt file found by replacing the last ``images`` folder of the image path with ``labels``
and the extension with ``.txt`` (``a/images/train/1.jpg`` -> ``a/labels/train/1.txt``; with
no ``images`` folder, next to the image). One object per line: ``class cx cy w h``,
coordinates normalized to [0, 1] by the image width and height. A missing label file means
an image without objects.

Relative paths in a list file are taken relative to the list file's folder when they exist
there, otherwise relative to the current directory (Darknet's convention).

Every list entry and label line is checked when the data set is built, so bad data fails at
start-up with ``DataError`` naming the file and line, never in the middle of an epoch.
"""
import glob
import math
import os
import warnings

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from yoloslim.darknet.net import STRIDE
from yoloslim.errors import DataError
from yoloslim.data.jpeg_check import jpeg_file_truncated
from yoloslim.data.text_input import read_text_lines, refuse_non_regular

IMG_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
PAD_COLOR = (114, 114, 114)
COORD_TOLERANCE = 0.01  # labelling tools often write 1.0000x or -0.0000x; accept, then clip

# Augmentation defaults (gains and ranges); override any of them with ``hyp``.
DEFAULT_AUG_HYP = {
    "hsv_h": 0.015,     # hue gain (fraction of the colour circle)
    "hsv_s": 0.7,       # saturation gain
    "hsv_v": 0.4,       # value gain
    "degrees": 0.0,     # rotation range (deg); rotated boxes grow, so off by default
    "translate": 0.1,   # translation range (fraction of the image side)
    "scale": 0.5,       # scale range: 1 +- scale
    "shear": 0.0,       # shear range (deg)
    "fliplr": 0.5,      # probability of a left-right flip
    "flipud": 0.0,      # probability of an up-down flip
    "mosaic": 0.0,      # probability of a 4-image mosaic (a random crop of 4 tiled images, native scale)
}
MIN_BOX_SIDE = 2.0      # px: boxes thinner than this after augmentation are dropped
MIN_BOX_VISIBLE = 0.2   # fraction of a box's (scaled) area that must survive the crop
MAX_BOX_ASPECT = 20.0   # slivers left by cropping are dropped


# ----------------------------------------------------------------------------- paths and checks

def label_path_for(img_path):
    """Label file of an image: last 'images' folder -> 'labels', extension -> .txt."""
    folder, name = os.path.split(img_path)
    parts = folder.split(os.sep)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return os.path.join(os.sep.join(parts), os.path.splitext(name)[0] + ".txt")


def check_image_file(path, where):
    """Cheap up-front image check (exists, not empty, a format cv2 can decode); `where` names the source."""
    refuse_non_regular(path, f"image (listed at {where})")
    if not os.path.isfile(path):
        raise DataError(f"{where}: image '{path}' does not exist; fix the path or remove the line")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: image file is empty (0 bytes) (listed at {where}); replace or remove it")
    if not cv2.haveImageReader(path):
        raise DataError(f"{path}: not an image format OpenCV can read (listed at {where}); "
                        f"convert it to .jpg/.png or remove it")
    if jpeg_file_truncated(path):   # libjpeg would decode it with grey filling and one line on stderr
        raise DataError(f"{path}: the JPEG is truncated (it stops before its end-of-image marker: an "
                        f"interrupted download or copy?) (listed at {where}); replace or remove it")


def resolve_entry(entry, list_dir):
    """Path of a list entry: as is when absolute, else next to the list file, else from the cwd."""
    if os.path.isabs(entry):
        return entry
    beside_list = os.path.join(list_dir, entry)
    if os.path.exists(beside_list) or not os.path.exists(entry):
        return beside_list
    return entry


def read_image_list(path):
    """Checked image paths from a list file or an image folder."""
    if os.path.isdir(path):
        files = sorted(f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True)
                       if f.lower().endswith(IMG_EXTS))
        if not files:
            raise DataError(f"{path}: folder holds no images ({', '.join(IMG_EXTS)})")
        for f in files:
            check_image_file(f, path)
        return files
    if not os.path.isfile(path):
        raise DataError(f"{path}: image list not found; check the train=/valid= entry of the .data file")
    list_dir = os.path.dirname(os.path.abspath(path))
    files = []
    for lineno, line in enumerate(read_text_lines(path, "image list", "write one image path per line"), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        img = resolve_entry(entry, list_dir)
        check_image_file(img, f"{path}:{lineno}")
        files.append(img)
    if not files:
        raise DataError(f"{path}: image list is empty; write one image path per line")
    return files


def _parse_number(text, path, lineno):
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}:{lineno}: '{text}' is not a number; "
                        f"label lines are 'class cx cy w h' with numeric values") from None
    if not math.isfinite(value):
        raise DataError(f"{path}:{lineno}: '{text}' is not a finite number; fix the label")
    return value


def _check_label_values(values, path, lineno, nc):
    cls, cx, cy, w, h = values
    if cls != int(cls) or cls < 0 or (nc is not None and cls >= nc):
        allowed = f"0..{nc - 1}" if nc is not None else "a non-negative integer"
        raise DataError(f"{path}:{lineno}: class {values[0]:g} is not {allowed}; "
                        f"fix the label or the classes= count of the .data file")
    lo, hi = -COORD_TOLERANCE, 1 + COORD_TOLERANCE
    for name, v in (("cx", cx), ("cy", cy), ("w", w), ("h", h)):
        if not lo <= v <= hi:
            raise DataError(f"{path}:{lineno}: {name}={v:g} is outside [0, 1]; coordinates must be "
                            f"normalized by the image width/height")
    if w <= 0 or h <= 0:
        raise DataError(f"{path}:{lineno}: box has zero size (w={w:g}, h={h:g}); delete the line")


def parse_label_file(path, nc=None):
    """Checked labels of one image as (n, 5) float32 [cls, x1, y1, x2, y2], normalized and clipped.

    A missing file is an image without objects. ``nc`` (number of classes) enables the
    class-range check.
    """
    refuse_non_regular(path, "label file")   # a folder is not "no objects"
    if not os.path.isfile(path):
        return np.zeros((0, 5), np.float32)
    rows = []
    lines = read_text_lines(path, "label file", "write it as UTF-8 text, one 'class cx cy w h' per line")
    for lineno, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise DataError(f"{path}:{lineno}: expected 5 values 'class cx cy w h', found {len(fields)}; "
                            f"fix or delete the line")
        values = [_parse_number(t, path, lineno) for t in fields]
        _check_label_values(values, path, lineno, nc)
        rows.append(values)
    if not rows:
        return np.zeros((0, 5), np.float32)
    labels = np.array(rows, np.float64)
    xyxy = np.concatenate([labels[:, 1:3] - labels[:, 3:5] / 2, labels[:, 1:3] + labels[:, 3:5] / 2], 1)
    return np.concatenate([labels[:, :1], xyxy.clip(0, 1)], 1).astype(np.float32)


def make_divisible(size, stride=STRIDE):
    """Round an image size up to a multiple of `stride`, warning when it changes."""
    rounded = int(math.ceil(size / stride) * stride)
    if rounded != size:
        warnings.warn(f"img_size {size} is not a multiple of {stride}; using {rounded}")
    return rounded


# ----------------------------------------------------------------------------- geometry

def letterbox(img, new_shape, color=PAD_COLOR, auto=False, stride=STRIDE):
    """Resize keeping the aspect ratio, then pad to ``new_shape``.

    ``new_shape``: int (square) or (height, width). With ``auto`` the padding is only what
    is needed to reach a multiple of ``stride`` (a smaller, rectangular input).
    Returns (image, ratio, (dw, dh)): the scale applied to the original image and the
    left/top padding in pixels, so ``x_new = x_old * ratio + dw``.
    """
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    h0, w0 = img.shape[:2]
    ratio = min(new_shape[0] / h0, new_shape[1] / w0)
    # at least one pixel: a 4000x2 strip would round its height to 0, which cv2.resize refuses
    new_w, new_h = max(1, int(round(w0 * ratio))), max(1, int(round(h0 * ratio)))
    if auto:
        new_shape = (int(math.ceil(new_h / stride) * stride), int(math.ceil(new_w / stride) * stride))
    pad_w, pad_h = new_shape[1] - new_w, new_shape[0] - new_h
    if (new_w, new_h) != (w0, h0):
        # INTER_AREA when shrinking avoids aliasing of thin lines; linear when enlarging
        interp = cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR
        img = cv2.resize(img, (new_w, new_h), interpolation=interp)
    left, top = pad_w // 2, pad_h // 2
    img = cv2.copyMakeBorder(img, top, pad_h - top, left, pad_w - left, cv2.BORDER_CONSTANT, value=color)
    return img, ratio, (left, top)


def random_affine(img, boxes, rng, degrees=0.0, translate=0.1, scale=0.5, shear=0.0, border=PAD_COLOR):
    """Random rotation/scale/shear/translation of an image and its (n, 4) pixel xyxy boxes.

    Returns (image, boxes, keep): boxes are transformed (enclosing box of the 4 corners),
    clipped to the image, and ``keep`` marks the ones still worth learning from.
    """
    h, w = img.shape[:2]
    center = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]], np.float64)
    s = rng.uniform(1 - scale, 1 + scale)
    rot = np.eye(3)
    rot[:2] = cv2.getRotationMatrix2D((0, 0), rng.uniform(-degrees, degrees), s)
    shr = np.eye(3)
    shr[0, 1] = math.tan(math.radians(rng.uniform(-shear, shear)))
    shr[1, 0] = math.tan(math.radians(rng.uniform(-shear, shear)))
    move = np.eye(3)
    move[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * w
    move[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * h
    m = (move @ shr @ rot @ center)[:2]
    img = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=border)
    if len(boxes) == 0:
        return img, boxes, np.zeros(0, bool)
    corners = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 2)
    xy = (corners @ m[:, :2].T + m[:, 2]).reshape(-1, 4, 2)
    new = np.concatenate([xy.min(1), xy.max(1)], 1)
    new[:, [0, 2]] = new[:, [0, 2]].clip(0, w)
    new[:, [1, 3]] = new[:, [1, 3]].clip(0, h)
    return img, new, keep_boxes(boxes * s, new)


def keep_boxes(before, after):
    """Boxes that stay large, visible and not too thin after cropping (both (n, 4) xyxy)."""
    w0, h0 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w1, h1 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    aspect = np.maximum(w1 / (h1 + 1e-9), h1 / (w1 + 1e-9))
    return ((w1 > MIN_BOX_SIDE) & (h1 > MIN_BOX_SIDE) & (w1 * h1 > MIN_BOX_VISIBLE * w0 * h0 + 1e-9)
            & (aspect < MAX_BOX_ASPECT))


def augment_hsv(img, rng, hgain=0.5, sgain=0.5, vgain=0.5):
    """Random hue/saturation/value gains applied in place through lookup tables (fast)."""
    gains = rng.uniform(-1, 1, 3) * (hgain, sgain, vgain) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float64)
    lut_hue = ((x * gains[0]) % 180).astype(np.uint8)  # OpenCV hue is 0..179
    lut_sat = np.clip(x * gains[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * gains[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR, dst=img)


def to_tensor(img_bgr):
    """HxWx3 uint8 BGR -> 3xHxW float32 RGB in [0, 1]."""
    # numpy does the conversion: torch's intra-op threads only add overhead on one image
    chw = img_bgr[:, :, ::-1].transpose(2, 0, 1).astype(np.float32, order="C")
    chw *= np.float32(1 / 255)
    return torch.from_numpy(chw)


def xyxy_to_cxcywh(boxes):
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2,
                     boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1)


def read_image(path):
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{path}: cannot decode the image (corrupt or truncated?); replace or remove it")
    return img


# ----------------------------------------------------------------------------- data sets

class LoadImagesAndLabels(Dataset):
    """Letterboxed images and their labels, with optional training augmentation.

    ``path``: an image list file (e.g. the train=/valid= entry of a .data file) or a folder of
    images. ``nc``: number of classes; when given, labels with class >= nc are rejected at
    build time. ``batch_size`` is accepted for interface compatibility (square inputs are
    used for every batch). Items are (image 3xHxW float RGB in [0, 1], labels (n, 6)
    [0, cls, cx, cy, w, h] normalized to the letterboxed image, path, shapes) where shapes
    is ((h0, w0), ((ratio, ratio), (dw, dh))): original size and the letterbox transform.
    """

    def __init__(self, path, img_size=416, batch_size=16, augment=False, hyp=None, nc=None):
        self.path = os.fspath(path)
        self.img_size = make_divisible(int(img_size))
        self.batch_size = batch_size
        self.augment = augment
        self.hyp = {**DEFAULT_AUG_HYP, **(hyp or {})}
        self.img_files = read_image_list(self.path)
        self.label_files = [label_path_for(f) for f in self.img_files]
        self.labels = [parse_label_file(f, nc) for f in self.label_files]

    def __len__(self):
        return len(self.img_files)

    def letterboxed(self, index):
        """(letterboxed image, (n, 4) pixel xyxy boxes, classes, shapes) of one item."""
        path = self.img_files[index]
        img0 = read_image(path)
        h0, w0 = img0.shape[:2]
        img, ratio, (dw, dh) = letterbox(img0, self.img_size)
        labels = self.labels[index]
        boxes = labels[:, 1:] * np.array([w0, h0, w0, h0], np.float32) * ratio + np.array([dw, dh, dw, dh])
        return img, boxes, labels[:, 0], ((h0, w0), ((ratio, ratio), (dw, dh)))

    def __getitem__(self, index):
        path = self.img_files[index]
        img, boxes, cls, shapes = self.letterboxed(index)
        if self.augment:
            # Seeded from torch's RNG: DataLoader workers get distinct torch seeds, and
            # torch.manual_seed in the main process makes the whole pipeline reproducible.
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
            if rng.random() < self.hyp["mosaic"]:
                img, boxes, cls = self.mosaic(index, rng)
            img, boxes, cls = self._augment(img, boxes, cls, rng)
        h, w = img.shape[:2]
        out = torch.zeros((len(boxes), 6))
        if len(boxes):
            out[:, 1] = torch.from_numpy(np.asarray(cls, np.float32))
            out[:, 2:] = torch.from_numpy((xyxy_to_cxcywh(boxes) / np.array([w, h, w, h])).astype(np.float32))
        return to_tensor(img), out, path, shapes

    def mosaic(self, index, rng):
        """Four letterboxed images tiled 2x2, cropped to one image size around a random centre.

        Objects keep their scale (small ones are not shrunk, unlike a resized mosaic); boxes cut
        by the crop follow the same keep rules as the affine augmentation.
        """
        s = self.img_size
        canvas = np.full((2 * s, 2 * s, 3), PAD_COLOR, np.uint8)
        picks = [index] + [int(i) for i in rng.integers(0, len(self), 3)]
        all_boxes, all_cls = [], []
        for k, i in enumerate(picks):
            img, boxes, cls, _ = self.letterboxed(i)
            ox, oy = (k % 2) * s, (k // 2) * s
            canvas[oy:oy + s, ox:ox + s] = img
            all_boxes.append(boxes + np.array([ox, oy, ox, oy], np.float32))
            all_cls.append(cls)
        x0, y0 = (int(rng.uniform(0, s)) for _ in range(2))
        boxes = np.concatenate(all_boxes) - np.array([x0, y0, x0, y0], np.float32)
        clipped = boxes.clip(0, s)
        keep = keep_boxes(boxes, clipped)
        return np.ascontiguousarray(canvas[y0:y0 + s, x0:x0 + s]), clipped[keep], np.concatenate(all_cls)[keep]

    def _augment(self, img, boxes, cls, rng):
        hyp = self.hyp
        img, boxes, keep = random_affine(img, boxes, rng, hyp["degrees"], hyp["translate"], hyp["scale"],
                                         hyp["shear"])
        boxes, cls = boxes[keep], cls[keep]
        augment_hsv(img, rng, hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"])
        h, w = img.shape[:2]
        if rng.random() < hyp["fliplr"]:
            img = np.ascontiguousarray(img[:, ::-1])
            boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
        if rng.random() < hyp["flipud"]:
            img = np.ascontiguousarray(img[::-1])
            boxes = np.stack([boxes[:, 0], h - boxes[:, 3], boxes[:, 2], h - boxes[:, 1]], 1)
        return img, boxes.reshape(-1, 4), cls

    @staticmethod
    def collate_fn(batch):
        """-> (imgs Bx3xHxW float, targets Nx6 [img_idx, cls, cx, cy, w, h], paths, shapes)."""
        imgs, labels, paths, shapes = zip(*batch)
        for i, lab in enumerate(labels):
            lab[:, 0] = i  # index of the image inside this batch
        return torch.stack(imgs, 0), torch.cat(labels, 0), list(paths), list(shapes)


class LoadImages:
    """Images for detection: a single file, a folder or a glob pattern.

    Iterating yields (path, letterboxed 3xHxW float RGB tensor in [0, 1], original BGR image).
    """

    def __init__(self, path, img_size=416):
        self.img_size = make_divisible(int(img_size))
        self.files = self._find(os.fspath(path))

    @staticmethod
    def _find(path):
        if os.path.isdir(path):
            files = glob.glob(os.path.join(path, "*"))
        elif os.path.isfile(path):
            files = [path]
        else:
            files = glob.glob(path)
        images = sorted(f for f in files if f.lower().endswith(IMG_EXTS))
        if not images:
            raise DataError(f"{path}: no images found (a file, a folder or a glob of {', '.join(IMG_EXTS)})")
        return images

    def __len__(self):
        return len(self.files)

    def __iter__(self):
        for path in self.files:
            check_image_file(path, path)
            img0 = read_image(path)
            img, _, _ = letterbox(img0, self.img_size)
            yield path, to_tensor(img), img0
