"""Property-based tests: no input file, however broken, escapes as anything but our own error.

A user who feeds a mangled .cfg or a truncated .weights must get a one-line SlimError that
names the file, never a torch/numpy traceback. Hypothesis generates thousands of such files.
"""
import os
import random
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from yoloslim.darknet.model import Darknet  # noqa: E402
from yoloslim.darknet.weights import read_weights_file  # noqa: E402
from yoloslim.errors import CfgError, SlimError, WeightsError  # noqa: E402
from yoloslim.darknet.cfg import parse_cfg_text  # noqa: E402

# no example database: it would write .hypothesis/ into the repository
FAST = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))

KNOWN_SECTIONS = ["net", "convolutional", "maxpool", "upsample", "route", "shortcut", "yolo", "dropout"]
ODD_SECTIONS = ["foo", "NET", "Convolutional", "conv", "", " ", "reorg", "region", "yolo ]"]
KEYS = ["filters", "size", "stride", "pad", "padding", "groups", "group_id", "batch_normalize",
        "activation", "layers", "from", "mask", "anchors", "classes", "num", "scale_x_y",
        "channels", "width", "height", "new_coords", "type"]
HUGE = [10 ** 9, 10 ** 18, 2 ** 63, 10 ** 30, -(10 ** 9)]


SMALL_INTS = [0, -1, 1, 2, 3, 255, 256, 1024] + HUGE
ODD_NUMBERS = ["1.5", ".5", "1e999", "-0", "+3", "0x10", "1_000", "nan", "inf", "-1e-9", "3."]
WORDS = ["leaky", "linear", "mish", "swish", "relu", "logistic", "abc", "", "1,,2", ",", "1, 2 ,3",
         "-1,8", "3,4,5", "10,14,23,27", "1 # comment", "0,1,2 ; x"]
CHARS = "abcxyz019-+.,=[]#; \t\u00e9\u4e2d\x00\ufeff"
HEADER_SHAPES = ["[{}]", "[{}]", "[{}]", "[{}", "{}]", " [{}] "]
STRAY = ["", "#", "; x", "=", "[", "]", "[]", "\x00", "\ufeff[net]", "key value", "= 3"]

# Generating whole files with nested hypothesis strategies costs ~70 ms an example; hypothesis
# drawing a seed and random.Random building the text from it is far cheaper, so thousands of
# files fit in seconds. The vocabulary below steers them towards the edge cases.


def odd_int(rng):
    return rng.randint(-3, 40) if rng.random() < 0.7 else rng.choice(SMALL_INTS)


def garbage(rng, n=12):
    return "".join(rng.choice(CHARS) for _ in range(rng.randint(0, n)))


def odd_number(rng):
    r = rng.random()
    if r < 0.6:
        return str(odd_int(rng))
    if r < 0.8:
        return repr(rng.uniform(-1e3, 1e3))
    return rng.choice(ODD_NUMBERS)


def odd_value(rng):
    r = rng.random()
    if r < 0.45:
        return odd_number(rng)
    if r < 0.7:
        return ",".join(odd_number(rng) for _ in range(rng.randint(0, 7)))
    if r < 0.9:
        return rng.choice(WORDS)
    return garbage(rng)


def key_value_line(rng):
    key = rng.choice(KEYS) if rng.random() < 0.9 else garbage(rng, 6)
    sep = rng.choice(["=", "=", "=", " = ", "==", ""])
    return f"{key}{sep}{odd_value(rng)}"


def header_line(rng):
    name = rng.choice(KNOWN_SECTIONS * 3 + ODD_SECTIONS) if rng.random() < 0.95 else garbage(rng, 8)
    return rng.choice(HEADER_SHAPES).format(name)


def stray_line(rng):
    return rng.choice(STRAY) if rng.random() < 0.5 else garbage(rng, 20)


def any_line(rng):
    r = rng.random()
    return key_value_line(rng) if r < 0.6 else header_line(rng) if r < 0.8 else stray_line(rng)


