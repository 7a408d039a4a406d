"""A catalogue of bad inputs: each one must fail with our own error, in one line that names the file.

Users meet these every day (a typo in a cfg, weights of another cfg, a truncated download, a
pruned cfg with the original weights). The toolkit must answer with a SlimError subclass whose
message says which file, which line or layer, and what to do, and the command-line tools must
print exactly that line (``error: ...``) and exit 2, never a traceback.
"""
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from yoloslim.darknet.model import Darknet  # noqa: E402
from yoloslim.darknet.weights import load_checkpoint, save_checkpoint  # noqa: E402
from yoloslim.darknet.load import load_model  # noqa: E402
from yoloslim.errors import CfgError, DataError, SlimError, WeightsError  # noqa: E402
from yoloslim.darknet.cfg import parse_model_cfg  # noqa: E402
from conftest import HANG_LIMIT

# A small but complete network: conv+BN, maxpool, a residual shortcut, a route, upsample, one head.
SMALL_CFG = """[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[shortcut]
from=-2
activation=linear

[route]
layers=-1,1

[upsample]
stride=1

[convolutional]
size=1
stride=1
pad=1
filters=18
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=1
num=3
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def edit(text, old, new):
    assert text.count(old) >= 1, old
    return text.replace(old, new, 1)


def expect(error_type, fn, *patterns):
    """Run ``fn``; it must raise ``error_type`` with a one-line message matching every pattern."""
    with pytest.raises(SlimError) as info:
        fn()
    assert isinstance(info.value, error_type), f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert "\n" not in message.strip(), message
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in {message!r}"
    return message


def build(path):
    return lambda: Darknet(path)


def small_model(tmp_path, cfg_text=SMALL_CFG, name="small.cfg"):
    torch.manual_seed(0)
    model = Darknet(write(tmp_path, name, cfg_text))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
    return model


def test_small_cfg_is_valid(tmp_path):
    model = small_model(tmp_path)
    model.eval()
    io, _ = model(torch.zeros(1, 3, 64, 64))
    assert io.shape[-1] == 6


# ----------------------------------------------------------------------------- cfg text
@pytest.mark.parametrize("old, new, line, words", [
    ("[maxpool]\nsize=2", "[maxpool]\nsize 2", 15, "key=value"),                # no '='
    ("[net]\nwidth=64", "width=64\n[net]", 1, r"before the first \[section\]"),  # key before any section
    ("[maxpool]", "[maxpool", 14, "malformed section header"),                   # bad header
    ("[maxpool]", "[foo]", 14, r"\[foo\].*not supported"),                       # unknown section
    ("filters=8\nsize=3\nstride=1\npad=1\nactivation=leaky\n\n[maxpool]",
     "filters=abc\nsize=3\nstride=1\npad=1\nactivation=leaky\n\n[maxpool]", 6, r"filters='abc' must be an integer"),
    ("size=3", "size=1.5", 6, r"size=1\.5 must be an integer"),
    ("filters=8\nsize=3\nstride=1\npad=1\nactivation=leaky\n\n[maxpool]",
     "size=3\nstride=1\npad=1\nactivation=leaky\n\n[maxpool]", 6, r"missing 'filters='"),
])
def test_malformed_cfg_names_file_and_line(tmp_path, old, new, line, words):
    path = write(tmp_path, "bad.cfg", edit(SMALL_CFG, old, new))
    expect(CfgError, build(path), re.escape(path) + f":{line}\\b", words)


@pytest.mark.parametrize("old, new, words", [
    ("layers=-1,1", "layers=-1,40", r"layers=40 points to layer 40"),          # absolute, past the end
    ("layers=-1,1", "layers=-9,1", r"layers=-9 points to layer -5"),           # relative, before layer 0
    ("layers=-1,1", "layers=-1,4", r"layers=4 points to layer 4"),             # itself: not an earlier layer
    ("from=-2", "from=-7", r"from=-7 points to layer -4"),                      # relative shortcut
    ("from=-2", "from=12", r"from=12 points to layer 12"),                      # absolute shortcut
])
def test_routes_and_shortcuts_outside_the_network(tmp_path, old, new, words):
    path = write(tmp_path, "links.cfg", edit(SMALL_CFG, old, new))
    kind = "route" if "layers" in old else "shortcut"
    expect(CfgError, build(path), re.escape(path) + r":\d+ \[" + kind + r"\]", words)


@pytest.mark.parametrize("old, new", [
    ("classes=1", "classes=2"),           # 3 * (2 + 5) = 21, not 18
    ("mask=0,1,2", "mask=0,1"),           # 2 * (1 + 5) = 12, not 18
    ("filters=18", "filters=255"),        # the COCO head left in a 1-class cfg
])
def test_yolo_filters_inconsistent_with_classes_and_mask(tmp_path, old, new):
    path = write(tmp_path, "head.cfg", edit(SMALL_CFG, old, new))
    expect(CfgError, build(path), re.escape(path) + r":\d+ \[yolo\]", r"set filters to")


def test_yolo_mask_selecting_missing_anchors(tmp_path):
    path = write(tmp_path, "mask.cfg", edit(SMALL_CFG, "mask=0,1,2", "mask=1,2,3"))
    expect(CfgError, build(path), re.escape(path), r"mask=.*anchors that do not exist")


@pytest.mark.parametrize("old, new, words", [
    ("num=3", "", r"write num=3 .*explicitly"),                                           # Darknet: 1, OpenCV: none
    ("num=3", "num=2", r"num=2 but anchors= holds 3 pairs"),                              # more anchors than num
    ("num=3", "num=4", r"num=4 but anchors= holds 3 pairs"),                              # fewer anchors than num
    ("mask=0,1,2", "", r"write mask= explicitly"),
    ("mask=0,1,2", "mask=0,1,-1", r"mask=0,1,-1 selects anchors that do not exist \(-1 is not in 0\.\.2"),
])
def test_yolo_num_anchors_and_mask_as_darknet_and_opencv_need_them(tmp_path, old, new, words):
    path = write(tmp_path, "num.cfg", edit(SMALL_CFG, old, new))
    expect(CfgError, lambda: parse_model_cfg(path), re.escape(path) + r":\d+ \[yolo\]", words)


def test_yolo_mask_beyond_num_refused_by_the_prune_script(tmp_path):
    """cspx-p7-mish's shape: num=16 with 20 anchor pairs and masks up to 19. Refused at parse time,
    naming the line, before any model is built or folder claimed (OpenCV could not load the output)."""
    anchors = ", ".join(f"{4 * k},{4 * k + 2}" for k in range(1, 21))
    p7 = edit(edit(SMALL_CFG, "anchors=10,14, 23,27, 37,58", f"anchors={anchors}"), "mask=0,1,2", "mask=17,18,19")
    beyond = edit(SMALL_CFG, "mask=0,1,2", "mask=1,2,3")
    out = tmp_path / "out"
    for name, text, words in (("p7.cfg", edit(p7, "num=3", "num=16"), r"num=16 but anchors= holds 20 pairs"),
                              ("beyond.cfg", beyond, r"mask=1,2,3 selects anchors that do not exist \(3 is not")):
        path = write(tmp_path, name, text)
        done = run_cli("shortcut_prune.py", "--cfg", path, "--weights", path, "--out", out, "--latency-runs", "0")
        assert_one_line_error(done, re.escape(path) + r":\d+ \[yolo\]", words)
    assert not out.exists()


BACKBONE = SMALL_CFG.split("[convolutional]\nsize=1")[0]   # everything before the detection head


@pytest.mark.parametrize("tail, section", [
    ("[avgpool]\n\n[softmax]\ngroups=1\n\n[cost]\ntype=sse\n", "softmax"),   # darknet19-style classifier
    ("[connected]\noutput=10\nactivation=linear\n\n[softmax]\n", "connected"),
    ("[avgpool]\n\n[cost]\ntype=sse\n", "cost"),                                 # type= is valid there
])
def test_classifier_cfg_refused_by_its_sections(tmp_path, tail, section):
    path = write(tmp_path, "classifier.cfg", BACKBONE + tail)
    expect(CfgError, lambda: parse_model_cfg(path), re.escape(path) + r":\d+ \[" + section + r"\]",
           r"\[" + section + r"\] is not supported \(classifier cfg\)", "detection cfg")


def test_cfg_without_a_yolo_head_and_type_elsewhere(tmp_path):
    path = write(tmp_path, "headless.cfg", BACKBONE + "[avgpool]\n")
    expect(CfgError, build(path), re.escape(path), r"has no \[yolo\] or \[region\] head")
    done = run_cli("normal_prune.py", "--cfg", path, "--weights", path, "--out", tmp_path / "out")
    assert_one_line_error(done, re.escape(path), r"has no \[yolo\] or \[region\] head")
    path = write(tmp_path, "typed.cfg", edit(SMALL_CFG, "[maxpool]\nsize=2", "[maxpool]\ntype=max\nsize=2"))
    expect(CfgError, lambda: parse_model_cfg(path), re.escape(path) + r":15\b", "'type' is not a Darknet key")


def test_cfg_that_is_not_text_or_missing(tmp_path):
    weights = write(tmp_path, "model.weights", bytes(range(256)) * 8)
    expect(CfgError, lambda: parse_model_cfg(weights), re.escape(weights), "not a text file")
    expect(CfgError, lambda: parse_model_cfg(str(tmp_path / "nope.cfg")), "nope.cfg", "not found")


# ----------------------------------------------------------------------------- .weights
@pytest.fixture
def small_weights(tmp_path):
    """(cfg path, valid .weights bytes) of the small network."""
    model = small_model(tmp_path)
    return str(tmp_path / "small.cfg"), model.darknet_weights_bytes()


def load_into_small(cfg, weights_path):
    return lambda: load_model(cfg, weights_path)


def test_valid_small_weights_load(tmp_path, small_weights):
    cfg, blob = small_weights
    model = load_model(cfg, write(tmp_path, "ok.weights", blob))
    assert model.darknet_weights_bytes() == blob


@pytest.mark.parametrize("change, words", [
    (lambda b: b[:-4], r"too short: it stops inside layer \d+"),
    (lambda b: b[:20 + (len(b) - 20) // 8 * 4], r"too short"),
    (lambda b: b + b"\0" * 4, r"too long"),
    (lambda b: b + b"\0" * 3, r"not a whole number of float32s"),
    (lambda b: b[:10], r"too short for a Darknet header"),
    (lambda b: np.int32(-7).tobytes() + b[4:], r"header version .* is not Darknet's"),
    (lambda b: np.int32(2 ** 30).tobytes() + b[4:], r"header version .* is not Darknet's"),
])
def test_bad_weights_files(tmp_path, small_weights, change, words):
    cfg, blob = small_weights
    path = write(tmp_path, "bad.weights", change(blob))
    expect(WeightsError, load_into_small(cfg, path), re.escape(path), words)


def test_pruned_cfg_with_the_original_weights(tmp_path, small_weights):
    """A cfg with one conv's filters halved, given the unpruned .weights: refused, not garbled."""
    cfg, blob = small_weights
    original = write(tmp_path, "original.weights", blob)
    pruned = edit(edit(SMALL_CFG, "filters=8", "filters=4"), "filters=8", "filters=4")  # shortcut widths stay equal
    pruned_cfg = write(tmp_path, "pruned.cfg", pruned)
    expect(WeightsError, load_into_small(pruned_cfg, original), re.escape(original), "pruned cfg needs its own")


