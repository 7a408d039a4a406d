"""A user's data set in any of three forms, read without writing a byte into it.

* a Darknet ``.data`` file (``classes``, ``train``, ``valid``, ``names``);
* a dataset YAML as the ultralytics tools write it (``path``, ``train``, ``val``, ``names`` as a
  list or a ``{id: name}`` mapping; ``train``/``val`` are folders, list files or lists of them,
  under ``path``, which is taken relative to the YAML's folder, else the current one);
* a folder in YOLO layout: ``images/{train,val}`` and ``labels/{train,val}``, class names in a
  ``*.names`` or ``classes.txt`` file beside them (else counted from the labels, with a warning).

Each becomes one ``DataSet``: absolute image paths per split, the class names, and where they
came from. Labels are found the usual way (``.../images/...`` -> ``.../labels/...``, extension
``.txt``). What the trainer needs on disk (a ``.data`` file, its lists and names) is written by
``write_darknet_data`` into a folder the caller owns, never beside the user's files.

The YAML reader takes the simple subset these files use (top-level ``key: value``, flow lists
``[a, b]`` and mappings ``{0: a}``, block lists and mappings one level deep, comments, quotes,
and ``|``/``>`` blocks, which are skipped) so the toolkit needs no YAML library; anything else is
refused with the line named.
"""
import glob
import os
import sys
from dataclasses import dataclass, field

from yoloslim.data.datasets import label_path_for, parse_label_file, read_image_list
from yoloslim.errors import DataError
from yoloslim.io import atomic_write
from yoloslim.darknet.cfg import load_classes, parse_data_cfg

YAML_EXTS = (".yaml", ".yml")
NAMES_FILES = ("*.names", "classes.txt")


@dataclass
class DataSet:
    """A data set as the pipeline sees it, whatever form the user gave it in."""
    train: list                 # absolute image paths
    val: list
    names: list                 # class names, index = class id
    source: str                 # the path the user passed
    form: str                   # "Darknet .data", "dataset YAML" or "YOLO folder"
    root: str = None            # the folder the data lives in (nothing is ever written under it)
    notes: list = field(default_factory=list)   # what was inferred rather than read

    @property
    def nc(self):
        return len(self.names)


