"""Real photographs that installable packages ship, and the objects we cut out of them.

No file is downloaded: every photo comes from a package already on the machine.

| source | how it gets here | photos used |
|---|---|---|
| ``matplotlib`` | requirements.txt (always) | ``mpl-data/sample_data/grace_hopper.jpg`` |
| ``scikit-image`` | requirements.txt (its wheel, about 14 MB, bundles them) | astronaut, coffee, rocket, motorcycle_left, chelsea, camera, coins, brick, grass, gravel |
| ``darknet`` | Debian's ``darknet`` package (.ci/run installs it) | ``/usr/share/darknet/data``: dog, horses, person, eagle |

Only files inside the installed wheel are read, never scikit-image's download-on-demand
ones. Each photo is checked against the size we catalogued it at; a photo of another size
(another package version) is left out with a note rather than cut at the wrong place.

The catalogue below lists, per object class, where its instances are in which photo: the
rectangle was chosen by looking at the photo; the object's outline inside it is found by
GrabCut (``paste="cut"``), or the rectangle itself is the object (``"rect"``, for flat things
like a name tag, or where GrabCut cannot separate the object, as on a grey photo), or an
ellipse inside it (``"ellipse"``). Coins are found by thresholding, one instance per coin.
Instances marked ``cut=False`` are there in a photo but not cut out (they overlap others):
a background crop must avoid them all the same, or it would show an unlabelled object.
"""
import dataclasses
import importlib.util
import os
import sys

import cv2
import numpy as np

from yoloslim.errors import DataError

DARKNET_DATA = "/usr/share/darknet/data"
SOURCE_ORDER = ("matplotlib", "scikit-image", "darknet")
INSTALL_HINT = {"scikit-image": "pip install -r requirements.txt (scikit-image)",
                "darknet": "apt-get install darknet"}

# key -> (source, file name in the source's folder, (width, height) it was catalogued at)
PHOTOS = {
    "grace_hopper": ("matplotlib", "grace_hopper.jpg", (512, 600)),
    "astronaut": ("scikit-image", "astronaut.png", (512, 512)),
    "coffee": ("scikit-image", "coffee.png", (600, 400)),
    "rocket": ("scikit-image", "rocket.jpg", (640, 427)),
    "motorcycle": ("scikit-image", "motorcycle_left.png", (741, 500)),
    "chelsea": ("scikit-image", "chelsea.png", (451, 300)),
    "camera": ("scikit-image", "camera.png", (512, 512)),
    "coins": ("scikit-image", "coins.png", (384, 303)),
    "brick": ("scikit-image", "brick.png", (512, 512)),
    "grass": ("scikit-image", "grass.png", (512, 512)),
    "gravel": ("scikit-image", "gravel.png", (512, 512)),
    "dog": ("darknet", "dog.jpg", (768, 576)),
    "horses": ("darknet", "horses.jpg", (773, 512)),
    "person": ("darknet", "person.jpg", (640, 424)),
    "eagle": ("darknet", "eagle.jpg", (773, 512)),
}


@dataclasses.dataclass(frozen=True)
class Instance:
    """One object in one photo: its rectangle (x1, y1, x2, y2, pixels) and how it is cut."""
    photo: str
    rect: tuple
    paste: str = "cut"   # "cut" (GrabCut outline), "rect" or "ellipse"
    cut: bool = True     # False: present in the photo, avoided by backgrounds, never pasted


COINS = "coins"  # instances found by thresholding, not listed

# Object classes in priority order: --classes K takes the first K whose photos are installed.
# The always-present and requirements.txt sources come first, so a set whose classes they hold
# is the same whether or not Darknet is installed.
CATALOGUE = {
    "head": [Instance("astronaut", (148, 12, 302, 172)), Instance("grace_hopper", (148, 20, 375, 322)),
             Instance("camera", (155, 62, 275, 205), "rect"), Instance("person", (214, 98, 252, 136), cut=False)],
    "espresso cup": [Instance("coffee", (75, 15, 485, 392))],
    "rocket": [Instance("rocket", (302, 124, 344, 410))],
    "motorcycle": [Instance("motorcycle", (92, 95, 692, 450), "rect")],  # GrabCut loses the dark wheels
    "coin": COINS,
    "cat": [Instance("chelsea", (20, 0, 420, 300), "rect")],
    "space shuttle": [Instance("astronaut", (352, 0, 478, 275), "rect")],  # GrabCut keeps only the tank
    "ribbon bar": [Instance("grace_hopper", (320, 486, 455, 530), "rect")],
    "name tag": [Instance("grace_hopper", (76, 482, 168, 519), "rect"),
                 Instance("astronaut", (277, 340, 333, 373), "rect")],
    "video camera": [Instance("camera", (255, 135, 332, 192), "rect")],
    "mission patch": [Instance("astronaut", (132, 345, 212, 428), "ellipse")],
    "button": [Instance("grace_hopper", (230, 572, 262, 600), "ellipse")],
    "dog": [Instance("dog", (128, 218, 308, 542)), Instance("person", (60, 262, 202, 346))],
    "horse": [Instance("horses", (435, 208, 598, 348)), Instance("person", (404, 138, 602, 348)),
              Instance("horses", (0, 185, 318, 412), cut=False), Instance("horses", (226, 192, 420, 362), cut=False),
              Instance("horses", (0, 185, 155, 280), cut=False), Instance("horses", (370, 205, 460, 325), cut=False)],
    "eagle": [Instance("eagle", (128, 85, 600, 452))],
    "pickup truck": [Instance("dog", (462, 72, 698, 172))],
    "person": [Instance("person", (188, 98, 276, 375)), Instance("astronaut", (15, 10, 370, 512), cut=False),
               Instance("grace_hopper", (0, 20, 512, 600), cut=False), Instance("camera", (0, 62, 335, 512), cut=False)],
}