def test_negative_bn_variance_means_another_cfg(tmp_path, small_weights):
    """Same float count, different layout: the BN variances land on conv weights and go negative."""
    cfg, blob = small_weights
    floats = np.frombuffer(blob[20:], "<f4").copy()
    floats[24:32] = -1.0  # the first BN's running variances (after 8 beta, 8 gamma, 8 mean)
    path = write(tmp_path, "shuffled.weights", blob[:20] + floats.tobytes())
    expect(WeightsError, load_into_small(cfg, path), re.escape(path), r"layer 0 has negative BN variances")


# ----------------------------------------------------------------------------- .pt
def test_checkpoint_from_another_cfg(tmp_path):
    model = small_model(tmp_path)
    path = str(tmp_path / "small.pt")
    save_checkpoint(model.checkpoint(), path)
    other = write(tmp_path, "other.cfg", edit(edit(SMALL_CFG, "filters=8", "filters=4"), "filters=8", "filters=4"))
    expect(WeightsError, lambda: load_model(other, path), re.escape(path), "saved from another cfg")


def test_checkpoint_with_non_tensor_values(tmp_path):
    model = small_model(tmp_path)
    state = {k: v.tolist() for k, v in model.state_dict().items()}
    path = str(tmp_path / "lists.pt")
    torch.save({"model": state}, path)
    expect(WeightsError, lambda: load_model(str(tmp_path / "small.cfg"), path), re.escape(path))