def load_dataset(path):
    """The DataSet described by ``path`` (a .data file, a dataset YAML or a YOLO folder)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        spec = from_folder(path)
    elif not os.path.isfile(path):
        raise DataError(f"{path}: no such file or folder; pass a .data file, a dataset YAML or a YOLO data folder")
    elif path.lower().endswith(YAML_EXTS):
        spec = from_yaml(path)
    else:
        spec = from_darknet_data(path)
    check_labels(spec)
    return spec


# ----------------------------------------------------------------------------- the three forms
def from_darknet_data(path):
    try:
        options = parse_data_cfg(path)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file; pass a .data file, a dataset YAML or a YOLO folder") from None
    for key in ("train", "valid"):
        if not options.get(key):
            raise DataError(f"{path}: no '{key}=' line; add the image list path")
    notes = []
    if options.get("names"):
        names = load_classes(options["names"])
        if "classes" in options and options["classes"] != len(names):
            raise DataError(f"{path}: classes={options['classes']} but {options['names']} holds {len(names)} names; "
                            f"make them agree")
    elif options.get("classes"):
        names = [f"class{i}" for i in range(options["classes"])]
        notes.append(f"no names= in {path}: classes named class0..class{len(names) - 1}")
    else:
        raise DataError(f"{path}: neither classes= nor names=; add 'classes=N' and 'names=FILE'")
    root = os.path.dirname(os.path.abspath(path))
    return DataSet(absolute(read_image_list(options["train"])), absolute(read_image_list(options["valid"])),
                   names, path, "Darknet .data", root, notes)


def from_yaml(path):
    doc = parse_simple_yaml(path)
    for key in ("train", "val", "names"):
        if key not in doc:
            raise DataError(f"{path}: no '{key}:' entry; a dataset YAML needs train, val and names")
    here = os.path.dirname(os.path.abspath(path))
    root = doc.get("path") or here
    if not os.path.isabs(root):
        beside = os.path.join(here, root)
        root = beside if os.path.isdir(beside) or not os.path.isdir(root) else os.path.abspath(root)
    if not os.path.isdir(root):
        raise DataError(f"{path}: path: {doc.get('path')} is not a folder; fix the path: entry")
    names = yaml_names(doc["names"], path)
    if "nc" in doc and str(doc["nc"]) != str(len(names)):
        raise DataError(f"{path}: nc: {doc['nc']} but {len(names)} names; make them agree")
    train = [img for entry in as_list(doc["train"]) for img in split_images(root, entry, path, "train")]
    val = [img for entry in as_list(doc["val"]) for img in split_images(root, entry, path, "val")]
    return DataSet(train, val, names, path, "dataset YAML", root)


def from_folder(path):
    splits = {}
    for split in ("train", "val"):
        images = os.path.join(path, "images", split)
        if not os.path.isdir(images):
            raise DataError(f"{path}: no images/{split} folder; a YOLO data folder holds images/train, images/val "
                            f"and labels/train, labels/val (or pass a .data file or a dataset YAML)")
        if not os.path.isdir(os.path.join(path, "labels", split)):
            raise DataError(f"{path}: no labels/{split} folder beside images/{split}; add the label files")
        splits[split] = absolute(read_image_list(images))
    notes = []
    found = sorted({f for pattern in NAMES_FILES for f in glob.glob(os.path.join(path, pattern))})
    if len({tuple(load_classes(f)) for f in found}) > 1:
        raise DataError(f"{path}: class-name files that disagree ({', '.join(map(os.path.basename, found))}); "
                        f"keep one, or pass a .data file naming it")
    if found:
        names = load_classes(found[0])
        if not names:
            raise DataError(f"{found[0]}: holds no class names; write one name per line")
    else:
        highest = max((int(row[0]) for img in splits["train"] + splits["val"]
                       for row in parse_label_file(label_path_for(img))), default=-1)
        if highest < 0:
            raise DataError(f"{path}: no labelled boxes under labels/; label the images first")
        names = [f"class{i}" for i in range(highest + 1)]
        notes.append(f"no .names or classes.txt in {path}: {len(names)} classes counted from the labels "
                     f"(highest id {highest}); add a classes.txt if a class has no box yet")
        print(f"warning: {notes[-1]}", file=sys.stderr)
    return DataSet(splits["train"], splits["val"], names, path, "YOLO folder", os.path.abspath(path), notes)


def absolute(files):
    return [os.path.abspath(f) for f in files]


def split_images(root, entry, path, key):
    """Images of one YAML train/val entry: a folder (searched recursively) or a list file."""
    target = entry if os.path.isabs(entry) else os.path.join(root, entry)
    if not os.path.exists(target):
        raise DataError(f"{path}: {key}: {entry} not found under {root}; fix the entry or path:")
    return absolute(read_image_list(target))


def yaml_names(value, path):
    if isinstance(value, list):
        names = [str(v) for v in value]
    elif isinstance(value, dict):
        try:
            ids = sorted(int(k) for k in value)
        except ValueError:
            raise DataError(f"{path}: names: keys must be class ids 0..n-1") from None
        if ids != list(range(len(ids))):
            raise DataError(f"{path}: names: ids {ids} are not 0..{len(ids) - 1}; number the classes from 0")
        names = [str(value[k]) for k in sorted(value, key=int)]
    else:
        raise DataError(f"{path}: names: must be a list or an id: name mapping")
    if not names:
        raise DataError(f"{path}: names: is empty; list the class names")
    return names


def as_list(value):
    return value if isinstance(value, list) else [value]


def check_labels(spec):
    """Every label line parses and names a class the data set has (fails now, not mid-epoch)."""
    for split, files in (("train", spec.train), ("val", spec.val)):
        if not files:
            raise DataError(f"{spec.source}: the {split} split holds no images")
        for img in files:
            parse_label_file(label_path_for(img), spec.nc)


def box_count(files):
    return sum(len(parse_label_file(label_path_for(f))) for f in files)


def box_sizes(files, img_size):
    """(n, 2) width/height in pixels of every labelled box, at the network input size."""
    import numpy as np
    labels = [parse_label_file(label_path_for(f)) for f in files]
    sizes = [b[:, 3:5] - b[:, 1:3] for b in labels if len(b)]
    return np.concatenate(sizes) * img_size if sizes else np.zeros((0, 2))


# ----------------------------------------------------------------------------- what the trainer reads
def write_darknet_data(spec, folder, stem="data"):
    """Write ``stem.data`` + train/val lists + names into ``folder`` (ours); returns the .data path."""
    os.makedirs(folder, exist_ok=True)
    files = {"train": spec.train, "valid": spec.val}
    paths = {key: os.path.abspath(os.path.join(folder, f"{key}.txt")) for key in files}
    for key, images in files.items():
        write_if_changed(paths[key], "".join(f + "\n" for f in images))
    names = os.path.abspath(os.path.join(folder, f"{stem}.names"))
    write_if_changed(names, "".join(n + "\n" for n in spec.names))
    data = os.path.join(folder, f"{stem}.data")
    write_if_changed(data, f"classes={spec.nc}\ntrain={paths['train']}\nvalid={paths['valid']}\nnames={names}\n")
    return data


def write_if_changed(path, text):
    """Leave an identical file alone: the training cache keys on content, and so do we."""
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
    except OSError:
        pass
    with atomic_write(path, "w") as f:
        f.write(text)


def describe(spec):
    """One line per fact of the data set, for the console and the report."""
    return [f"source: {spec.source} ({spec.form})",
            f"classes: {spec.nc} ({', '.join(spec.names[:10])}{', ...' if spec.nc > 10 else ''})",
            f"images: {len(spec.train)} train ({box_count(spec.train)} boxes), "
            f"{len(spec.val)} val ({box_count(spec.val)} boxes)"] + spec.notes


# ----------------------------------------------------------------------------- the YAML subset
def parse_simple_yaml(path):
    """The top-level mapping of a dataset YAML (see the module docstring for the subset)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file; pass a dataset YAML") from None
    doc, key, block, skip_indent, block_indent = {}, None, None, None, None
    for lineno, raw in enumerate(lines, 1):
        text = strip_comment(raw).rstrip()
        if not text.strip() or text.strip() == "---":
            continue
        indent = len(text) - len(text.lstrip(" "))
        if skip_indent is not None and indent > skip_indent:
            continue                                   # inside a | or > block: not data-set structure
        skip_indent = None
        if "\t" in raw[:indent + 1]:
            raise DataError(f"{path}:{lineno}: a tab in the indentation; YAML indents with spaces")
        body = text.strip()
        if indent == 0:
            key, value = split_key(body, path, lineno)
            block = block_indent = None
            if value in ("|", ">", "|-", ">-", "|+", ">+"):
                skip_indent, doc[key] = 0, None
            elif value == "":
                doc[key] = None
            else:
                doc[key] = parse_scalar_or_flow(value, path, lineno)
            continue
        if key is None or doc.get(key) is not None and block is None or indent != (block_indent or indent):
            raise DataError(f"{path}:{lineno}: unexpected indentation; one level under a top-level key is read")
        block_indent = indent
        if body.startswith("- ") or body == "-":
            if block not in (None, "list"):
                raise DataError(f"{path}:{lineno}: a list item inside a mapping; use one form for {key}:")
            block = "list"
            doc[key] = (doc[key] or []) + [parse_scalar_or_flow(body[1:].strip(), path, lineno)]
        else:
            if block not in (None, "map"):
                raise DataError(f"{path}:{lineno}: a mapping entry inside a list; use one form for {key}:")
            block = "map"
            sub, value = split_key(body, path, lineno)
            if value in ("", "|", ">"):
                raise DataError(f"{path}:{lineno}: nesting deeper than one level is not supported in {key}:")
            doc[key] = {**(doc[key] or {}), sub: parse_scalar_or_flow(value, path, lineno)}
    return doc


