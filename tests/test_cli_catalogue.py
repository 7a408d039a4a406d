"""The catalogue of hostile command lines, run against every CLI as a user runs it (subprocess).

Each refused case must: exit 2, print exactly one ``error:`` line that names the argument or
file, never a traceback, leave every input byte-identical and create no file at all (so no
output folder can look complete). Cases are grouped by class of failure and every class is
tried on every tool it applies to. Almost all are refused by ``yoloslim/cli/checks.py`` before a
model is built, so each costs about one interpreter start.
"""
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from yoloslim.darknet.model import Darknet  # noqa: E402
from yoloslim.darknet.weights import save_checkpoint  # noqa: E402
from conftest import HANG_LIMIT

TINY_CFG = os.path.join(ROOT, "cfg", "yolov3-tiny-5cls.cfg")
PRUNE = ["normal_prune.py", "regular_prune.py", "shortcut_prune.py", "prune_tiny.py", "layer_channel_prune.py"]
NAMES = ["circle", "square", "triangle", "star", "cross"]

# The arguments of a run that would succeed; a case changes some of them ({name} = a workspace path).
BASE = {
    **{script: {"--cfg": "{cfg}", "--weights": "{weights}", "--out": "{out}", "--img-size": "64",
                "--percent": "0.3", "--latency-runs": "0"} for script in PRUNE},
    # 2^n rounding keeps every layer of this small model whole at 0.3, which is refused on its own
    "regular_prune.py": {"--cfg": "{cfg}", "--weights": "{weights}", "--out": "{out}", "--img-size": "64",
                         "--percent": "0.3", "--latency-runs": "0", "--multiple": "8"},
    "layer_channel_prune.py": {"--cfg": "{cfg}", "--weights": "{weights}", "--out": "{out}", "--img-size": "64",
                               "--percent": "0.3", "--latency-runs": "0", "--layers": "0"},
    "detect.py": {"--cfg": "{cfg}", "--weights": "{weights}", "--source": "{image}", "--out": "{out}",
                  "--img-size": "64"},
    "test.py": {"--cfg": "{cfg}", "--weights": "{weights}", "--data": "{data}", "--img-size": "64"},
    "convert.py": {"--cfg": "{cfg}", "--weights": "{weights}", "--out": "{out}.pt"},
    "export.py": {"--cfg": "{cfg}", "--weights": "{weights}", "--out": "{out}.onnx", "--img-size": "64"},
    "train.py": {"--cfg": "{cfg}", "--weights": "{weights}", "--data": "{data}", "--out": "{out}", "--epochs": "1",
                 "--img-size": "64", "--batch-size": "2", "--workers": "0", "--quiet": None},
    "slim.py": {"--model": "narrow", "--cfg": "{cfg}", "--out": "{out}", "--data-dir": "{out}-data", "--img-size": "64"},
}
WITH_CFG = list(BASE)
WITH_WEIGHTS = [s for s in BASE if "--weights" in BASE[s]]
OUT_FOLDER = PRUNE + ["detect.py", "train.py", "slim.py"]
OUT_FILE = ["convert.py", "export.py"]
WITH_DATA = PRUNE + ["test.py", "train.py"]