@pytest.mark.parametrize("extra", [
    {"version": "abc"}, {"version": [0, 2]}, {"version": [2 ** 40, 0, 0]}, {"seen": "many"}, {"model": 5},
    {"model": [1, 2]},
])
def test_checkpoint_with_odd_entries(tmp_path, extra):
    """A .pt that unpickles safely but whose entries are not what we write."""
    model = small_model(tmp_path)
    path = str(tmp_path / "odd.pt")
    torch.save({**model.checkpoint(), **extra}, path)
    expect(WeightsError, lambda: load_model(str(tmp_path / "small.cfg"), path), re.escape(path))


@pytest.mark.parametrize("cfg", [5, None, b"[net]"])
def test_checkpoint_whose_cfg_is_not_text(tmp_path, cfg):
    from yoloslim.darknet.load import model_from_checkpoint
    path = str(tmp_path / "nocfg.pt")
    torch.save({**small_model(tmp_path).checkpoint(), "cfg": cfg}, path)
    expect(WeightsError, lambda: model_from_checkpoint(path), re.escape(path), "no cfg inside")


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def malicious_files(tmp_path):
    """A zip checkpoint (torch.save) and a bare pickle, both carrying the payload."""
    marker = tmp_path / "pwned"
    as_zip, as_pickle = str(tmp_path / "evil.pt"), str(tmp_path / "evil_raw.pt")
    torch.save({"model": Payload(marker)}, as_zip)
    with open(as_pickle, "wb") as f:
        pickle.dump({"model": Payload(marker)}, f, protocol=2)
    return marker, [as_zip, as_pickle]


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker, files = malicious_files(tmp_path)
    for path in files:
        expect(WeightsError, lambda p=path: load_checkpoint(p), re.escape(path), "cannot be loaded safely")
        expect(WeightsError, lambda p=path: load_model(write(tmp_path, "small.cfg", SMALL_CFG), p), re.escape(path))
        assert not marker.exists(), "the pickle's code ran"