def random_cfg_text(rng):
    """Mostly a plausible [net] + sections structure, so many examples reach model building."""
    lines = ["[net]"] if rng.random() < 0.75 else []
    for _ in range(rng.randint(0, 8)):
        lines.append(header_line(rng))
        for _ in range(rng.randint(0, 6)):
            lines.append(key_value_line(rng) if rng.random() < 0.8 else stray_line(rng))
    return "\n".join(lines)


def build(text):
    """Parse then build: the whole path a cfg takes into the toolkit."""
    defs = parse_cfg_text(text, "fuzz.cfg")
    return Darknet(defs)


def assert_only_slim_errors(text):
    try:
        build(text)
    except SlimError as e:
        assert "\n" not in str(e).strip(), f"multi-line message: {e!r}"


@settings(max_examples=1500, **FAST)
@given(st.integers(0, 2 ** 64))
def test_random_cfg_text_raises_only_slim_errors(seed):
    assert_only_slim_errors(random_cfg_text(random.Random(seed)))


# ---------------------------------------------------------------- mutated real cfgs
def shrink(filters):
    return 18 if filters == 255 else max(1, filters // 16)


def small_tiny_cfg():
    """yolov3-tiny with 1/16 of the channels and one class: same topology, ~100x cheaper to build."""
    with open(os.path.join(ROOT, "cfg", "yolov3-tiny.cfg"), encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"filters=(\d+)", lambda m: f"filters={shrink(int(m.group(1)))}", text)
    return re.sub(r"classes=80", "classes=1", text)


SMALL_TINY = small_tiny_cfg()
SMALL_TINY_LINES = SMALL_TINY.splitlines()


def test_small_tiny_cfg_is_valid():
    model = build(SMALL_TINY)
    assert len(model.yolo_layers) == 2


def mutate_lines(lines, rng):
    """Delete, duplicate, swap, cut or insert lines, or change the first number on a line."""
    lines = list(lines)
    for _ in range(rng.randint(1, 5)):
        i = rng.randrange(len(lines))
        op = rng.choice(["delete", "duplicate", "number", "number", "number", "swap", "insert", "truncate"])
        if op == "delete" and len(lines) > 1:
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "number":
            lines[i] = re.sub(r"-?\d+", lambda m: str(odd_int(rng)), lines[i], count=1)
        elif op == "swap":
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "insert":
            lines.insert(i, any_line(rng))
        elif op == "truncate":
            lines[i] = lines[i][:rng.randrange(max(1, len(lines[i])))]
    return "\n".join(lines)


@settings(max_examples=500, **FAST)
@given(st.integers(0, 2 ** 64))
def test_mutated_tiny_cfg_raises_only_slim_errors(seed):
    assert_only_slim_errors(mutate_lines(SMALL_TINY_LINES, random.Random(seed)))


def with_value(section, line):
    """SMALL_TINY with ``key=value`` set in the first ``[section]`` (replacing the key if present)."""
    key = line.split("=")[0]
    lines = list(SMALL_TINY_LINES)
    at = lines.index(f"[{section}]")
    end = next((k for k in range(at + 1, len(lines)) if lines[k].startswith("[")), len(lines))
    body = [ln for ln in lines[at + 1:end] if ln.replace(" ", "").split("=")[0] != key]
    return "\n".join(lines[:at + 1] + [line] + body + lines[end:])


@pytest.mark.parametrize("section, line", [
    ("convolutional", "filters=1000000000"), ("convolutional", "filters=99999999999999999999999"),
    ("convolutional", "size=100000"), ("convolutional", "size=-3"), ("convolutional", "stride=0"),
    ("convolutional", "groups=0"), ("convolutional", "groups=-2"), ("convolutional", "activation=1,2"),
    ("convolutional", "filters=-16"), ("maxpool", "size=0"), ("maxpool", "stride=0"), ("maxpool", "stride=-2"),
    ("maxpool", "padding=-1"), ("upsample", "stride=0"), ("yolo", "scale_x_y=abc"), ("yolo", "classes=-4"),
    ("net", "channels=0"), ("net", "channels=-3"),
])
def test_absurd_values_are_cfg_errors_naming_the_layer(section, line):
    """Values that used to escape as torch/Python errors (or build a model that cannot run)."""
    with pytest.raises(CfgError, match=r"fuzz\.cfg:\d+ \[" + section + r"\]"):
        build(with_value(section, line))


# ---------------------------------------------------------------- .weights bytes
WEIGHTS_CFG = """[net]
channels=3
[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky
[convolutional]
filters=12
size=1
activation=linear
[yolo]
mask=0,1
anchors=4,5, 8,9
classes=1
num=2
"""


def small_model():
    torch.manual_seed(0)
    model = Darknet(parse_cfg_text(WEIGHTS_CFG, "weights-fuzz.cfg"))
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_var.uniform_(0.5, 1.5)  # a valid file has non-negative variances
    return model


VALID = small_model().darknet_weights_bytes()
NEED_FLOATS = small_model().darknet_float_count()


def header_size(blob):
    major, minor = np.frombuffer(blob[:8], dtype=np.int32)
    return 20 if int(major) * 10 + int(minor) >= 2 else 16


def int32(v):
    return np.array([v], dtype=np.int64).astype(np.int32).tobytes()


@st.composite
def weights_bytes(draw):
    kind = draw(st.sampled_from(["random", "truncate", "extend", "header", "both"]))
    if kind == "random":
        return draw(st.binary(max_size=400))
    blob = VALID
    if kind in ("truncate", "both"):
        blob = blob[:draw(st.integers(0, len(blob)))]
    if kind in ("extend", "both"):
        blob = blob + draw(st.binary(min_size=1, max_size=64))
    if kind == "header":
        field = draw(st.integers(0, 2))
        value = draw(st.one_of(st.integers(-5, 5), st.integers(-2 ** 31, 2 ** 31 - 1)))
        blob = blob[:4 * field] + int32(value) + blob[4 * field + 4:]
    return blob


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """One folder for the module (hypothesis refuses function-scoped fixtures)."""
    return tmp_path_factory.mktemp("fuzz")


def write_blob(folder, blob):
    path = os.path.join(folder, "fuzz.weights")
    with open(path, "wb") as f:
        f.write(blob)
    return path


@settings(max_examples=600, **FAST)
@given(weights_bytes())
def test_weights_files_load_exactly_or_raise_weights_error(work, blob):
    path = write_blob(work, blob)
    model = small_model()
    try:
        model.load_darknet_weights(path)
    except WeightsError as e:
        assert "fuzz.weights" in str(e)
        return
    assert len(blob) == header_size(blob) + 4 * NEED_FLOATS


def test_valid_weights_round_trip(work):
    path = write_blob(work, VALID)
    model = small_model().load_darknet_weights(path)
    assert model.darknet_weights_bytes() == VALID


@pytest.mark.parametrize("n", [16, 17, 19])
def test_header_cut_inside_the_seen_field_is_a_weights_error(work, n):
    """Version 0.2 promises an 8-byte 'seen' but the file stops before it ends."""
    path = write_blob(work, VALID[:n])
    with pytest.raises(WeightsError, match="fuzz.weights"):
        read_weights_file(path)


@settings(max_examples=200, **FAST)
@given(st.integers(0, len(VALID)))
def test_backbone_cutoff_accepts_longer_files_only(work, n):
    """With a cutoff the file may be longer than the backbone needs, never shorter."""
    path = write_blob(work, VALID[:n])
    model = small_model()
    need = model.darknet_float_count(cutoff=1)
    try:
        model.load_darknet_weights(path, cutoff=1)
    except WeightsError:
        return
    assert n >= 20 + 4 * need
