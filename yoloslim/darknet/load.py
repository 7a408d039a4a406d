"""One way to get a model: a cfg with optional weights, or a checkpoint of ours alone."""
import os

from yoloslim.darknet.cfg import parse_cfg_text, parse_model_cfg
from yoloslim.darknet.net import check_net_size
from yoloslim.darknet.model import Darknet
from yoloslim.darknet.weights import load_checkpoint
from yoloslim.errors import WeightsError
from yoloslim.io import is_torch_file


def check_cfg(path):
    """Parse a .cfg (syntax and [net] size) before any model is built; returns its module_defs."""
    return check_net_size(parse_model_cfg(path), path)


def net_width(cfg=None, weights=None):
    """The [net] width of ``cfg``, or of the cfg inside a checkpoint of ours: the size it was made for."""
    if cfg:
        defs = check_cfg(os.fspath(cfg))
    elif weights and is_torch_file(weights):
        ckpt = load_checkpoint(weights)
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("cfg"), str):
            raise WeightsError(f"{weights}: has no cfg inside; pass --cfg with it")
        defs = check_net_size(parse_cfg_text(ckpt["cfg"], weights), weights)
    else:
        raise WeightsError(f"{weights}: a Darknet weights file needs its --cfg (only our checkpoints carry one)")
    return int(defs[0].get("width", 416))


def load_any(cfg=None, weights=None, img_size=None, cutoff=None, reader=None):
    """The model every command line loads: ``cfg`` (+ optional ``weights``), or the cfg carried
    inside a checkpoint of ours when ``cfg`` is not given."""
    if cfg:
        return load_model(cfg, weights, img_size, cutoff, reader)
    if weights and is_torch_file(weights):
        return model_from_checkpoint(weights, img_size)
    if not weights:
        raise WeightsError("no model given: pass --cfg (with optional --weights), or --weights with a checkpoint of ours")
    raise WeightsError(f"{weights}: a Darknet weights file needs its --cfg (only our checkpoints carry one)")


def load_model(cfg, weights=None, img_size=None, cutoff=None, reader=None, defs=None):
    """Darknet model from a cfg plus an optional Darknet weights file or checkpoint of ours;
    ``reader`` as in Darknet.load_darknet_weights. ``defs``: the cfg already parsed (by the
    command line's checks), so a run parses its cfg once."""
    if isinstance(cfg, (str, os.PathLike)):
        path = os.fspath(cfg)
        defs = defs if defs is not None else parse_model_cfg(path)
        if img_size is None:
            check_net_size(defs, path)   # width=0 must not reach PyTorch
        model = Darknet(defs, img_size, path=path)
    else:
        model = Darknet(cfg, img_size)
    if weights:
        load_weights(model, weights, cutoff, reader)
    return model


def load_weights(model, path, cutoff=None, reader=None):
    """Load Darknet weights or our checkpoint into ``model``; the format is read from the file's
    content, not its name (convert.py writes .pth/.ckpt as well as .pt)."""
    if is_torch_file(path):
        model.load_checkpoint_state(load_checkpoint(path), path)
    else:
        model.load_darknet_weights(path, cutoff, reader)
    return model


def model_from_checkpoint(path, img_size=None):
    """Rebuild a model from a checkpoint of ours alone: the cfg text travels inside it."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("cfg"), str):
        raise WeightsError(f"{path}: has no cfg inside; pass --cfg with it")
    defs = parse_cfg_text(ckpt["cfg"], path)
    if img_size is None:
        check_net_size(defs, path)
    model = Darknet(defs, img_size)
    return model.load_checkpoint_state(ckpt, path)
