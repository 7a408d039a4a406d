"""A data set's files as every tool checks them before any model exists: the .data file and its
image lists, the .names file, and the class count they must share with the model (no torch here)."""
import os

from yoloslim.errors import DataError


def cfg_classes(module_defs):
    """The class count of the cfg's first head ([yolo] or [region], as the kind table says;
    Darknet's default 20 when absent), or None without a head."""
    from yoloslim.darknet.kinds import KINDS   # the defs passed the parser, which imported it (and torch)
    for section in module_defs:
        kind = KINDS.get(section["type"])
        if kind is not None and kind.is_head:
            return kind.classes(section)
    return None


def _text_file(read, path, kind):
    """``read(path)``, with a file that is not UTF-8 text reported as such instead of a traceback."""
    try:
        return read(path)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file; pass the {kind}") from None


def check_names(path):
    """Class names of a .names file; an empty one is an error, not 'no names'."""
    from yoloslim.darknet.cfg import load_classes
    names = _text_file(load_classes, path, ".names file (one class name per line)")
    if not names:
        raise DataError(f"{path}: holds no class names; write one name per line (or leave the option out)")
    return names


def check_data(path, lists=("valid",)):
    """A .data file whose ``lists`` (train/valid) exist and whose names= (if any) is non-empty."""
    from yoloslim.darknet.cfg import parse_data_cfg
    data = _text_file(parse_data_cfg, path, ".data file (key=value lines)")
    for key in lists:
        if not data.get(key):
            raise DataError(f"{path}: no '{key}=' line; add the image list path")
        if not os.path.exists(data[key]):
            raise DataError(f"{path}: {key}={data[key]} not found; fix the path in the .data file")
    if data.get("names"):
        check_names(data["names"])
    return data


def check_classes(nc, data, data_path, names=None, names_path=None):
    """The .data's classes= and the .names count (``names``, else the .data's names= file) must
    agree with the model's ``nc``."""
    if names is None and data and data.get("names"):
        names, names_path = check_names(data["names"]), data["names"]
    declared = data.get("classes") if data else None
    if declared is not None and declared != nc:
        raise DataError(f"{data_path}: classes={declared} but the model's [yolo] layers have classes={nc}; "
                        f"use the .data made for this model")
    if names is not None and len(names) != nc:
        raise DataError(f"{names_path}: {len(names)} names but the model has {nc} classes; pass its .names")