# ----------------------------------------------------------------------------- the workspace
def write_data(folder, name, classes=5, names="names.names", valid="valid.txt", train="valid.txt"):
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write(f"classes={classes}\ntrain={train}\nvalid={valid}\nnames={names}\n")
    return path


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Inputs for every tool: a tiny 5-class model (random weights, .weights and checkpoint), a
    two-image data set, and broken variants of each."""
    root = tmp_path_factory.mktemp("catalogue")
    os.chmod(root, 0o755)
    p = {"root": str(root)}
    p["cfg"] = str(root / "tiny.cfg")
    shutil.copy(TINY_CFG, p["cfg"])
    torch.manual_seed(0)
    model = Darknet(p["cfg"])
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.1, 1.0)
                m.running_var.uniform_(0.5, 1.5)
    p["weights"] = str(root / "tiny.weights")
    model.save_darknet_weights(p["weights"])
    p["pt"] = str(root / "tiny.pt")
    save_checkpoint(model.checkpoint(), p["pt"])
    # NaN in one BN gamma: in the Darknet file and in the checkpoint
    bad = Darknet(p["cfg"])
    bad.load_state_dict(model.state_dict())
    with torch.no_grad():
        bad.module_list[2].BatchNorm2d.weight[3] = float("nan")
    p["nan_weights"] = str(root / "nan.weights")
    bad.save_darknet_weights(p["nan_weights"])
    p["nan_pt"] = str(root / "nan.pt")
    save_checkpoint(bad.checkpoint(), p["nan_pt"])

    cfg_text = open(TINY_CFG).read()
    for key, text in (("cfg_w0", cfg_text.replace("width=320", "width=0")),
                      ("cfg_h100", cfg_text.replace("height=320", "height=100"))):
        p[key] = str(root / f"{key}.cfg")
        with open(p[key], "w") as f:
            f.write(text)

    (root / "images").mkdir()
    (root / "labels").mkdir()
    for k in range(2):
        cv2.imwrite(str(root / "images" / f"{k}.jpg"), np.full((64, 64, 3), 40 * k, np.uint8))
        (root / "labels" / f"{k}.txt").write_text("1 0.5 0.5 0.3 0.3\n")
    (root / "valid.txt").write_text("images/0.jpg\nimages/1.jpg\n")
    p["image"] = str(root / "images" / "0.jpg")
    (root / "names.names").write_text("\n".join(NAMES) + "\n")
    p["names"] = str(root / "names.names")
    (root / "three.names").write_text("a\nb\nc\n")
    p["three_names"] = str(root / "three.names")
    (root / "empty.names").write_text("\n  \n")
    (root / "binary.names").write_bytes(bytes(range(128, 256)))
    p["binary_names"] = str(root / "binary.names")
    (root / "mixed").mkdir()   # one good image, then an empty one: refused before the first is written
    shutil.copy(root / "images" / "0.jpg", root / "mixed" / "a.jpg")
    (root / "mixed" / "empty.jpg").write_bytes(b"")
    p["mixed_images"] = str(root / "mixed")
    p["empty_names"] = str(root / "empty.names")
    p["data"] = write_data(root, "tiny.data")
    p["data_cls3"] = write_data(root, "cls3.data", classes=3)
    p["data_nolist"] = write_data(root, "nolist.data", valid="missing.txt", train="missing.txt")
    p["data_emptynames"] = write_data(root, "emptynames.data", names="empty.names")
    p["data_names3"] = write_data(root, "names3.data", names="three.names")
    # a label line outside the image: noticed only when the data set is read (after pruning)
    (root / "bad" / "images").mkdir(parents=True)
    (root / "bad" / "labels").mkdir()
    cv2.imwrite(str(root / "bad" / "images" / "0.jpg"), np.zeros((64, 64, 3), np.uint8))
    (root / "bad" / "labels" / "0.txt").write_text("1 0.5 0.5 1.7 0.3\n")
    (root / "badvalid.txt").write_text("bad/images/0.jpg\n")
    p["data_badlabel"] = write_data(root, "badlabel.data", valid="badvalid.txt", train="badvalid.txt")
    # label files no reader may take for "no objects" or turn into a traceback: not UTF-8, a folder
    for kind, make in (("binlabel", lambda path: path.write_bytes(b"0 0.5 0.5 0.2 0.2\n\xff\xfe 1 0.5\n")),
                       ("dirlabel", lambda path: path.mkdir())):
        (root / kind / "images").mkdir(parents=True)
        (root / kind / "labels").mkdir()
        cv2.imwrite(str(root / kind / "images" / "0.jpg"), np.zeros((64, 64, 3), np.uint8))
        make(root / kind / "labels" / "0.txt")
        (root / f"{kind}.txt").write_text(f"{kind}/images/0.jpg\n")
        p[f"data_{kind}"] = write_data(root, f"{kind}.data", valid=f"{kind}.txt", train=f"{kind}.txt")

    p["afile"] = str(root / "notes.txt")
    (root / "notes.txt").write_text("not a folder\n")
    p["adir"] = str(root / "adir.onnx")   # a folder whose name looks like an output file
    (root / "adir.onnx").mkdir()
    p["ro"] = str(root / "readonly")
    (root / "readonly").mkdir()
    os.chmod(p["ro"], 0o555)
    p["missing"] = str(root / "does-not-exist.cfg")
    p["out"] = str(root / "out" / "run")
    yield p
    os.chmod(p["ro"], 0o755)


# ----------------------------------------------------------------------------- running the cases
def without_write_override():
    """A command prefix under which permission bits bind: root ignores them unless its
    CAP_DAC_OVERRIDE is dropped. None when that cannot be arranged here."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv"):
        probe = subprocess.run(["setpriv", "--bounding-set=-dac_override", "true"], capture_output=True)
        if probe.returncode == 0:
            return ["setpriv", "--bounding-set=-dac_override"]
    return None


