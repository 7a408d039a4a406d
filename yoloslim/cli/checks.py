"""The checks every command-line tool runs on its arguments before any work starts.

Ranges are checked by argparse ``type=`` helpers, so the message names the argument and
says what is allowed. Paths are checked for what the tool will do with them: inputs must be
readable files, outputs must be creatable without replacing a folder, writing under a file
or into a folder we may not write. Content checks (cfg, .data, .names) follow right after
parsing, still before any model is built. Nothing here imports torch: the checks take
milliseconds, and a refused command line costs little more than the tool's own imports.
"""
import argparse
import glob
import math
import os
import sys

from yoloslim.darknet.net import STRIDE, check_net_size
from yoloslim.data.files import cfg_classes, check_classes, check_data, check_names  # noqa: F401  (the CLIs' checks)
from yoloslim.errors import SlimError

MAX_IMG_SIZE = 4096  # beyond this a single forward pass needs tens of GB; a typo, not a wish


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line the way the toolkit reports bad files:
    one line, ``error: ...``, exit status 2. Abbreviations are off: ``--data`` must never be taken
    for ``--data-dir`` (or any longer option) by prefix matching."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def parser(description, prog=None, show_defaults=True, **kwargs):
    """A Parser; ``show_defaults=False`` for tools whose help texts state their defaults themselves."""
    if show_defaults:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
    return Parser(prog=prog, description=description, **kwargs)


# ----------------------------------------------------------------------------- numbers
def _parse_number(text, kind):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def _bounds_text(lo, hi, lo_open, hi_open, noun):
    if lo is not None and hi is not None:
        return f"{noun} in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{noun} {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{noun} {'<' if hi_open else '<='} {hi:g}"
    return noun


def number(kind=float, lo=None, hi=None, lo_open=False, hi_open=False):
    """An argparse ``type=`` for a finite int/float within bounds; the message says the range."""
    noun = "an integer" if kind is int else "a number"
    allowed = _bounds_text(lo, hi, lo_open, hi_open, noun)

    def parse(text):
        value = _parse_number(text, kind)
        below = lo is not None and (value <= lo if lo_open else value < lo)
        above = hi is not None and (value >= hi if hi_open else value > hi)
        if below or above:
            raise argparse.ArgumentTypeError(f"{text} is out of range; pass {allowed}")
        return value

    parse.__name__ = allowed  # argparse names the type in some messages
    return parse


positive_int = number(int, lo=1)
count = number(int, lo=0)
timed_runs = number(int, lo=0, hi=10000)                    # --latency-runs: 0 = skip
fraction = number(float, lo=0, hi=1)                        # thresholds: [0, 1]
open_fraction = number(float, lo=0, hi=1, lo_open=True, hi_open=True)
positive_float = number(float, lo=0, lo_open=True)
non_negative_float = number(float, lo=0)


def add_img_size(p, help_text="network input size"):
    """--img-size as every tool takes it: default the cfg's own [net] width, as deployed."""
    p.add_argument("--img-size", type=img_size, default=None,
                   help=f"{help_text}, rounded up to a multiple of {STRIDE} (default: the cfg's width)")


def add_device(p):
    """--device as every tool takes it: '' (default) is CUDA where available, else the CPU."""
    p.add_argument("--device", default="", help="'' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'")


def device(name):
    """The torch device for a --device value; a CUDA device where there is none is refused."""
    import torch
    if name == "cpu" or (not name and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SlimError(f"--device {name}: CUDA is not available here; use --device cpu")
    return torch.device(name if name.startswith("cuda") else f"cuda:{name}" if name.isdigit() else "cuda")


def round_img_size(size, what="--img-size"):
    """``size`` rounded up to a multiple of STRIDE, saying so when it changes (every tool alike)."""
    rounded = int(math.ceil(size / STRIDE) * STRIDE)
    if rounded != size:
        print(f"warning: {what} {size} is not a multiple of {STRIDE}; using {rounded}", file=sys.stderr)
    return rounded


def img_size(text):
    """argparse type for --img-size: a positive integer up to MAX_IMG_SIZE, rounded up to a multiple of 32."""
    value = _parse_number(text, int)
    if not 0 < value <= MAX_IMG_SIZE:
        raise argparse.ArgumentTypeError(f"{text} is out of range; pass a positive multiple of {STRIDE} "
                                         f"up to {MAX_IMG_SIZE} (e.g. 416)")
    return round_img_size(value)


# ----------------------------------------------------------------------------- paths
def _nonempty(text):
    if not str(text).strip():
        raise argparse.ArgumentTypeError("empty path")
    return os.fspath(text)


def input_file(text):
    """argparse type: an existing, readable regular file."""
    path = _nonempty(text)
    if not os.path.exists(path):
        raise argparse.ArgumentTypeError(f"{path}: file not found")
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{path}: is a folder; pass the file")
    if not os.path.isfile(path):   # a device or pipe: reading it could block or never end
        raise argparse.ArgumentTypeError(f"{path}: not a regular file; pass a file")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{path}: no permission to read it")
    return path


def image_source(text):
    """argparse type: an image file, a folder, or a glob pattern that matches something."""
    path = _nonempty(text)
    if any(c in path for c in "*?[") and glob.glob(path):
        return path
    if not os.path.exists(path):
        raise argparse.ArgumentTypeError(f"{path}: no such image, folder or matching pattern")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{path}: no permission to read it")
    return path


def _check_creatable(path):
    """The nearest existing folder above ``path`` must be a folder we may write into."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"{path}: {parent} is a file, so nothing can be created under it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{path}: no permission to write into {parent}; choose another location")


def output_file(text):
    """argparse type: a file path we can create (or atomically replace): not a folder, not under a file."""
    path = _nonempty(text)
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{path}: is a folder; name the file to write")
    _check_creatable(path)
    return path


def output_dir(text):
    """argparse type: a folder we can create or write into, not an existing file."""
    path = _nonempty(text)
    if os.path.exists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{path}: is an existing file, not a folder; choose another --out")
    if os.path.isdir(path):
        if not os.access(path, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"{path}: no permission to write into it; choose another --out")
    else:
        _check_creatable(path)
    return path


# ----------------------------------------------------------------------------- file contents
def check_cfg(path):
    """Parse a .cfg (syntax and [net] size) before any model is built; returns its module_defs."""
    from yoloslim.darknet.load import check_cfg as parse_and_check
    return parse_and_check(path)


def ensure(check, value, arg):
    """Apply an argparse ``type=`` check outside argparse (e.g. to a default), as a SlimError."""
    try:
        return check(value)
    except argparse.ArgumentTypeError as e:
        raise SlimError(f"argument {arg}: {e}") from None