def test_garbage_pt_file(tmp_path):
    path = write(tmp_path, "garbage.pt", b"PK\x03\x04 not really a zip" * 10)
    expect(WeightsError, lambda: load_checkpoint(path), re.escape(path))


# ----------------------------------------------------------------------------- data sets
def test_empty_image_list(tmp_path):
    from yoloslim.data.datasets import LoadImagesAndLabels
    listing = write(tmp_path, "train.txt", "\n# nothing here\n")
    expect(DataError, lambda: LoadImagesAndLabels(listing, img_size=64), re.escape(listing), "empty")


@pytest.mark.parametrize("line, words", [
    ("0 0.5 0.5 0.2", "expected 5 values"),
    ("0 0.5 abc 0.2 0.2", "not a number"),
    ("0 0.5 0.5 1.7 0.2", "outside"),
])
def test_label_file_with_a_bad_line(tmp_path, line, words):
    import cv2
    from yoloslim.data.datasets import LoadImagesAndLabels
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.jpg"), np.zeros((32, 32, 3), np.uint8))
    label = write(tmp_path, "labels/a.txt", f"0 0.5 0.5 0.1 0.1\n{line}\n")
    listing = write(tmp_path, "train.txt", "images/a.jpg\n")
    expect(DataError, lambda: LoadImagesAndLabels(listing, img_size=64, nc=1), re.escape(label) + ":2", words)


# ----------------------------------------------------------------------------- command lines
def run_cli(script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=HANG_LIMIT)


def assert_one_line_error(done, *patterns):
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    for pattern in patterns:
        assert re.search(pattern, lines[0]), (pattern, lines[0])