def command(ws, script, changes, out):
    args = dict(BASE[script])
    args.update(changes)
    argv = []
    for flag, value in args.items():
        if value is False:
            continue
        argv.append(flag)
        if value is not None:
            argv.append(value.format(**{**ws, "out": out}))
    return argv


def run_cli(script, argv, cwd, prefix=()):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([*prefix, sys.executable, os.path.join(ROOT, script), *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=HANG_LIMIT, env=env)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def all_files(root):
    return {os.path.join(d, f) for d, _, files in os.walk(root) for f in files}


def assert_refused(done, pattern):
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("error: "), done.stderr
    assert re.search(pattern, errors[0]), (pattern, errors[0])


CASES = {}   # id -> (script, changes, pattern, needs the permission prefix)


def case(script, changes, pattern, permission=False):
    flags = "_".join(f"{k.strip('-')}={v}" if v not in (None, False) else k.strip("-") for k, v in changes.items())
    case_id = re.sub(r"[^\w=.*-]+", "_", f"{script[:-3]}-{flags}")[:90]
    assert case_id not in CASES, case_id
    CASES[case_id] = (script, changes, pattern, permission)
    return case_id


@pytest.fixture(scope="module")
def outcomes(ws, request):
    """Run every selected case, several at a time (each is one interpreter start, mostly
    import time), each with its own output path. Returns id -> (done, argv, out, changed inputs,
    files created under its output path), plus the files created anywhere else under "*"."""
    selected = [item.callspec.params["case_id"] for item in request.session.items
                if hasattr(item, "callspec") and "case_id" in item.callspec.params]
    prefix = without_write_override()
    jobs = {}
    for n, case_id in enumerate(dict.fromkeys(selected)):
        script, changes, _, permission = CASES[case_id]
        if permission and prefix is None:
            continue
        out = os.path.join(ws["root"], "out", str(n), "run")
        jobs[case_id] = (script, command(ws, script, changes, out), out, prefix if permission else ())
    inputs = {a for _, argv, _, _ in jobs.values() for a in argv if os.path.isfile(a)}
    hashes = {a: sha256(a) for a in inputs}
    before = all_files(ws["root"])
    with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as pool:
        futures = {cid: pool.submit(run_cli, script, argv, ws["root"], pre)
                   for cid, (script, argv, _, pre) in jobs.items()}
        done = {cid: f.result() for cid, f in futures.items()}
    changed = {a for a in inputs if sha256(a) != hashes[a]}
    created = all_files(ws["root"]) - before
    results = {}
    for cid, (script, argv, out, _) in jobs.items():
        folder = os.path.dirname(out)
        results[cid] = (done[cid], argv, out, changed & set(argv),
                        {f for f in created if f.startswith(folder + os.sep)})
    results["*"] = {f for f in created if not f.startswith(os.path.join(ws["root"], "out") + os.sep)}
    return results


def check_refusal(outcomes, case_id):
    if case_id not in outcomes:
        pytest.skip("running as root without setpriv: permission bits cannot bind here")
    done, argv, out, changed, created = outcomes[case_id]
    assert_refused(done, CASES[case_id][2])
    assert not changed, f"input files changed: {changed}"
    assert not created, f"files left behind: {sorted(created)}"
    return done


# ----------------------------------------------------------------------------- 1. output locations
OUTPUT_CASES = (
    [case(s, {"--out": "{afile}"}, r"notes\.txt: is an existing file") for s in OUT_FOLDER]
    + [case(s, {"--out": "{afile}/sub"}, r"notes\.txt is a file, so nothing can be created under it")
       for s in OUT_FOLDER + OUT_FILE]
    + [case(s, {"--out": "{adir}"}, r"adir\.onnx: is a folder") for s in OUT_FILE]
    + [case(s, {"--out": "{ro}/run"}, r"--out.*no permission to write into .*readonly", True) for s in OUT_FOLDER]
    + [case(s, {"--out": "{ro}/model.onnx"}, r"--out.*no permission to write into .*readonly", True)
       for s in OUT_FILE]
)


@pytest.mark.parametrize("case_id", OUTPUT_CASES)
def test_output_location_refused(outcomes, case_id):
    check_refusal(outcomes, case_id)


# ----------------------------------------------------------------------------- 2. numbers
# the five prune scripts share one parser: each value is tried on two of them, every script gets several
PRUNE_NUMBERS = [({"--img-size": "0"}, r"--img-size: 0 is out of range"),
                 ({"--latency-runs": "-1"}, r"--latency-runs: -1 is out of range; pass an integer in \[0, 10000\]"),
                 ({"--percent": "nan"}, r"--percent: nan is not a finite number"),
                 ({"--layer-keep": "inf"}, r"--layer-keep: inf is not a finite number"),
                 ({"--percent": "-0.2"}, r"--percent: -0.2 is out of range")]
NUMBER_CASES = (
    [case(PRUNE[(k + j) % 5], c, p) for k, (c, p) in enumerate(PRUNE_NUMBERS) for j in (0, 2)]
    + [case("normal_prune.py", {"--img-size": "-64"}, r"--img-size: -64 is out of range"),
       case("prune_tiny.py", {"--percent": "1.5"}, r"--percent: 1.5 is out of range; pass a number in \[0, 1\)"),
       case("shortcut_prune.py", {"--layer-keep": "0"}, r"--layer-keep: 0 is out of range"),
       case("regular_prune.py", {"--multiple": "-8"}, r"--multiple: -8 is out of range"),
       case("layer_channel_prune.py", {"--layers": "-1"}, r"--layers: -1 is out of range"),
       case("normal_prune.py", {"--percent": "0"}, r"--percent 0 is outside \(0, 1\)"),
       case("detect.py", {"--img-size": "0"}, r"--img-size: 0 is out of range"),
       case("detect.py", {"--img-size": "99999"}, r"--img-size: 99999 is out of range"),
       case("detect.py", {"--conf-thres": "nan"}, r"--conf-thres: nan is not a finite number"),
       case("detect.py", {"--conf-thres": "1.5"}, r"--conf-thres: 1.5 is out of range; pass a number in \[0, 1\]"),
       case("detect.py", {"--iou-thres": "-0.1"}, r"--iou-thres: -0.1 is out of range"),
       case("test.py", {"--img-size": "-32"}, r"--img-size: -32 is out of range"),
       case("test.py", {"--conf-thres": "nan"}, r"--conf-thres: nan"),
       case("test.py", {"--iou-thres": "2"}, r"--iou-thres: 2 is out of range"),
       case("test.py", {"--batch-size": "0"}, r"--batch-size: 0 is out of range; pass an integer >= 1"),
       case("test.py", {"--max-images": "0"}, r"--max-images: 0 is out of range"),
       *([case("test.py", {"--device": "cuda"}, r"--device cuda: CUDA is not available")]
         if not torch.cuda.is_available() else []),
       case("train.py", {"--epochs": "0"}, r"--epochs: 0 is out of range"),
       case("train.py", {"--batch-size": "-1"}, r"--batch-size: -1 is out of range"),
       case("train.py", {"--img-size": "0"}, r"--img-size: 0 is out of range"),
       case("train.py", {"--lr0": "nan"}, r"--lr0: nan is not a finite number"),
       case("train.py", {"--s": "inf"}, r"--s: inf is not a finite number"),
       case("train.py", {"--momentum": "1"}, r"--momentum: 1 is out of range; pass a number in \[0, 1\)"),
       case("train.py", {"--hyp": "giou=nan"}, r"--hyp giou=nan: must be a finite number >= 0"),
       case("export.py", {"--img-size": "0"}, r"--img-size: 0 is out of range"),
       case("export.py", {"--img-size": "-1"}, r"--img-size: -1 is out of range"),
       case("export.py", {"--opset": "0"}, r"--opset: 0 is out of range"),
       case("export.py", {"--max-drop": "1.5"}, r"--max-drop: 1.5 is out of range"),
       case("prune_tiny.py", {"--threads": "0"}, r"--threads: 0 is out of range"),
       case("prune_tiny.py", {"--runtime": "tensorrt"}, r"--runtime: unknown runtime 'tensorrt'"),
       case("convert.py", {"--cutoff": "0"}, r"--cutoff: 0 is out of range; pass an integer >= 1"),
       case("convert.py", {"--cutoff": "nan"}, r"--cutoff: 'nan' is not an integer"),
       case("slim.py", {"--img-size": "0"}, r"--img-size: 0 is out of range"),
       case("slim.py", {"--percent": "nan"}, r"--percent: nan is not a finite number"),
       case("slim.py", {"--epochs": "0"}, r"--epochs: 0 is out of range"),
       case("slim.py", {"--latency-runs": "-1"}, r"--latency-runs: -1 is out of range"),
       case("shortcut_prune.py", {"--latency-runs": "1000000000"}, r"--latency-runs: 1000000000 is out of range")]
)


@pytest.mark.parametrize("case_id", NUMBER_CASES)
def test_numeric_argument_refused(outcomes, case_id):
    check_refusal(outcomes, case_id)


# a size that is not a multiple of 32 is rounded up alike everywhere, and said so (the unknown
# flag then stops the run right after parsing)
ROUNDING_CASES = [case(s, {"--img-size": "100", "--no-such-flag": None}, r"unrecognized arguments: --no-such-flag")
                  for s in ["detect.py", "test.py", "export.py", "train.py", "prune_tiny.py", "slim.py"]]


@pytest.mark.parametrize("case_id", ROUNDING_CASES)
def test_img_size_rounded_alike_in_every_tool(outcomes, case_id):
    done = check_refusal(outcomes, case_id)
    assert "warning: --img-size 100 is not a multiple of 32; using 128" in done.stderr


# ----------------------------------------------------------------------------- 3. inputs checked before work
INPUT_CASES = (
    [case(s, {"--cfg": "{missing}"}, r"--cfg: .*does-not-exist\.cfg: file not found") for s in WITH_CFG]
    + [case(s, {"--weights": "{missing}"}, r"--weights: .*does-not-exist\.cfg: file not found")
       for s in WITH_WEIGHTS]
    + [case("detect.py", {"--weights": "{root}"}, r"--weights: .*is a folder; pass the file")]
    + [case(s, {"--data": "{missing}"}, r"--data: .*file not found") for s in WITH_DATA]
    + [case(s, {"--data": "{data_nolist}"}, r"nolist\.data: (valid|train)=.*missing\.txt not found")
       for s in WITH_DATA[::2]]
    + [case("detect.py", {"--source": "{root}/none*.jpg"}, r"none\*\.jpg: no images found"),
       case("detect.py", {"--names": "{missing}"}, r"--names: .*file not found"),
       case("detect.py", {"--names": "{binary_names}"}, r"binary\.names: not a UTF-8 text file"),
       case("detect.py", {"--source": "{mixed_images}"}, r"empty\.jpg: image file is empty"),
       case("test.py", {"--weights": "/dev/zero"}, r"--weights: /dev/zero: not a regular file"),
       case("prune_tiny.py", {"--cfg": "/dev/zero"}, r"--cfg: /dev/zero: not a regular file"),
       case("convert.py", {"--out": "{weights}"}, r"overwrite the input"),
       case("export.py", {"--out": "{out}.onnx.txt"}, r"must end in \.onnx")]
    + [case(s, {"--data": "{data_binlabel}"}, r"binlabel/labels/0\.txt: not a UTF-8 text file \(byte \d+.*UTF-8")
       for s in ("test.py", "train.py")]
    + [case(s, {"--data": "{data_dirlabel}"}, r"dirlabel/labels/0\.txt: is a folder, not a label file; remove or rename")
       for s in ("test.py", "train.py")]
)
# the labels are broken in a way only reading the data set shows: the pruned pair is already
# written (in the hidden work folder) when measuring fails, and nothing may look finished
LATE_CASES = ([case(s, {"--data": "{data_badlabel}"}, r"bad/labels/0\.txt:1") for s in PRUNE if s != "shortcut_prune.py"]
              + [case("normal_prune.py", {"--data": "{data_binlabel}"}, r"binlabel/labels/0\.txt: not a UTF-8"),
                 case("prune_tiny.py", {"--data": "{data_dirlabel}"}, r"dirlabel/labels/0\.txt: is a folder")])
# a model the method cannot prune differently from another method: refused after loading, before any work
WRONG_MODEL_CASES = [case("shortcut_prune.py", {}, r"tiny\.cfg: has no \[shortcut\] where prunable convs meet.*"
                                                   r"use normal_prune\.py \(or prune_tiny\.py")]


@pytest.mark.parametrize("case_id", INPUT_CASES)
def test_bad_input_refused_before_work(outcomes, case_id):
    check_refusal(outcomes, case_id)


@pytest.mark.parametrize("case_id", LATE_CASES)
def test_failure_after_pruning_leaves_no_output_folder(outcomes, case_id):
    done = check_refusal(outcomes, case_id)
    assert "kept channels" in done.stdout        # it did prune before failing
    out = outcomes[case_id][2]
    assert not os.path.exists(out) and not os.listdir(os.path.dirname(out)), "a folder or temporary was left"


@pytest.mark.parametrize("case_id", WRONG_MODEL_CASES)
def test_method_that_does_not_fit_the_model_refused(outcomes, case_id):
    check_refusal(outcomes, case_id)


# ----------------------------------------------------------------------------- 4. NaN and Inf
NAN_CASES = ([case(s, {"--weights": "{nan_weights}"}, r"nan\.weights: layer 2 \(BN gamma\) holds 1 NaN")
              for s in WITH_WEIGHTS]
             + [case(s, {"--weights": "{nan_pt}"}, r"nan\.pt: 'module_list\.2\.BatchNorm2d\.weight' \(layer 2\)")
                for s in WITH_WEIGHTS[1::2]])


@pytest.mark.parametrize("case_id", NAN_CASES)
def test_non_finite_weights_refused_at_load(outcomes, case_id):
    check_refusal(outcomes, case_id)


# ----------------------------------------------------------------------------- 5. inconsistent metadata
META_CASES = (
    [case(s, {"--cfg": "{cfg_w0}"}, r"cfg_w0\.cfg:\d+ \[net\]: width=0 must be a positive multiple of 32")
     for s in WITH_CFG]
    + [case(s, {"--cfg": "{cfg_h100}", "--img-size": False},
            r"cfg_h100\.cfg:\d+ \[net\]: height=100 must be a positive multiple of 32")
       for s in ("regular_prune.py", "detect.py", "test.py", "export.py")]
    + [case(s, {"--data": "{data_cls3}"}, r"cls3\.data: classes=3 but the model's \[yolo\] layers have classes=5")
       for s in WITH_DATA]
    + [case(s, {"--data": "{data_emptynames}"}, r"empty\.names: holds no class names") for s in WITH_DATA[1::2]]
    + [case(s, {"--data": "{data_names3}"}, r"three\.names: 3 names but the model has 5 classes")
       for s in WITH_DATA[::3]]
    + [case("detect.py", {"--names": "{empty_names}"}, r"empty\.names: holds no class names"),
       case("detect.py", {"--names": "{three_names}", "--backend": "opencv"},
            r"three\.names: 3 names but the model has 5 classes"),
       case("detect.py", {"--names": "{three_names}"}, r"three\.names: 3 names but the model has 5 classes"),
       case("detect.py", {"--weights": "{pt}", "--backend": "opencv"}, r"opencv backend needs a Darknet")]
)


@pytest.mark.parametrize("case_id", META_CASES)
def test_inconsistent_metadata_refused(outcomes, case_id):
    check_refusal(outcomes, case_id)


def test_refused_runs_create_nothing_elsewhere(outcomes):
    """No tool wrote beside its inputs or into the working folder (the default runs/)."""
    assert not outcomes["*"], sorted(outcomes["*"])


# ----------------------------------------------------------------------------- 6. concurrency
def test_two_prune_runs_started_at_once_get_separate_complete_folders(ws, tmp_path):
    """Same --out for both: one gets it, the other the next suffix; neither overwrites the other."""
    out = str(tmp_path / "same")
    argv = command(ws, "prune_tiny.py", {"--out": out}, out)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "prune_tiny.py"), *argv], cwd=str(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [p.communicate(timeout=HANG_LIMIT) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    folders = sorted(os.listdir(tmp_path))
    assert folders == ["same", "same-2"], folders
    for folder in folders:
        assert sorted(os.listdir(tmp_path / folder)) == ["summary.json", "tiny-tiny.cfg", "tiny-tiny.weights"]


def test_two_train_runs_with_one_out_get_separate_folders_and_resume_stays(ws, tmp_path):
    """Two train.py runs started at once with the same --out: each claims its own folder (out, out-2), as
    the prune scripts do; a --resume of one of them continues in that folder and claims nothing new."""
    out = str(tmp_path / "run")
    argv = command(ws, "train.py", {"--out": out, "--threads": "1"}, out)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *argv], cwd=str(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [p.communicate(timeout=HANG_LIMIT) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-1500:] for _, err in results]
    assert sorted(os.listdir(tmp_path)) == ["run", "run-2"]
    assert sum("is taken; this run writes into " + out + "-2" in err for _, err in results) == 1
    for folder in ("run", "run-2"):
        assert {"last.pt", "best.pt"} <= set(os.listdir(tmp_path / folder))
    done = run_cli("train.py", ["--data", ws["data"], "--out", out + "-2", "--resume", "--epochs", "2", "--quiet"],
                   str(tmp_path))
    assert done.returncode == 0, done.stderr[-1500:]
    assert sorted(os.listdir(tmp_path)) == ["run", "run-2"]
    assert load_epoch(out + "-2") == 2 and load_epoch(out) == 1


# ----------------------------------------------------------------------------- 7. checkpoint names
@pytest.fixture(scope="module")
def odd_names(ws, tmp_path_factory):
    """convert.py's checkpoint under names no loader used to accept, and Darknet weights named .pt."""
    folder = tmp_path_factory.mktemp("names")
    paths = {}
    for name in ("model.pth", "model.ckpt"):
        paths[name] = str(folder / name)
        done = run_cli("convert.py", ["--cfg", ws["cfg"], "--weights", ws["weights"], "--out", paths[name]], ROOT)
        assert done.returncode == 0, done.stderr
    paths["model.bin"] = str(folder / "model.bin")              # a checkpoint with a name that says nothing
    shutil.copy(paths["model.pth"], paths["model.bin"])
    paths["darknet.pt"] = str(folder / "darknet.pt")            # Darknet weights behind a checkpoint's name
    shutil.copy(ws["weights"], paths["darknet.pt"])
    return paths


@pytest.mark.parametrize("name", ["model.pth", "model.ckpt", "model.bin", "darknet.pt"])
def test_checkpoint_recognised_by_content_in_every_loader(ws, odd_names, name, tmp_path):
    from yoloslim.darknet.load import load_model, model_from_checkpoint
    path = odd_names[name]
    reference = load_model(ws["cfg"], ws["weights"])
    model = load_model(ws["cfg"], path)
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), model.state_dict().values()))
    if name != "darknet.pt":
        assert model_from_checkpoint(path).nc == 5
    # the CLIs that branch on the format: detect and test without --cfg, convert back, a prune script
    runs = [("convert.py", ["--cfg", ws["cfg"], "--weights", path, "--out", str(tmp_path / "back.weights")])]
    if name != "darknet.pt":
        runs += [("detect.py", ["--weights", path, "--source", ws["image"], "--img-size", "64",
                                "--out", str(tmp_path / "det")]),
                 ("test.py", ["--weights", path, "--data", ws["data"], "--img-size", "64"])]
    else:
        runs += [("normal_prune.py", ["--cfg", ws["cfg"], "--weights", path, "--img-size", "64", "--percent", "0.3",
                                      "--latency-runs", "0", "--out", str(tmp_path / "pruned")])]
    for script, argv in runs:
        done = run_cli(script, argv, str(tmp_path))
        assert done.returncode == 0, (script, done.stderr[-1500:])
    with open(tmp_path / "back.weights", "rb") as a, open(ws["weights"], "rb") as b:
        assert a.read() == b.read()


