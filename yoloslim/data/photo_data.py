"""A detection data set made of real photographs that installed packages ship (no downloads).

    python scripts/photo_data.py --out data/photos --n-train 1000 --n-val 200 --img-size 256 --classes 5 --seed 0

Backgrounds are random crops of real photos (scaled, mirrored, colour-jittered) that stay clear
of every instance of the chosen classes; objects are real objects cut from photos
(yoloslim/data/photo_sources.py: GrabCut outlines, rectangles or ellipses with a soft edge) pasted at
random scales from 10 px up to 3/4 of the image, mirrored, sometimes rotated, recoloured a
little, cut by the border, and partly hidden by each other and by clutter: patches of other
photos and objects of catalogue classes that were not chosen (unlabelled). Every object keeps
at least MIN_VISIBLE of its pixels in view. A label is the tight box of the object's pixels
left in view (those where it was pasted at opacity >= 0.5 and nothing was pasted over it at
>= 0.5), measured on the pixels, so it is exact; hidden parts are not in it, as in COCO.

Which photos are used depends on what is installed: matplotlib's grace_hopper.jpg always,
scikit-image's bundled photos (requirements.txt), Darknet's /usr/share/darknet/data
(`apt-get install darknet`) only when the chosen classes need them. With fewer sources there
are fewer classes: --classes past what is there is refused with the install that adds more.

Layout written into --out, a new folder (an existing one must be empty; it is built in a
hidden sibling and renamed into place, so a killed run leaves nothing that looks finished):
    images/{train,val}/NNNNNN.jpg, labels/{train,val}/NNNNNN.txt   'class cx cy w h', normalized
    train.txt, val.txt            image paths relative to the folder
    photos.names, photos.data     Darknet's form (paths relative to the .data file)
    photos.yaml                   ultralytics' form (path, train, val, nc, names)
    photo_data.json               what made it: parameters, classes, photo files, notes (marks the set)

Each image is drawn from its own RNG seeded with (seed, split, index): the same arguments and
photo sources give identical bytes, whatever the number of worker processes.
"""
import dataclasses
import json
import math
import multiprocessing
import os

import cv2
import numpy as np

from yoloslim.errors import DataError
from yoloslim.io import atomic_folder, atomic_write
from yoloslim.data.photo_sources import build_library, photo_path, sample_photos  # noqa: F401 (sample_photos: re-exported)

GENERATOR_VERSION = 1  # bump when the drawing changes
SPLITS = {"train": 0, "val": 1}
MARKER = "photo_data.json"
MIN_SIDE = 10           # px: the smallest object's longest side
MAX_FRACTION = 0.75     # the largest object's longest side, as a fraction of the image
MIN_VISIBLE = 0.6       # an object keeps this share of its pixels inside the image and unhidden
MIN_BOX = 4             # px: an object is pasted only where its box is at least this wide and high
MAX_OBJECTS = 8
AVOID_OVERLAP = 0.03    # a background crop may hold at most this share of a class instance's rectangle


@dataclasses.dataclass
class Params:
    """The generation parameters; stored in the marker file."""
    n_train: int
    n_val: int
    img_size: int
    classes: int
    seed: int


@dataclasses.dataclass
class Canvas:
    """An image being drawn, and who owns each pixel: -1 background or clutter, i >= 0 object i."""
    img: np.ndarray
    owner: np.ndarray
    visible: list = dataclasses.field(default_factory=list)   # per object: pixels still in view
    area: list = dataclasses.field(default_factory=list)      # per object: pixels when pasted
    classes: list = dataclasses.field(default_factory=list)   # per object: its class


@dataclasses.dataclass
class Sprite:
    """An object or clutter patch ready to paste: BGR uint8 and opacity float32 of one size."""
    bgr: np.ndarray
    alpha: np.ndarray
    cls: int   # -1: clutter, not labelled


# ----------------------------------------------------------------------------- colour and geometry

def jitter_colour(img, rng, gain=0.35, tint=0.12):
    """Brightness, contrast and white balance through one lookup table per channel."""
    x = np.arange(256, dtype=np.float32)
    bright = math.exp(rng.uniform(-gain, gain))
    contrast = math.exp(rng.uniform(-gain, gain))
    tables = []
    for channel_gain in np.exp(rng.uniform(-tint, tint, size=3)):
        y = ((x - 128) * contrast + 128) * bright * channel_gain
        tables.append(np.clip(y + 0.5, 0, 255).astype(np.uint8))
    return cv2.LUT(img, np.stack(tables, axis=1)[:, None, :])


def overlap(a, b):
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0) * max(h, 0)


def rect_area(r):
    return (r[2] - r[0]) * (r[3] - r[1])


