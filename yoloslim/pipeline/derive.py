"""A base cfg adapted to a data set: its class count, the head filters that follow, k-means anchors.

Shared by ``derive_cfg.py`` (the command) and ``slim.py`` (which derives the cfg it trains).
"""
from dataclasses import dataclass

from yoloslim.data.anchors import kmeans_anchors
from yoloslim.errors import CfgError, DataError
from yoloslim.darknet.cfg import parse_model_cfg
from yoloslim.darknet.kinds import kind_of, layer_strides
from yoloslim.train.transfer import cfg_for_data


@dataclass
class DerivedCfg:
    defs: list          # [net] + layers, ready for write_model_cfg
    classes: int
    anchors: list       # (w, h) pairs in pixels at img_size; the base cfg's when kept
    kmeans: bool        # True when the anchors came from k-means on the data's boxes
    img_size: int


def heads(defs):
    """The cfg's detection heads ([yolo], [region] sections), as the kind table knows them."""
    return [m for m in defs[1:] if kind_of(m).is_head]


def anchor_count(defs, path):
    """Anchors the cfg's heads use together (each uses its mask's share)."""
    found = heads(defs)
    if not found:
        raise CfgError(f"{path}: has no [yolo] or [region] head, so there is no class count or anchor to derive")
    return sum(len(kind_of(m).anchors(m)) for m in found)


def derive_for_data(src_cfg, spec, img_size, keep_anchors=False):
    """``src_cfg`` for ``spec`` (a yoloslim.data.userdata.DataSet) at ``img_size``: classes, head filters,
    [net] size, and k-means anchors on the training boxes unless ``keep_anchors``."""
    from yoloslim.data.userdata import box_sizes
    base = parse_model_cfg(src_cfg)
    k = anchor_count(base, src_cfg)
    if keep_anchors:
        defs, anchors = scaled_anchors(src_cfg, base, spec.nc, img_size)
        return DerivedCfg(defs, spec.nc, anchors, False, img_size)
    sizes = box_sizes(spec.train, img_size)
    if len(sizes) < k:
        raise DataError(f"{spec.source}: {len(sizes)} labelled boxes in the train split, too few for the "
                        f"{k} anchors of {src_cfg}; label more images")
    anchors = [tuple(float(v) for v in wh) for wh in kmeans_anchors(sizes, k)]
    return DerivedCfg(cfg_for_data(src_cfg, spec.nc, anchors, img_size), spec.nc, anchors, True, img_size)


def scaled_anchors(src_cfg, base, nc, img_size):
    """(defs, anchors in pixels at ``img_size``) with the base cfg's anchors resized from its [net]
    width to ``img_size``, so trained heads predict the same boxes relative to the image: a
    [yolo]'s pixel anchors scale (Darknet divides them by the network width), a [region]'s grid
    anchors stay (``Kind.resized_anchors``)."""
    scale = img_size / float(base[0].get("width", 416))
    defs = cfg_for_data(src_cfg, nc, None, img_size)
    for m in heads(defs):
        m["anchors"] = kind_of(m).resized_anchors(m, scale)
    first = heads(defs)[0]
    stride = layer_strides(defs[1:])[defs[1:].index(first)]
    return defs, kind_of(first).pixel_anchors(first, stride)


def anchors_text(anchors):
    return ", ".join(f"{w:.0f}x{h:.0f}" for w, h in anchors)
