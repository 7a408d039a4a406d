"""Tiny user data sets in the three forms slim.py takes (YOLO folder, Darknet .data, dataset YAML).

Images are 64-96 px with one or two filled boxes of two classes; enough for a 1-epoch stage.
"""
import hashlib
import os

import cv2
import numpy as np

NAMES = ["red", "blue"]


def write_yolo_folder(root, n_train=6, n_val=3, names=NAMES, seed=0):
    """``root/images/{train,val}``, ``root/labels/{train,val}``, ``root/classes.txt``; returns root."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        os.makedirs(os.path.join(root, "images", split), exist_ok=True)
        os.makedirs(os.path.join(root, "labels", split), exist_ok=True)
        for i in range(n):
            w, h = int(rng.choice([64, 80, 96])), int(rng.choice([64, 96]))
            img = np.full((h, w, 3), 200, np.uint8)
            lines = []
            for _ in range(2):
                cls = int(rng.integers(len(names)))
                bw, bh = int(rng.integers(12, w // 2)), int(rng.integers(12, h // 2))
                x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                img[y:y + bh, x:x + bw] = (0, 0, 255) if cls == 0 else (255, 0, 0)
                lines.append(f"{cls} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}\n")
            cv2.imwrite(os.path.join(root, "images", split, f"{i:06d}.jpg"), img)
            with open(os.path.join(root, "labels", split, f"{i:06d}.txt"), "w") as f:
                f.writelines(lines)
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("".join(n + "\n" for n in names))
    return str(root)


def write_darknet_data(root):
    """A .data file with relative list files beside a YOLO folder (as Darknet users keep them)."""
    for split, key in (("train", "train"), ("val", "valid")):
        files = sorted(os.listdir(os.path.join(root, "images", split)))
        with open(os.path.join(root, f"{split}.txt"), "w") as f:
            f.write("".join(f"images/{split}/{name}\n" for name in files))
    with open(os.path.join(root, "obj.names"), "w") as f:
        f.write("".join(n + "\n" for n in NAMES))
    path = os.path.join(root, "obj.data")
    with open(path, "w") as f:
        f.write(f"classes = {len(NAMES)}\ntrain = train.txt\nvalid = val.txt\nnames = obj.names\nbackup = backup/\n")
    return path


def write_dataset_yaml(root, folder_name):
    """An ultralytics-style YAML beside the folder: path relative to the YAML, names as a mapping."""
    path = os.path.join(root, "mine.yaml")
    with open(path, "w") as f:
        f.write(f"# my set\npath: {folder_name}  # root\ntrain: images/train\nval: images/val\ntest:\n\n"
                "names:\n" + "".join(f"  {i}: {n}\n" for i, n in enumerate(NAMES)))
    return path


def tree_digest(root):
    """Every name, mode and byte under ``root``."""
    h = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(folder, name)
            h.update(f"{os.path.relpath(path, root)}:{os.lstat(path).st_mode}\n".encode())
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()