# Photos a COCO model finds things on (person, cat, cup, motorcycle, dog, horse, bird),
# always-present sources first so the first ones do not depend on Darknet being installed.
COCO_PHOTOS = ("camera", "motorcycle", "grace_hopper", "coffee", "chelsea", "astronaut",
               "dog", "horses", "person", "eagle")


@dataclasses.dataclass
class ObjectCrop:
    """A cut-out object: BGR pixels and their opacity (float32 0..1), same height and width."""
    cls: int
    bgr: np.ndarray
    alpha: np.ndarray
    origin: str
    levels: list = None  # halvings of (bgr, alpha), built on first use (yoloslim.data.photo_data.pyramid)


@dataclasses.dataclass
class Background:
    """A photo to crop backgrounds from, and the rectangles a crop must stay clear of."""
    name: str
    bgr: np.ndarray
    avoid: list
    levels: list = None  # halvings of the photo, built on first use


@dataclasses.dataclass
class Library:
    """Everything the renderer draws from, built once per run."""
    names: list
    objects: list       # per class: list of ObjectCrop
    distractors: list   # ObjectCrops of catalogued classes not chosen: unlabelled clutter
    backgrounds: list   # Background
    sources: dict       # source -> folder, the ones used
    notes: list         # what was left out and why


# ----------------------------------------------------------------------------- finding photos

