"""Deterministic synthetic detection data set ("shapes") in YOLO/Darknet format.

    python -m yoloslim.data.synthetic --out data/shapes --n-train 2000 --n-val 400 --img-size 320 --seed 0

Five object classes (circle, square, triangle, cross, star) are drawn on cluttered
backgrounds: gradients, soft noise blobs, random lines and distractor shapes that belong
to none of the classes (elongated ellipses and bars, arcs, zig-zag polylines). Objects vary
in size (about 12 to 120 px), colour, rotation and opacity, may overlap or be cut by the
image border, and every image gets blur and sensor noise, so a small YOLO has to learn
shape, not colour or edges.

Every image is drawn from its own RNG seeded with (seed, split, index): the output does not
depend on the number of worker processes, and the same arguments give identical bytes.

Layout written under --out:
    images/{train,val}/NNNNNN.jpg
    labels/{train,val}/NNNNNN.txt     one 'class cx cy w h' line per object, normalized,
                                      boxes clipped to the image
    train.txt, val.txt                image paths relative to the folder holding the list
                                      (e.g. 'images/train/000000.jpg')
    shapes.names                      one class name per line
    shapes.data                       classes/train/valid/names, paths relative to the .data
                                      file's folder (yoloslim.darknet.cfg.parse_data_cfg resolves them)
    meta.json                         the generation parameters; written last, it marks a
                                      complete set, so a rerun with the same parameters is a no-op
    .yolo-slim-owned                  written first (yoloslim/owned.py): only a folder that is new,
                                      empty or so marked is written into; any other is refused
"""
import json
import math
import multiprocessing
import argparse
import os
import time

import cv2
import numpy as np

from yoloslim.errors import cli_main
from yoloslim.io import atomic_write
from yoloslim.owned import claim

CLASS_NAMES = ("circle", "square", "triangle", "cross", "star")
GENERATOR_VERSION = 1  # bump when the drawing code changes so cached sets are rebuilt
SPLITS = {"train": 0, "val": 1}

MIN_SIZE, MAX_SIZE = 12, 120  # object size range in pixels (circumscribed diameter)
MAX_COVERED = 0.45  # a new object may hide at most this fraction of an earlier object's box
MIN_VISIBLE = 0.6  # fraction of an object's box that must stay inside the image
JPEG_QUALITY = 92


# ----------------------------------------------------------------------------- geometry

def regular_polygon(n, radius, angle):
    """Vertices (n, 2) of a regular n-gon around the origin."""
    t = angle + np.arange(n) * 2 * math.pi / n
    return np.stack([np.cos(t), np.sin(t)], axis=1) * radius


def star_polygon(radius, angle, inner_ratio):
    """Vertices of a 5-pointed star: outer and inner radii alternate."""
    t = angle + np.arange(10) * math.pi / 5
    r = np.where(np.arange(10) % 2 == 0, radius, radius * inner_ratio)
    return np.stack([np.cos(t) * r, np.sin(t) * r], axis=1)


def cross_polygon(radius, angle, arm_ratio):
    """Vertices of a plus sign with arms of half-length `radius` and half-width radius*arm_ratio."""
    a, b = radius, radius * arm_ratio
    pts = np.array([(b, a), (b, b), (a, b), (a, -b), (b, -b), (b, -a),
                    (-b, -a), (-b, -b), (-a, -b), (-a, b), (-b, b), (-b, a)], dtype=np.float64)
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def object_outline(cls, size, rng):
    """Return ('circle', radius) or ('poly', vertices around the origin) for class `cls`.

    `size` is the circumscribed diameter; rotation is random except for the circle.
    """
    radius = size / 2
    angle = rng.uniform(0, 2 * math.pi)
    name = CLASS_NAMES[cls]
    if name == "circle":
        return "circle", radius
    if name == "square":
        return "poly", regular_polygon(4, radius, angle)
    if name == "triangle":
        return "poly", regular_polygon(3, radius, angle)
    if name == "cross":
        return "poly", cross_polygon(radius / math.sqrt(1.0 + 0.35 ** 2), angle, rng.uniform(0.25, 0.4))
    return "poly", star_polygon(radius, angle, rng.uniform(0.38, 0.5))