# ----------------------------------------------------------------------------- 8. resume
@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from yoloslim.data.synthetic import generate
    out = tmp_path_factory.mktemp("shapes")
    generate(str(out), n_train=4, n_val=2, img_size=64, seed=0, workers=1, progress=False)
    return str(out / "shapes.data")


def test_resume_with_more_epochs_extends_and_ctrl_c_prints_the_command(shapes, tmp_path, capsys, monkeypatch):
    import train
    from yoloslim.train.trainer import Trainer
    out = str(tmp_path / "run")
    argv = ["--cfg", TINY_CFG, "--data", shapes, "--img-size", "64", "--batch-size", "2", "--workers", "0",
            "--out", out, "--quiet", "--epochs", "2", "--threads", "1"]
    step, calls = Trainer.step, []

    def step_then_ctrl_c(self, *a):   # a real SIGINT through the real handler, after the first batch
        result = step(self, *a)
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(Trainer, "step", step_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        train.main(argv)
    message = capsys.readouterr().err
    command_line = re.search(r"to continue this run: (.*)", message).group(1)
    assert command_line.split()[2:] == ["--data", shapes, "--out", out, "--resume"]
    monkeypatch.setattr(Trainer, "step", step)

    train.main(command_line.split()[2:])                        # the printed command finishes the 2 epochs
    assert load_epoch(out) == 2
    with pytest.raises(SystemExit) as stop:                      # nothing left to do: said so, exit 2
        from yoloslim.errors import cli_main
        cli_main(train.main, command_line.split()[2:])
    assert stop.value.code == 2 and "already trained 2 epochs" in capsys.readouterr().err
    train.main(command_line.split()[2:] + ["--epochs", "3"])    # a larger --epochs extends the run
    assert load_epoch(out) == 3


def load_epoch(out):
    from yoloslim.darknet.weights import load_checkpoint
    return int(load_checkpoint(os.path.join(out, "last.pt"))["epoch"])