def _package_folder(name, *sub):
    """Folder inside an installed package, found without importing it (skimage's import is slow)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(list(spec.submodule_search_locations)[0], *sub)
    return folder if os.path.isdir(folder) else None


def find_sources():
    """{source: folder} of the photo sources installed here."""
    found = {"matplotlib": _package_folder("matplotlib", "mpl-data", "sample_data"),
             "scikit-image": _package_folder("skimage", "data"),
             "darknet": DARKNET_DATA if os.path.isdir(DARKNET_DATA) else None}
    return {k: v for k, v in found.items() if v}


def read_photo(key, sources, notes):
    """The catalogued photo as BGR uint8, or None (with a note) when absent or not the one we know."""
    source, file, size = PHOTOS[key]
    if source not in sources:
        return None
    path = os.path.join(sources[source], file)
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        notes.append(f"{path}: missing or unreadable; left out")
        return None
    if (img.shape[1], img.shape[0]) != size:
        notes.append(f"{path}: {img.shape[1]}x{img.shape[0]}, catalogued at {size[0]}x{size[1]}; left out")
        return None
    return img


def photo_path(key, sources):
    source, file, _ = PHOTOS[key]
    return os.path.join(sources[source], file)


# ----------------------------------------------------------------------------- cutting objects

def coin_instances(gray):
    """One (rect, mask) per coin: bright discs on a dark, unevenly lit table."""
    # Subtracting the table (an opening larger than any coin) makes one threshold fit every corner.
    table = cv2.morphologyEx(gray, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (75, 75)))
    lifted = cv2.GaussianBlur(cv2.subtract(gray, table), (5, 5), 0)
    _, binary = cv2.threshold(lifted, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9)))
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    found = []
    for c in sorted(contours, key=lambda c: tuple(cv2.boundingRect(c)[:2])):
        x, y, w, h = cv2.boundingRect(c)
        if cv2.contourArea(c) < 600 or not 0.75 <= w / h <= 1.33:
            continue  # specks, and two touching coins (one blob, twice as wide)
        mask = np.zeros(gray.shape, np.uint8)
        cv2.drawContours(mask, [cv2.convexHull(c)], -1, 255, -1)  # coins are convex: fills the holes
        found.append(((x, y, x + w, y + h), mask))
    return found


def grabcut_mask(img, rect):
    """Foreground mask (uint8 0/255, photo-sized) of the object inside ``rect``, or None.

    GrabCut runs on a margin around the rectangle, shrunk to 200 px (the outline is then
    upsampled): about 0.1-0.4 s an object. Its k-means start is seeded, so the result is the same
    every run.
    """
    x1, y1, x2, y2 = rect
    h, w = img.shape[:2]
    margin = max(8, (max(x2 - x1, y2 - y1)) // 10)
    X1, Y1, X2, Y2 = max(0, x1 - margin), max(0, y1 - margin), min(w, x2 + margin), min(h, y2 + margin)
    region = img[Y1:Y2, X1:X2]
    scale = min(1.0, 200 / max(region.shape[:2]))
    small = cv2.resize(region, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    sx, sy = int((x1 - X1) * scale), int((y1 - Y1) * scale)
    box = (sx, sy, min(int(round((x2 - x1) * scale)), small.shape[1] - sx),
           min(int(round((y2 - y1) * scale)), small.shape[0] - sy))
    labels = np.zeros(small.shape[:2], np.uint8)
    cv2.setRNGSeed(0)
    cv2.grabCut(small, labels, box, np.zeros((1, 65)), np.zeros((1, 65)), 4, cv2.GC_INIT_WITH_RECT)
    fg = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    fg = largest_component(fg)
    share = fg.sum() / max(box[2] * box[3], 1)
    if not 0.15 <= share <= 0.97:
        return None  # GrabCut found nothing, or everything: the rectangle is the better outline
    mask = np.zeros((h, w), np.uint8)
    up = cv2.resize(fg * 255, (X2 - X1, Y2 - Y1), interpolation=cv2.INTER_LINEAR)
    mask[Y1:Y2, X1:X2] = np.where(up >= 128, 255, 0).astype(np.uint8)
    mask[:, :x1] = 0
    mask[:, x2:] = 0
    mask[:y1] = 0
    mask[y2:] = 0
    return mask


def largest_component(binary):
    """Keep the largest 8-connected blob of a 0/1 mask (GrabCut leaves specks beside the object)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n <= 1:
        return binary
    keep = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == keep).astype(np.uint8)


def shape_mask(shape, rect, paste):
    """Mask of a rectangle or of the ellipse inscribed in it."""
    x1, y1, x2, y2 = rect
    mask = np.zeros(shape[:2], np.uint8)
    if paste == "ellipse":
        cv2.ellipse(mask, (((x1 + x2) / 2, (y1 + y2) / 2), (x2 - x1, y2 - y1), 0), 255, -1)
    else:
        mask[y1:y2, x1:x2] = 255
    return mask


def crop_object(img, mask, cls, origin):
    """Crop the masked object with a soft (1 px) edge: pasted, it blends instead of looking cut."""
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 1.0)
    ys, xs = np.nonzero(alpha > 1 / 255)
    y1, y2, x1, x2 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return ObjectCrop(cls, img[y1:y2, x1:x2].copy(), alpha[y1:y2, x1:x2].copy(), origin)


def cut_instance(img, inst, cls):
    mask = grabcut_mask(img, inst.rect) if inst.paste == "cut" else None
    if mask is None:
        mask = shape_mask(img.shape, inst.rect, "ellipse" if inst.paste == "ellipse" else "rect")
    return crop_object(img, mask, cls, f"{inst.photo}{list(inst.rect)}")


# ----------------------------------------------------------------------------- the library

def class_instances(name, photos):
    """[(photo key, rect, mask or None, cut)] of one class in the photos that loaded."""
    spec = CATALOGUE[name]
    if spec == COINS:
        if "coins" not in photos:
            return []
        gray = cv2.cvtColor(photos["coins"], cv2.COLOR_BGR2GRAY)
        return [("coins", rect, mask, True) for rect, mask in coin_instances(gray)]
    return [(i.photo, i.rect, i, i.cut) for i in spec if i.photo in photos]


def available_classes(photos):
    """Catalogue classes with at least one instance to cut in the loaded photos, in priority order."""
    return [n for n in CATALOGUE if any(cut for *_, cut in class_instances(n, photos))]


def load_photos(sources, notes):
    photos = {}
    for key in PHOTOS:
        img = read_photo(key, sources, notes)
        if img is not None:
            photos[key] = img
    return photos