def pyramid(bgr, alpha=None):
    """[(bgr, alpha)] at full size and each halving down to 16 px: resizing from the level just
    above the target size is several times faster than from the full photo, and as sharp."""
    levels = [(bgr, alpha)]
    while min(levels[-1][0].shape[:2]) >= 32:
        b, a = levels[-1]
        levels.append((cv2.pyrDown(b), None if a is None else cv2.pyrDown(a)))
    return levels


def level_above(levels, factor):
    """The pyramid level at most ``factor`` times smaller (factor = full size / target size)."""
    k = min(max(int(math.floor(math.log2(max(factor, 1.0)))), 0), len(levels) - 1)
    return k, levels[k]


def levels_of(item):
    """The pyramid of a Background or ObjectCrop, built on first use (in each worker process)."""
    if item.levels is None:
        item.levels = pyramid(item.bgr, getattr(item, "alpha", None))
    return item.levels


def clear_crop(bg, rng, min_share, target, shrink=1.0):
    """A random crop of ``bg`` (about ``target`` px once resized) clear of its avoided rectangles, or None."""
    h, w = bg.bgr.shape[:2]
    side = min(h, w) * rng.uniform(min_share, 1.0) * shrink
    aspect = math.exp(rng.uniform(-0.25, 0.25))
    cw, ch = min(w, side * math.sqrt(aspect)), min(h, side / math.sqrt(aspect))
    x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    window = (x0, y0, x0 + cw, y0 + ch)
    if any(overlap(window, r) > AVOID_OVERLAP * rect_area(r) for r in bg.avoid):
        return None
    k, (img, _) = level_above(levels_of(bg), max(cw, ch) / target)
    f = 2 ** k
    return img[int(y0 / f):int((y0 + ch) / f), int(x0 / f):int((x0 + cw) / f)]


def photo_crop(lib, rng, min_share, target):
    """Pixels of a real photo with no chosen-class object in them (retries over photos)."""
    for attempt in range(30):
        bg = lib.backgrounds[int(rng.integers(len(lib.backgrounds)))]
        # smaller and smaller windows: between the objects of a crowded photo only small ones fit
        crop = clear_crop(bg, rng, min_share, target, 0.9 ** attempt)
        if crop is not None and min(crop.shape[:2]) >= 8:
            return crop
    # Only reachable with very few photos: any photo's mean colour, so still nothing unlabelled.
    mean = lib.backgrounds[0].bgr.reshape(-1, 3).mean(axis=0)
    return np.full((64, 64, 3), mean, np.uint8)


def resize_to(img, w, h):
    shrink = w * h < img.shape[0] * img.shape[1]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def draw_background(lib, rng, s):
    img = resize_to(photo_crop(lib, rng, 0.25, s), s, s)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    return jitter_colour(np.ascontiguousarray(img), rng)


# ----------------------------------------------------------------------------- sprites

def scaled_sprite(bgr, alpha, cls, rng, longest, levels=None):
    """Resize to ``longest`` px (aspect jittered), maybe mirror and rotate, recolour a little."""
    if levels is not None:
        _, (bgr, alpha) = level_above(levels, max(alpha.shape) / longest)
    h, w = alpha.shape
    stretch = math.exp(rng.uniform(-0.15, 0.15))
    scale = longest / max(w * stretch, h)
    nw, nh = max(int(round(w * stretch * scale)), 2), max(int(round(h * scale)), 2)
    bgr, alpha = resize_to(bgr, nw, nh), resize_to(alpha, nw, nh)
    if rng.random() < 0.5:
        bgr, alpha = bgr[:, ::-1], alpha[:, ::-1]
    if rng.random() < 0.25:
        bgr, alpha = rotate(bgr, alpha, rng.uniform(-15, 15))
    return Sprite(jitter_colour(np.ascontiguousarray(bgr), rng, 0.2, 0.06), np.ascontiguousarray(alpha), cls)


def rotate(bgr, alpha, degrees):
    """Rotate onto a canvas large enough to hold every corner (the box is re-measured later)."""
    h, w = alpha.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    c, s = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(math.ceil(w * c + h * s)), int(math.ceil(w * s + h * c))
    m[0, 2] += (nw - w) / 2
    m[1, 2] += (nh - h) / 2
    return (cv2.warpAffine(bgr, m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE),
            cv2.warpAffine(alpha, m, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=0))


def object_sprite(lib, rng, s):
    cls = int(rng.integers(len(lib.names)))
    crops = lib.objects[cls]
    crop = crops[int(rng.integers(len(crops)))]
    longest = math.exp(rng.uniform(math.log(MIN_SIDE), math.log(MAX_FRACTION * s)))
    return scaled_sprite(crop.bgr, crop.alpha, cls, rng, longest, levels_of(crop))