def test_cli_errors_are_one_line_exit_2(tmp_path, small_weights):
    """One subprocess per tool and case: each costs ~2 s of imports, so only the telling ones."""
    cfg, blob = small_weights
    good = write(tmp_path, "good.weights", blob)
    short = write(tmp_path, "short.weights", blob[:-8])
    marker, (evil, _) = malicious_files(tmp_path)
    unknown = write(tmp_path, "unknown.cfg", edit(SMALL_CFG, "[maxpool]", "[foo]"))
    image = tmp_path / "img.jpg"
    import cv2
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))

    assert_one_line_error(run_cli("convert.py", "--cfg", cfg, "--weights", short, "--out", tmp_path / "o.pt"),
                          re.escape(short), "too short")
    assert_one_line_error(run_cli("convert.py", "--cfg", cfg, "--weights", evil, "--out", tmp_path / "o.weights"),
                          re.escape(evil), "cannot be loaded safely")
    assert not marker.exists()
    before = open(good, "rb").read()
    assert_one_line_error(run_cli("convert.py", "--cfg", cfg, "--weights", good, "--out", good),
                          "overwrite the input")
    assert open(good, "rb").read() == before
    assert_one_line_error(run_cli("detect.py", "--cfg", unknown, "--weights", good, "--source", image,
                                  "--out", tmp_path / "det"), re.escape(unknown) + r":\d+ \[foo\]")
    assert_one_line_error(run_cli("detect.py", "--cfg", cfg, "--weights", good, "--source", tmp_path / "none*.jpg",
                                  "--out", tmp_path / "det"), "no images found")
    assert not (tmp_path / "o.pt").exists() and not (tmp_path / "o.weights").exists()


def test_convert_refuses_to_overwrite_its_inputs(tmp_path, small_weights):
    import convert
    cfg, blob = small_weights
    good = write(tmp_path, "good.weights", blob)
    expect(SlimError, lambda: convert.convert(cfg, good, good), "overwrite the input")
    expect(SlimError, lambda: convert.convert(cfg, good, cfg), "overwrite the input")
    os.symlink(good, tmp_path / "alias.weights")
    expect(SlimError, lambda: convert.convert(cfg, good, str(tmp_path / "alias.weights")), "overwrite the input")
    assert open(good, "rb").read() == blob


def test_convert_backbone_cutoff(tmp_path, small_weights):
    """--cutoff writes only the first layers; reading that file back needs the same cutoff."""
    import convert
    cfg, blob = small_weights
    good = write(tmp_path, "good.weights", blob)
    backbone = str(tmp_path / "small.conv.3")
    convert.convert(cfg, good, backbone, cutoff=3)
    model = load_model(cfg)
    n = model.darknet_float_count(cutoff=3)
    assert os.path.getsize(backbone) == 20 + 4 * n and open(backbone, "rb").read() == blob[:20 + 4 * n]
    expect(WeightsError, lambda: load_model(cfg, backbone), re.escape(backbone), "needs --cutoff")
    load_model(cfg, backbone, cutoff=3)
    expect(SlimError, lambda: convert.convert(cfg, good, str(tmp_path / "x.weights"), cutoff=99), "--cutoff 99")