def outline_box(kind, shape, cx, cy):
    """Tight box (x1, y1, x2, y2) of an outline placed at (cx, cy)."""
    if kind == "circle":
        return np.array([cx - shape, cy - shape, cx + shape, cy + shape])
    xs, ys = shape[:, 0] + cx, shape[:, 1] + cy
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()])


def clip_box(box, w, h):
    return np.array([np.clip(box[0], 0, w), np.clip(box[1], 0, h),
                     np.clip(box[2], 0, w), np.clip(box[3], 0, h)])


def box_area(box):
    return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)


def intersection(a, b):
    return box_area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])


# ----------------------------------------------------------------------------- drawing
# Clutter is drawn straight into the uint8 image (cheap); only objects are alpha-blended,
# and only inside their own bounding rectangle, which keeps an image at ~10 ms of CPU.

SHIFT = 4  # cv2 sub-pixel bits: object outlines are drawn with 1/16 px precision
SCALE = 1 << SHIFT


def random_color(rng):
    return rng.integers(0, 256, size=3).astype(np.float64)


def cv_color(color):
    return tuple(float(c) for c in color)


def fill_mask(mask, kind, shape, cx, cy):
    """Draw a filled outline into a uint8 mask (anti-aliased, value 255)."""
    if kind == "circle":
        cv2.circle(mask, (int(round(cx * SCALE)), int(round(cy * SCALE))), int(round(shape * SCALE)),
                   255, -1, cv2.LINE_AA, SHIFT)
    else:
        pts = np.round((shape + (cx, cy)) * SCALE).astype(np.int32)
        cv2.fillPoly(mask, [pts], 255, cv2.LINE_AA, shift=SHIFT)