def clutter_sprite(lib, rng, s):
    """An unlabelled occluder: an object of a class not chosen, or a soft patch of another photo."""
    longest = s * rng.uniform(0.1, 0.45)
    if lib.distractors and rng.random() < 0.5:
        crop = lib.distractors[int(rng.integers(len(lib.distractors)))]
        return scaled_sprite(crop.bgr, crop.alpha, -1, rng, longest, levels_of(crop))
    patch = photo_crop(lib, rng, 0.1, longest)
    h, w = patch.shape[:2]
    alpha = np.zeros((h, w), np.float32)
    if rng.random() < 0.5:
        cv2.ellipse(alpha, ((w / 2, h / 2), (w - 2, h - 2), 0), 1.0, -1)
    else:
        alpha[1:-1, 1:-1] = 1.0
    return scaled_sprite(patch, cv2.GaussianBlur(alpha, (0, 0), 1.0), -1, rng, longest)


# ----------------------------------------------------------------------------- pasting

def window(canvas, sprite, x, y):
    """Slices of the image and of the sprite where they meet, or None when they do not."""
    s = canvas.img.shape[0]
    h, w = sprite.alpha.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, s), min(y + h, s)
    if x1 <= x0 or y1 <= y0:
        return None
    return (slice(y0, y1), slice(x0, x1)), (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))


def try_paste(canvas, sprite, rng):
    """Paste at a random place that keeps every object visible enough; False when none found."""
    s = canvas.img.shape[0]
    h, w = sprite.alpha.shape
    solid = sprite.alpha >= 0.5
    total = int(solid.sum())
    if total == 0:
        return False
    for _ in range(15):
        x, y = int(rng.integers(-w // 2, s - w // 2 + 1)), int(rng.integers(-h // 2, s - h // 2 + 1))
        win = window(canvas, sprite, x, y)
        if win is None:
            continue
        (iy, ix), (sy, sx) = win
        mine = solid[sy, sx]
        if sprite.cls >= 0 and not own_box_fits(mine, total):
            continue
        hidden = np.bincount(canvas.owner[iy, ix][mine] + 1, minlength=len(canvas.area) + 1)[1:]
        if any(v - c < MIN_VISIBLE * a for v, c, a in zip(canvas.visible, hidden, canvas.area)):
            continue
        blend(canvas.img[iy, ix], sprite.bgr[sy, sx], sprite.alpha[sy, sx])
        record(canvas, sprite, mine, hidden, (iy, ix))
        return True
    return False


def own_box_fits(mine, total):
    """The object keeps MIN_VISIBLE of its pixels inside the image and a box of MIN_BOX px."""
    if mine.sum() < MIN_VISIBLE * total:
        return False
    ys, xs = np.nonzero(mine)
    return xs.max() - xs.min() + 1 >= MIN_BOX and ys.max() - ys.min() + 1 >= MIN_BOX


def blend(roi, bgr, alpha):
    a = alpha[..., None]
    roi[...] = np.clip(roi * (1 - a) + bgr * a + 0.5, 0, 255).astype(np.uint8)


def record(canvas, sprite, mine, hidden, where):
    """Update pixel ownership: a pixel belongs to the last sprite whose opacity there is >= 0.5."""
    for i, c in enumerate(hidden):
        canvas.visible[i] -= int(c)
    owner = canvas.owner[where]
    if sprite.cls < 0:
        owner[mine] = -1
        return
    owner[mine] = len(canvas.area)
    n = int(mine.sum())
    canvas.area.append(n)
    canvas.visible.append(n)
    canvas.classes.append(sprite.cls)


def visible_boxes(canvas):
    """(class, x1, y1, x2, y2) of each object's pixels left in view: what an annotator would draw
    around the object, hidden parts excluded (COCO's convention)."""
    boxes = []
    for i, cls in enumerate(canvas.classes):
        ys, xs = np.nonzero(canvas.owner == i)
        if len(xs):
            boxes.append((cls, int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    return boxes


def finish(img, rng):
    """Camera effects: a little blur sometimes, sensor noise, and a JPEG of random quality."""
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.0))
    cv2.setRNGSeed(int(rng.integers(2**31)))
    noise = np.empty(img.shape, np.int16)
    cv2.randn(noise, 0, rng.uniform(0, 6))
    img = cv2.add(img, noise, dtype=cv2.CV_8U)
    ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(80, 96))])
    if not ok:
        raise DataError("cv2.imencode failed in yoloslim/data/photo_data.py; check the OpenCV install")
    return jpg.tobytes()


def render_image(lib, seed, split_id, index, s):
    """One image: (JPEG bytes, label text)."""
    rng = np.random.default_rng([seed, split_id, index])
    canvas = Canvas(draw_background(lib, rng, s), np.full((s, s), -1, np.int16))
    clutter = int(rng.integers(0, 4))
    behind = int(rng.integers(0, clutter + 1))
    for _ in range(behind):
        try_paste(canvas, clutter_sprite(lib, rng, s), rng)
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        try_paste(canvas, object_sprite(lib, rng, s), rng)
    for _ in range(clutter - behind):
        try_paste(canvas, clutter_sprite(lib, rng, s), rng)
    return finish(canvas.img, rng), format_labels(visible_boxes(canvas), s)