# ----------------------------------------------------------------------------- shared checks (yoloslim/cli/checks.py)
def test_number_types_refuse_nan_inf_and_out_of_range():
    import argparse
    from yoloslim.cli import checks
    for parse, text in ((checks.fraction, "nan"), (checks.fraction, "inf"), (checks.fraction, "1.01"),
                        (checks.positive_int, "0"), (checks.count, "-1"), (checks.positive_float, "0"),
                        (checks.open_fraction, "1"), (checks.img_size, "0"), (checks.img_size, "-32"),
                        (checks.img_size, "1e3"), (checks.positive_int, "2.5")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
    assert checks.fraction("0") == 0.0 and checks.fraction("1") == 1.0 and checks.count("0") == 0


def test_img_size_is_rounded_up_to_32_and_says_so(capsys):
    from yoloslim.cli.checks import img_size
    assert img_size("416") == 416 and capsys.readouterr().err == ""
    assert img_size("100") == 128
    assert "--img-size 100 is not a multiple of 32; using 128" in capsys.readouterr().err


def test_output_checks(tmp_path):
    import argparse
    from yoloslim.cli.checks import output_dir, output_file
    afile = write(tmp_path, "f.txt", "x")
    for check, path, words in ((output_dir, afile, "existing file"), (output_dir, afile + "/sub", "is a file"),
                               (output_file, str(tmp_path), "is a folder"), (output_file, afile + "/x.pt", "is a file"),
                               (output_dir, "", "empty path")):
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            check(path)
    assert output_dir(str(tmp_path / "new" / "deeper")) and output_file(str(tmp_path / "new" / "m.pt"))
    assert not (tmp_path / "new").exists()   # checking creates nothing


@pytest.mark.parametrize("width, height", [(0, 64), (64, -32), (100, 64), ("abc", 64)])
def test_cfg_net_size_refused_naming_the_cfg(tmp_path, width, height):
    from yoloslim.cli.checks import check_cfg
    path = write(tmp_path, "size.cfg", edit(SMALL_CFG, "width=64\nheight=64", f"width={width}\nheight={height}"))
    expect(CfgError, lambda: check_cfg(path), re.escape(path) + r":\d+ \[net\]", "must be a positive multiple of 32")
    expect(CfgError, lambda: load_model(path), re.escape(path), "positive multiple of 32")


def test_empty_names_file_is_an_error(tmp_path):
    from yoloslim.cli.checks import check_names
    path = write(tmp_path, "empty.names", "\n \n")
    expect(DataError, lambda: check_names(path), re.escape(path), "no class names")


# ----------------------------------------------------------------------------- NaN and Inf
def test_non_finite_weights_refused_with_the_layer(tmp_path, small_weights):
    cfg, blob = small_weights
    floats = np.frombuffer(blob[20:], "<f4").copy()
    floats[8] = np.inf                      # layer 0's first BN gamma (after 8 betas)
    path = write(tmp_path, "inf.weights", blob[:20] + floats.tobytes())
    expect(WeightsError, lambda: load_model(cfg, path), re.escape(path), r"layer 0 \(BN gamma\) holds 1 Inf")
    model = small_model(tmp_path)
    with torch.no_grad():
        model.module_list[2].BatchNorm2d.running_mean[0] = float("nan")
    pt = str(tmp_path / "nan.ckpt")
    save_checkpoint(model.checkpoint(), pt)
    expect(WeightsError, lambda: load_model(cfg, pt), re.escape(pt), r"running_mean' \(layer 2\) holds 1 NaN")


def test_max_difference_is_nan_aware():
    from yoloslim.deploy.opencv_dnn import finite_max, max_layout_difference
    a = np.zeros((4, 7), np.float32)
    b = a.copy()
    b[1, 0] = np.nan
    assert max_layout_difference([a], [b]) == float("inf")   # Python's max() once reported 0 here
    assert finite_max([np.array([0.5]), np.array([np.nan, 1.0])]) == float("inf")
    assert finite_max([np.array([0.5]), np.array([0.25])]) == 0.5


def test_detect_warns_when_outputs_are_not_finite(tmp_path, small_weights):
    """Weights that are finite but overflow float32 in the forward pass: detect says so."""
    import cv2
    cfg, blob = small_weights
    floats = np.frombuffer(blob[20:], "<f4").copy()
    floats[32:32 + 8 * 3 * 3 * 3] = 3e38      # layer 0's conv weights
    path = write(tmp_path, "huge.weights", blob[:20] + floats.tobytes())
    image = str(tmp_path / "img.jpg")
    cv2.imwrite(image, np.full((64, 64, 3), 200, np.uint8))
    done = run_cli("detect.py", "--cfg", cfg, "--weights", path, "--source", image, "--img-size", "64",
                   "--out", tmp_path / "det")
    assert done.returncode == 0, done.stderr
    assert "warning: the model's outputs hold NaN or Inf on 1 of 1 images" in done.stderr
    onnx = str(tmp_path / "huge.onnx")
    done = run_cli("export.py", "--cfg", cfg, "--weights", path, "--out", onnx, "--img-size", "64")
    assert done.returncode == 0, done.stderr
    assert "warning: the model's outputs hold NaN or Inf on a random input" in done.stderr


# ----------------------------------------------------------------------------- temporaries and folders
def test_stale_temporaries_of_a_killed_run_are_cleaned_and_live_ones_kept(tmp_path):
    from yoloslim.io import atomic_write, claim_folder
    dead = 2 ** 22 + 12345          # above the default pid_max: no process has it
    stale = tmp_path / f".m.weights.{dead}.abc.tmp"
    live = tmp_path / f".m.weights.{os.getpid()}.xyz.tmp"
    stale.write_bytes(b"half")
    live.write_bytes(b"in progress")
    with atomic_write(str(tmp_path / "m.weights")) as f:
        f.write(b"whole")
    assert not stale.exists() and live.exists()
    # a killed prune run: its claimed (empty) folder and hidden work folder
    (tmp_path / "run").mkdir()
    work = tmp_path / f".run.{dead}.q1.tmp"
    work.mkdir()
    (work / "x.weights").write_bytes(b"partial")
    assert claim_folder(str(tmp_path / "run")) == str(tmp_path / "run")
    assert not work.exists()


def test_claim_folder_is_atomic_under_a_race(tmp_path):
    """Eight processes claim the same name at once: eight different folders."""
    import multiprocessing
    from yoloslim.io import claim_folder
    with multiprocessing.get_context("fork").Pool(8) as pool:
        got = pool.map(claim_folder, [str(tmp_path / "out")] * 8)
    assert len(set(got)) == 8 and all(os.path.isdir(g) for g in got)


def test_atomic_folder_appears_whole_or_not_at_all(tmp_path):
    from yoloslim.io import atomic_folder, claim_folder
    folder = claim_folder(str(tmp_path / "out"))
    with pytest.raises(RuntimeError):
        with atomic_folder(folder) as work:
            open(os.path.join(work, "a.cfg"), "w").close()
            raise RuntimeError("measuring failed")
    assert os.listdir(tmp_path) == []
    folder = claim_folder(str(tmp_path / "out"))
    with atomic_folder(folder) as work:
        open(os.path.join(work, "a.cfg"), "w").close()
        assert os.listdir(folder) == []     # nothing visible under the real name until complete
    assert os.listdir(tmp_path) == ["out"] and os.listdir(folder) == ["a.cfg"]


def test_torch_files_are_recognised_by_content(tmp_path, small_weights):
    from yoloslim.io import is_torch_file
    cfg, blob = small_weights
    save_checkpoint(small_model(tmp_path).checkpoint(), str(tmp_path / "a.weights"))
    legacy = str(tmp_path / "legacy.bin")
    torch.save({"x": torch.zeros(1)}, legacy, _use_new_zipfile_serialization=False)
    assert is_torch_file(str(tmp_path / "a.weights")) and is_torch_file(legacy)
    assert not is_torch_file(write(tmp_path, "b.pt", blob)) and not is_torch_file(str(tmp_path / "missing"))


# ----------------------------------------------------------------------------- reports
def test_channel_table_says_what_a_percentage_means():
    from yoloslim.prune.report import kept_text
    assert kept_text(1, 256) == "kept 1/256 (pruned 99.6%)"
    assert kept_text(128, 256) == "kept 128/256 (pruned 50.0%)"


def test_gamma_histogram_line_sums_to_the_whole():
    from yoloslim.cli.prune import gamma_histogram_line
    line = gamma_histogram_line(torch.tensor([0.0005, 0.005, 0.05, 0.5, 5.0, 0.5, 0.5, 0.5]))
    assert line.startswith("|gamma| histogram: <0.001  12% ##") and "0.1-1  50% ##########" in line
    shares = [int(s) for s in re.findall(r"(\d+)%", line)]
    assert len(shares) == 5 and abs(sum(shares) - 100) <= 3   # each share is rounded


def test_cli_main_reports_environment_errors_in_one_line(capsys):
    """A permission changed or a disk filled mid-run: one line naming the file, exit 2."""
    from yoloslim.errors import cli_main

    def fails():
        raise PermissionError(13, "Permission denied", "/some/out/x.weights")

    with pytest.raises(SystemExit) as stop:
        cli_main(fails)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1
    assert err[0].startswith("error: /some/out/x.weights: Permission denied")


# ----------------------------------------------------------------------------- degenerate images
@pytest.mark.parametrize("h, w", [(2, 4000), (4000, 2), (1, 1), (1, 5000)])
def test_letterbox_never_makes_a_zero_pixel_side(h, w):
    from yoloslim.data.datasets import letterbox
    img = np.full((h, w, 3), 200, np.uint8)
    out, ratio, (dw, dh) = letterbox(img, 64)
    assert out.shape == (64, 64, 3)
    assert (out == 200).any(), "the image itself was lost"
    assert 0 <= dw < 64 and 0 <= dh < 64 and ratio == min(64 / h, 64 / w)


def test_detect_on_a_very_wide_image(tmp_path, small_weights):
    """A 4000x2 strip: processed like any image (one drawn output, exit 0), not an OpenCV assertion."""
    import cv2
    cfg, blob = small_weights
    weights = write(tmp_path, "small.weights", blob)
    image = str(tmp_path / "strip.png")
    cv2.imwrite(image, np.full((2, 4000, 3), 255, np.uint8))
    done = run_cli("detect.py", "--cfg", cfg, "--weights", weights, "--source", image, "--img-size", "64",
                   "--out", tmp_path / "det")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    drawn = cv2.imread(str(tmp_path / "det" / "strip.png"))
    assert drawn is not None and drawn.shape == (2, 4000, 3)


# ----------------------------------------------------------------------------- random weights
def deep_stride_cfg(downsamples):
    """Stride 2^downsamples, its map upsampled and routed with the stride-2^(downsamples-1) one (as the
    P6/P7 necks do): any input that is not a multiple of the largest stride fails at the route."""
    conv = "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\nstride={}\npad=1\nactivation=leaky\n\n"
    body = conv.format(1) + conv.format(2) * downsamples
    head = ("[upsample]\nstride=2\n\n[route]\nlayers=-1,-3\n\n"
            "[convolutional]\nsize=1\nstride=1\npad=1\nfilters=18\nactivation=linear\n\n"
            "[yolo]\nmask=0,1,2\nanchors=10,14, 23,27, 37,58\nclasses=1\nnum=3\n")
    size = 2 ** downsamples
    return f"[net]\nwidth={size}\nheight={size}\nchannels=3\n\n" + body + head


@pytest.mark.parametrize("downsamples, size", [(5, 224), (6, 256), (7, 256)])
def test_random_weights_calibrate_at_a_multiple_of_the_largest_stride(tmp_path, downsamples, size):
    from yoloslim.deploy.measure import calibration_size, randomize_weights
    model = Darknet(write(tmp_path, "deep.cfg", deep_stride_cfg(downsamples)))
    assert calibration_size(model) == size
    randomize_weights(model, seed=1)
    bn = model.module_list[1].BatchNorm2d
    assert float(bn.running_var.min()) > 0 and not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    raw = model.eval().forward_raw(torch.rand(1, 3, size, size))
    assert all(torch.isfinite(r).all() for r in raw)


# ----------------------------------------------------------------------------- truncated JPEG
def jpeg_bytes(**params):
    import cv2
    img = (np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8)
    flags = [v for k, val in params.items() for v in (getattr(cv2, k), val)]
    return cv2.imencode(".jpg", img, flags)[1].tobytes()


@pytest.mark.parametrize("params", [{}, {"IMWRITE_JPEG_PROGRESSIVE": 1}, {"IMWRITE_JPEG_RST_INTERVAL": 2}])
def test_truncated_jpeg_is_told_from_a_whole_one(params):
    from yoloslim.data.jpeg_check import jpeg_truncated
    whole = jpeg_bytes(**params)
    assert not jpeg_truncated(whole)
    assert not jpeg_truncated(whole + b"camera trailer \xff\xda\x00\x08 after the image")
    assert all(jpeg_truncated(whole[:int(len(whole) * f)]) for f in (0.05, 0.5, 0.95))
    assert jpeg_truncated(whole[:-1]) and not jpeg_truncated(b"\x89PNG\r\n\x1a\n")


def test_truncated_jpeg_refused_by_name_like_an_undecodable_image(tmp_path, small_weights):
    """cv2 decodes a truncated JPEG into grey filling with only libjpeg's stderr line as a sign;
    detect.py refuses it, naming the file, as it refuses an image it cannot decode."""
    cfg, blob = small_weights
    weights = write(tmp_path, "small.weights", blob)
    whole = jpeg_bytes()
    image = write(tmp_path, "cut.jpg", whole[:len(whole) // 2])
    done = run_cli("detect.py", "--cfg", cfg, "--weights", weights, "--source", image, "--img-size", "64",
                   "--out", tmp_path / "det")
    assert_one_line_error(done, re.escape(image) + r": the JPEG is truncated", "replace or remove it")
    assert "Premature end" not in done.stderr and not (tmp_path / "det").exists()