def strip_comment(line):
    """``line`` without a trailing '# comment' (a '#' inside quotes is kept)."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def split_key(body, path, lineno):
    key, sep, value = body.partition(":")
    if not sep or not key.strip() or (value and not value.startswith(" ")):
        raise DataError(f"{path}:{lineno}: expected 'key: value', got {body!r}")
    return unquote(key.strip()), value.strip()


def unquote(text):
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def parse_scalar_or_flow(value, path, lineno):
    if value.startswith(("&", "*", "!")):
        raise DataError(f"{path}:{lineno}: YAML anchors, aliases and tags are not supported; write the value out")
    if value.startswith("["):
        if not value.endswith("]"):
            raise DataError(f"{path}:{lineno}: a [list] must close on the same line")
        return [unquote(v.strip()) for v in split_flow(value[1:-1])]
    if value.startswith("{"):
        if not value.endswith("}"):
            raise DataError(f"{path}:{lineno}: a {{mapping}} must close on the same line")
        pairs = [split_key(v.strip().replace(":", ": ", 1) if ": " not in v else v.strip(), path, lineno)
                 for v in split_flow(value[1:-1])]
        return {k: unquote(v) for k, v in pairs}
    return unquote(value)


def split_flow(text):
    """Items of a one-line flow collection, commas inside quotes kept."""
    items, current, quote = [], "", None
    for c in text:
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == ",":
            items.append(current)
            current = ""
            continue
        current += c
    items.append(current)
    return [i for i in items if i.strip()]


def data_source(text):
    """argparse type for --data: an existing, readable file or folder (its form is read later)."""
    import argparse
    path = os.fspath(text)
    if not path.strip():
        raise argparse.ArgumentTypeError("empty path")
    if not os.path.exists(path):
        raise argparse.ArgumentTypeError(f"{path}: not found; pass a .data file, a dataset YAML or a YOLO data folder")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{path}: no permission to read it")
    return path