def format_labels(labels, s):
    return "".join(f"{c} {(x1 + x2) / 2 / s:.6f} {(y1 + y2) / 2 / s:.6f} {(x2 - x1) / s:.6f} {(y2 - y1) / s:.6f}\n"
                   for c, x1, y1, x2, y2 in labels)


# ----------------------------------------------------------------------------- writing

_LIB = None  # the library in a worker process, set once by the pool initializer


def _init_worker(lib):
    global _LIB
    cv2.setNumThreads(1)
    _LIB = lib


def _write_one(job):
    out, split, index, seed, s = job
    jpg, text = render_image(_LIB, seed, SPLITS[split], index, s)
    stem = f"{index:06d}"
    with open(os.path.join(out, "images", split, stem + ".jpg"), "wb") as f:
        f.write(jpg)
    with open(os.path.join(out, "labels", split, stem + ".txt"), "w") as f:
        f.write(text)
    return text.count("\n")


def render_all(work, params, lib, workers, progress):
    """Draw every image into ``work``; returns the number of labelled objects."""
    for sub in ("images", "labels"):
        for split in SPLITS:
            os.makedirs(os.path.join(work, sub, split))
    jobs = [(work, split, i, params.seed, params.img_size)
            for split, n in (("train", params.n_train), ("val", params.n_val)) for i in range(n)]
    from tqdm import tqdm
    bar = tqdm(total=len(jobs), desc="drawing", unit="img", disable=not progress)
    objects = 0
    if workers > 1:
        # 'spawn', not fork: a forked child can inherit a lock held by an OpenCV thread (as yoloslim/data/synthetic.py)
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(lib,)) as pool:
            for n in pool.imap_unordered(_write_one, jobs, chunksize=16):
                objects += n
                bar.update()
    else:
        _init_worker(lib)
        for job in jobs:
            objects += _write_one(job)
            bar.update()
    bar.close()
    return objects


def write_text(path, text):
    with atomic_write(path, "w") as f:
        f.write(text)


def write_index_files(work, final, params, names):
    for split, n in (("train", params.n_train), ("val", params.n_val)):
        write_text(os.path.join(work, f"{split}.txt"), "".join(f"images/{split}/{i:06d}.jpg\n" for i in range(n)))
    write_text(os.path.join(work, "photos.names"), "".join(n + "\n" for n in names))
    write_text(os.path.join(work, "photos.data"),
               f"classes={len(names)}\ntrain=train.txt\nvalid=val.txt\nnames=photos.names\n")
    yaml_names = "".join(f"  {i}: {json.dumps(n)}\n" for i, n in enumerate(names))
    write_text(os.path.join(work, "photos.yaml"),
               "# written by yoloslim/data/photo_data.py; ultralytics' data set form\n"
               f"path: {json.dumps(os.path.abspath(final))}\ntrain: images/train\nval: images/val\n"
               f"nc: {len(names)}\nnames:\n{yaml_names}")


def marker(params, lib, objects):
    photos = sorted({b.name for b in lib.backgrounds})
    return {"generator": "yoloslim.data.photo_data", "generator_version": GENERATOR_VERSION, **dataclasses.asdict(params),
            "class_names": lib.names, "objects": objects, "sources": lib.sources,
            "photos": [photo_path(p, lib.sources) for p in photos], "notes": lib.notes}


def claim_output(out):
    """Create ``out`` (or take it when it exists and is empty); any other existing path is refused."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        os.mkdir(out)
    except FileExistsError:
        refuse_used(out)  # another run may have taken the name since the first check


def refuse_used(out):
    """DataError unless ``out`` is absent or an empty folder."""
    if not os.path.lexists(out):
        return
    if not os.path.isdir(out):
        raise DataError(f"--out is an existing file in {out}; name a new folder (photo_data creates it)")
    if os.listdir(out):
        raise DataError(f"--out is an existing folder that is not empty in {out}; name a new folder "
                        f"(photo_data creates it and never writes into a used one)")


def generate(out, params, workers=1, progress=False, sources=None):
    """Write the set into the new folder ``out``; returns the marker dict."""
    refuse_used(out)  # before the objects are cut: a refusal costs nothing
    lib = build_library(params.classes, sources)
    claim_output(out)
    with atomic_folder(out) as work:
        objects = render_all(work, params, lib, workers, progress)
        write_index_files(work, out, params, lib.names)
        meta = marker(params, lib, objects)
        write_text(os.path.join(work, MARKER), json.dumps(meta, indent=1) + "\n")
    return meta