def cut_class(name, cls, photos):
    crops = []
    for key, rect, how, cut in class_instances(name, photos):
        if not cut:
            continue
        if isinstance(how, Instance):
            crops.append(cut_instance(photos[key], how, cls))
        else:
            crops.append(crop_object(photos[key], how, cls, f"{key}{list(rect)}"))
    return crops


def missing_sources_text(sources):
    missing = [s for s in SOURCE_ORDER if s not in sources]
    return "; ".join(f"{s}: {INSTALL_HINT[s]}" for s in missing if s in INSTALL_HINT)


def build_library(k, sources=None):
    """Cut the first ``k`` available classes and gather the backgrounds; DataError if fewer exist."""
    sources = find_sources() if sources is None else sources
    notes = []
    photos = load_photos(sources, notes)
    names = available_classes(photos)
    if k > len(names):
        more = missing_sources_text(sources)
        raise DataError(f"--classes {k} is more than the {len(names)} object classes the installed photos hold "
                        f"in {', '.join(sources.values()) or 'no photo source'}; pass --classes {len(names)} or fewer"
                        + (f", or install more ({more})" if more else ""))
    chosen = names[:k]
    used = used_sources(chosen, photos)
    photos = {key: img for key, img in photos.items() if PHOTOS[key][0] in used}
    objects = [cut_class(n, i, photos) for i, n in enumerate(chosen)]
    distractors = [c for n in CATALOGUE if n not in chosen for c in cut_class(n, -1, photos)]
    avoid = avoided_rects(chosen, photos)
    backgrounds = [Background(key, img, avoid.get(key, [])) for key, img in photos.items()]
    missing = missing_sources_text(sources)
    if missing:
        notes.append(f"photo sources not installed (fewer classes and backgrounds): {missing}")
    return Library(chosen, objects, distractors, backgrounds, {s: sources[s] for s in sources if s in used}, notes)


def used_sources(chosen, photos):
    """The base sources, plus Darknet's only when a chosen class needs it: a set whose classes
    the base holds comes out the same with or without Darknet installed."""
    used = {"matplotlib", "scikit-image"}
    for name in chosen:
        used |= {PHOTOS[key][0] for key, _, _, cut in class_instances(name, photos) if cut}
    return used


def avoided_rects(chosen, photos):
    """{photo: rects of every chosen-class instance in it}: backgrounds must not show them."""
    avoid = {}
    for name in chosen:
        for key, rect, _, _ in class_instances(name, photos):
            avoid.setdefault(key, []).append(tuple(int(v) for v in rect))
    return avoid


# ----------------------------------------------------------------------------- photos for COCO models

def sample_photos(out_dir, n, size=416, sources=None):
    """Write ``n`` real photographs (longest side ``size``) into ``out_dir``; return their paths.

    The photos hold things a COCO model detects (person, cat, cup, motorcycle; with Darknet
    installed also dog, horse, bird); the first six come from matplotlib and
    scikit-image, so they are the same with or without Darknet. Past the photos available,
    mirrored copies and then centre crops follow, so any ``n`` gives distinct images.
    ``sources``: {source: folder} to use instead of what is installed.
    """
    sources = find_sources() if sources is None else sources
    notes = []
    photos = [(key, img) for key in COCO_PHOTOS for img in [read_photo(key, sources, notes)] if img is not None]
    if not photos:
        raise DataError(f"{out_dir}: no sample photographs are installed ({'; '.join(notes) or 'matplotlib missing'}); "
                        f"pip install -r requirements.txt")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for i in range(n):
        key, img = photos[i % len(photos)]
        img = photo_variant(img, i // len(photos))
        scale = size / max(img.shape[:2])
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        path = os.path.join(out_dir, f"{i:03d}_{key}.jpg")
        if not cv2.imwrite(path, img, [cv2.IMWRITE_JPEG_QUALITY, 92]):
            raise DataError(f"{path}: could not be written in {out_dir}; check the folder's permissions and free space")
        paths.append(path)
    return paths


def photo_variant(img, round_):
    """Round 0: the photo; odd rounds mirrored; later rounds a centre crop that shrinks each time."""
    if round_ % 2:
        img = img[:, ::-1]
    keep = 1.0 - 0.1 * (round_ // 2)
    if keep < 1.0:
        h, w = img.shape[:2]
        ch, cw = max(int(h * max(keep, 0.5)), 32), max(int(w * max(keep, 0.5)), 32)
        img = img[(h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]
    return np.ascontiguousarray(img)


if __name__ == "__main__":  # a quick inventory: python -m yoloslim.data.photo_sources
    found = find_sources()
    notes_ = []
    loaded = load_photos(found, notes_)
    print("sources:", found or "none")
    print("classes:", ", ".join(available_classes(loaded)))
    for note in notes_:
        print("note:", note, file=sys.stderr)