def blend(img, mask, color, alpha):
    """Paint `color` into uint8 `img` where `mask` is set, with opacity `alpha`."""
    x, y, w, h = cv2.boundingRect(mask)  # only touch the pixels the mask covers
    if w == 0 or h == 0:
        return
    roi = img[y:y + h, x:x + w]
    a = (mask[y:y + h, x:x + w].astype(np.float32) * np.float32(alpha / 255.0))[..., None]
    mixed = roi * (1 - a) + a * np.asarray(color, dtype=np.float32)
    roi[...] = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def draw_background(rng, s):
    """Gradient + soft low-frequency blobs + fine grain, as uint8 BGR.

    The smooth part is built at 1/8 resolution and upsampled: same look, 60x fewer operations.
    """
    low = max(s // 8, 4)
    c0, c1 = random_color(rng).astype(np.float32), random_color(rng).astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(0, 1, low, dtype=np.float32)
    t = ramp[None, :] * np.float32(math.cos(theta)) + ramp[:, None] * np.float32(math.sin(theta))
    t -= t.min()
    t /= max(float(t.max()), 1e-6)
    smooth = c0 + t[..., None] * (c1 - c0)
    # Soft blobs: coarse noise upsampled, so they have no sharp edges that look like objects.
    cells = int(rng.integers(3, 9))
    blobs = rng.normal(0, rng.uniform(15, 45), size=(cells, cells, 3)).astype(np.float32)
    smooth += cv2.resize(blobs, (low, low), interpolation=cv2.INTER_CUBIC)
    img = cv2.resize(smooth, (s, s), interpolation=cv2.INTER_LINEAR)
    # Fine texture (grain, fabric-like) at a random scale.
    grain_cells = int(rng.integers(s // 16, s // 2))
    grain = rng.normal(0, rng.uniform(0, 20), size=(grain_cells, grain_cells)).astype(np.float32)
    img += cv2.resize(grain, (s, s), interpolation=cv2.INTER_LINEAR)[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def draw_lines(img, rng, count, max_thickness):
    """Random straight lines across the image (clutter that also occludes objects)."""
    s = img.shape[0]
    for _ in range(count):
        p0 = tuple(int(v) for v in rng.integers(-s // 4, s + s // 4, size=2))
        p1 = tuple(int(v) for v in rng.integers(-s // 4, s + s // 4, size=2))
        cv2.line(img, p0, p1, cv_color(random_color(rng)), int(rng.integers(1, max_thickness + 1)), cv2.LINE_AA)


def draw_distractor(img, rng):
    """One shape that is none of the classes: thin ellipse, long bar, arc or zig-zag."""
    s = img.shape[0]
    cx, cy = rng.uniform(0, s, size=2)
    length = math.exp(rng.uniform(math.log(MIN_SIZE), math.log(MAX_SIZE)))
    angle = rng.uniform(0, 180)
    kind = rng.integers(4)
    color = cv_color(random_color(rng))
    center = (int(cx), int(cy))
    if kind == 0:  # ellipse far from round (aspect 0.15-0.45) so it is not a circle
        axes = (int(length / 2), max(int(length / 2 * rng.uniform(0.15, 0.45)), 1))
        cv2.ellipse(img, center, axes, angle, 0, 360, color, -1, cv2.LINE_AA)
    elif kind == 1:  # bar far from square
        w, h = length, length * rng.uniform(0.1, 0.35)
        pts = cv2.boxPoints(((cx, cy), (w, h), angle))
        cv2.fillPoly(img, [np.round(pts).astype(np.int32)], color, cv2.LINE_AA)
    elif kind == 2:  # open arc
        axes = (int(length / 2), int(length / 2 * rng.uniform(0.5, 1.0)))
        start = rng.uniform(0, 360)
        cv2.ellipse(img, center, axes, angle, start, start + rng.uniform(60, 240), color,
                    int(rng.integers(1, 4)), cv2.LINE_AA)
    else:  # zig-zag polyline
        n = int(rng.integers(3, 7))
        pts = np.array([cx, cy]) + np.cumsum(rng.normal(0, length / 3, size=(n, 2)), axis=0)
        cv2.polylines(img, [np.round(pts).astype(np.int32)], False, color, int(rng.integers(1, 4)), cv2.LINE_AA)


def contrasting_color(img, box, rng):
    """A colour that differs enough from the background under `box` to be visible."""
    x1, y1, x2, y2 = (int(v) for v in box)
    patch = img[max(y1, 0):max(y2, 1), max(x1, 0):max(x2, 1)]
    mean = patch.reshape(-1, 3).mean(axis=0) if patch.size else np.full(3, 128.0)
    for _ in range(20):
        color = random_color(rng)
        if np.abs(color - mean).sum() > 90:
            return color
    return 255.0 - mean  # fallback: the complement is always far from the mean


def place_object(rng, s, boxes):
    """Pick (class, outline, centre, box) that keeps earlier objects visible enough, or None."""
    for _ in range(30):
        cls = int(rng.integers(len(CLASS_NAMES)))
        size = math.exp(rng.uniform(math.log(MIN_SIZE), math.log(MAX_SIZE)))
        kind, shape = object_outline(cls, size, rng)
        cx, cy = rng.uniform(0, s, size=2)
        box = outline_box(kind, shape, cx, cy)
        clipped = clip_box(box, s, s)
        if box_area(clipped) < MIN_VISIBLE * box_area(box):
            continue
        if min(clipped[2] - clipped[0], clipped[3] - clipped[1]) < 4:
            continue
        if any(intersection(clipped, b) > MAX_COVERED * box_area(b) for b in boxes):
            continue
        return cls, kind, shape, (cx, cy), clipped
    return None


def draw_object(img, rng, kind, shape, center, box):
    """Fill the object (mostly opaque, so the background shows through a little), maybe outlined."""
    s = img.shape[0]
    mask = np.zeros((s, s), np.uint8)
    fill_mask(mask, kind, shape, *center)
    blend(img, mask, contrasting_color(img, box, rng), rng.uniform(0.75, 1.0))
    if rng.random() < 0.3:  # outline in another colour: object edge != colour edge
        thickness = int(rng.integers(1, 3))
        color = cv_color(random_color(rng))
        if kind == "circle":
            cv2.circle(img, (int(round(center[0])), int(round(center[1]))), int(round(shape)), color,
                       thickness, cv2.LINE_AA)
        else:
            cv2.polylines(img, [np.round(shape + center).astype(np.int32)], True, color, thickness, cv2.LINE_AA)


def add_sensor_noise(img, rng):
    """Optional blur, then Gaussian noise of random strength."""
    if rng.random() < 0.6:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.3))
    # cv2's RNG (seeded from ours, so still deterministic) with a saturating add is ~5x faster
    # than drawing float noise in numpy.
    cv2.setRNGSeed(int(rng.integers(2**31)))
    noise = np.empty(img.shape, np.int16)
    cv2.randn(noise, 0, rng.uniform(2, 12))
    return cv2.add(img, noise, dtype=cv2.CV_8U)


def render_image(seed, split_id, index, s):
    """Draw one image; returns (encoded JPEG bytes, label text)."""
    rng = np.random.default_rng([seed, split_id, index])
    img = draw_background(rng, s)
    draw_lines(img, rng, int(rng.integers(2, 10)), 3)
    for _ in range(int(rng.integers(1, 6))):
        draw_distractor(img, rng)
    labels = []
    for _ in range(int(rng.integers(1, 9))):
        placed = place_object(rng, s, [b for _, b in labels])
        if placed is None:
            continue
        cls, kind, shape, center, box = placed
        draw_object(img, rng, kind, shape, center, box)
        labels.append((cls, box))
    # Some thin clutter over the objects: partial occlusion by things that are not objects.
    draw_lines(img, rng, int(rng.integers(0, 3)), 2)
    if rng.random() < 0.3:
        draw_distractor(img, rng)
    img = add_sensor_noise(img, rng)
    ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok, "cv2.imencode failed"
    return jpg.tobytes(), format_labels(labels, s)


def format_labels(labels, s):
    lines = []
    for cls, (x1, y1, x2, y2) in labels:
        cx, cy, w, h = (x1 + x2) / 2 / s, (y1 + y2) / 2 / s, (x2 - x1) / s, (y2 - y1) / s
        lines.append(f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
    return "".join(lines)


# ----------------------------------------------------------------------------- writing

def _write_one(job):
    out, split, index, seed, s = job
    jpg, text = render_image(seed, SPLITS[split], index, s)
    stem = f"{index:06d}"
    with open(os.path.join(out, "images", split, stem + ".jpg"), "wb") as f:
        f.write(jpg)
    with open(os.path.join(out, "labels", split, stem + ".txt"), "w") as f:
        f.write(text)


def generation_params(n_train, n_val, img_size, seed):
    return {"generator_version": GENERATOR_VERSION, "n_train": n_train, "n_val": n_val,
            "img_size": img_size, "seed": seed, "classes": list(CLASS_NAMES)}


def is_complete(out, params):
    """True when `out` holds a set made with exactly these parameters."""
    try:
        with open(os.path.join(out, "meta.json")) as f:
            if json.load(f) != params:
                return False
    except (OSError, ValueError):
        return False
    for split, n in (("train", params["n_train"]), ("val", params["n_val"])):
        for sub, ext in (("images", ".jpg"), ("labels", ".txt")):
            if n > 0 and not os.path.isfile(os.path.join(out, sub, split, f"{n - 1:06d}{ext}")):
                return False
    return True


def write_text(path, text):
    """Atomic write: a crash never leaves a half-written list or meta.json."""
    with atomic_write(path, "w") as f:
        f.write(text)


def write_index_files(out, n_train, n_val):
    for split, n in (("train", n_train), ("val", n_val)):
        write_text(os.path.join(out, f"{split}.txt"),
                   "".join(f"images/{split}/{i:06d}.jpg\n" for i in range(n)))
    write_text(os.path.join(out, "shapes.names"), "".join(n + "\n" for n in CLASS_NAMES))
    write_text(os.path.join(out, "shapes.data"),
               f"classes={len(CLASS_NAMES)}\ntrain=train.txt\nvalid=val.txt\nnames=shapes.names\n")


def generate(out, n_train=2000, n_val=400, img_size=320, seed=0, workers=None, progress=True):
    """Write the data set to `out`; returns False when an identical set was already there."""
    params = generation_params(n_train, n_val, img_size, seed)
    claim(out, "--out", "yoloslim/data/synthetic.py", legacy=earlier_set)
    if is_complete(out, params):
        return False
    meta = os.path.join(out, "meta.json")
    if os.path.exists(meta):
        os.remove(meta)  # the set is being rewritten: it is incomplete until the end
    for sub in ("images", "labels"):
        for split in SPLITS:
            os.makedirs(os.path.join(out, sub, split), exist_ok=True)
    jobs = [(out, split, i, seed, img_size)
            for split, n in (("train", n_train), ("val", n_val)) for i in range(n)]
    workers = workers or os.cpu_count() or 1
    bar = make_progress(len(jobs), progress)
    if workers > 1:
        # 'spawn', not fork: a forked child can inherit a lock held by one of the parent's
        # OpenCV/OpenMP threads and hang forever (seen under load).
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
            for _ in pool.imap_unordered(_write_one, jobs, chunksize=16):
                bar.update()
    else:
        for job in jobs:
            _write_one(job)
            bar.update()
    bar.close()
    write_index_files(out, n_train, n_val)
    write_text(meta, json.dumps(params, indent=1) + "\n")
    return True


def earlier_set(folder):
    """A set an earlier version wrote (before the marker): its meta.json names our generator."""
    try:
        with open(os.path.join(folder, "meta.json")) as f:
            return "generator_version" in json.load(f)
    except (OSError, ValueError, TypeError):
        return False


def make_progress(total, enabled):
    from tqdm import tqdm
    return tqdm(total=total, desc="drawing", unit="img", disable=not enabled)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m yoloslim.data.synthetic", allow_abbrev=False,
                                description="Write a deterministic synthetic shapes detection set "
                                            "(YOLO format, 5 classes: " + ", ".join(CLASS_NAMES) + ").")
    p.add_argument("--out", default="data/shapes", help="output folder (default: data/shapes)")
    p.add_argument("--n-train", type=int, default=2000, help="training images (default: 2000)")
    p.add_argument("--n-val", type=int, default=400, help="validation images (default: 400)")
    p.add_argument("--img-size", type=int, default=320, help="square image side in pixels (default: 320)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    args = p.parse_args(argv)
    if args.n_train < 0 or args.n_val < 0:
        p.error("--n-train and --n-val must be >= 0")
    if args.img_size < MAX_SIZE + 16:
        p.error(f"--img-size must be at least {MAX_SIZE + 16} (objects are up to {MAX_SIZE} px)")
    return args


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    made = generate(args.out, args.n_train, args.n_val, args.img_size, args.seed, args.workers or None)
    if made:
        print(f"wrote {args.n_train} train + {args.n_val} val images to {args.out} "
              f"in {time.time() - t0:.1f} s; data file: {os.path.join(args.out, 'shapes.data')}")
    else:
        print(f"{args.out} already holds this set (meta.json matches); nothing to do")


if __name__ == "__main__":
    cli_main(main)
