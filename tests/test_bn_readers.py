"""BN statistics written for, and read from, a named reader (yoloslim/darknet/bn_readers.py).

The trained model is the reference throughout: a file written for a reader must compute it in
that reader's arithmetic (a float64 re-implementation of each reader's BN on the file's own
numbers; OpenCV itself where it is the reader), and a file written for another reader must not.
Models get small variances (yoloslim.darknet.bn_readers.with_small_variances) so that the readers differ.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import HANG_LIMIT, ROOT, cfg_path
from yoloslim.darknet.model import Darknet
from yoloslim.darknet.load import load_model
from yoloslim.darknet.bn_readers import OPENCV_REVISION, READERS, arithmetic, convert_stats, model_arithmetic, reader_from_header
from yoloslim.deploy.reader_checks import reader_difference, reader_model, with_small_variances
from yoloslim.errors import SlimError
from yoloslim.deploy.opencv_dnn import max_raw_difference, random_input
from yoloslim.deploy.parity import TOLERANCE
from yoloslim.deploy.measure import randomize_weights

CFG = cfg_path("yolov3-tiny-5cls")
SIZE = 64
EXACT = 1e-6      # float32 storage of the converted gamma and variance is all that may differ


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small model with variances down to ~1e-4, and its file written for each reader."""
    model = with_small_variances(randomize_weights(Darknet(CFG), seed=4), seed=4).eval()
    folder = tmp_path_factory.mktemp("readers")
    files = {}
    for reader in READERS:
        files[reader] = str(folder / f"{reader}.weights")
        model.save_darknet_weights(files[reader], reader=reader)
    return model, files


def header(path):
    return np.fromfile(path, dtype=np.int32, count=3).tolist()


def test_conversion_keeps_gamma_over_each_readers_denominator():
    var = torch.tensor([0.0, 1e-12, 1e-8, 1e-6, 9e-6, 1e-5, 1e-4, 1e-2, 1.0, 300.0], dtype=torch.float64)
    gamma = torch.linspace(-2, 2, len(var), dtype=torch.float64)
    ours = model_arithmetic(torch.nn.BatchNorm2d(1, eps=1e-6))
    for name in READERS:
        reader = arithmetic(name)
        g, v = convert_stats(gamma, var, ours, reader)
        assert (v >= 0).all()
        np.testing.assert_allclose(g / reader.denominator(v), gamma / ours.denominator(var), rtol=1e-12)
        g2, v2 = convert_stats(g, v, reader, ours)           # and back, as loading does
        np.testing.assert_allclose(g2 / ours.denominator(v2), gamma / ours.denominator(var), rtol=1e-12)
    # AlexeyAB's floor sqrt(1e-5) is above ours: small variances go to 0 and gamma shrinks
    g, v = convert_stats(gamma, var, ours, arithmetic("alexeyab"))
    assert v[0] == 0 and g[0] != gamma[0] and v[-1] == pytest.approx(300.0 - 9e-6)


def test_header_revision_names_the_reader(trained):
    _, files = trained
    revisions = {"opencv": OPENCV_REVISION, "alexeyab": 5, "pjreddie": 0}   # AlexeyAB writes 0.2.5, pjreddie 0.2.0
    for reader, path in files.items():
        assert header(path) == [0, 2, revisions[reader]]
        assert reader_from_header(header(path)) == reader
        assert Darknet(CFG).load_darknet_weights(path).read_as == reader
    assert reader_from_header([0, 2, 7]) == "opencv"   # a revision nobody writes: no conversion
    fresh = Darknet(CFG)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(SlimError, match="pass one of opencv, alexeyab, pjreddie"):
        fresh.load_darknet_weights(files["opencv"], reader="darknet")
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())   # refused before any copy


def test_written_file_is_the_trained_model_only_in_its_readers_arithmetic(trained):
    model, files = trained
    x = random_input(SIZE)
    for written_for, path in files.items():
        for reader in READERS:
            diff = reader_difference(model, CFG, path, reader, x)
            if reader == written_for:
                assert diff <= EXACT, (written_for, reader, diff)
            else:
                assert diff > TOLERANCE, (written_for, reader, diff)   # the gap these variances open


def test_loading_a_readers_file_reproduces_that_reader(trained):
    """Each file loaded by its header computes what its reader computes; an override reads it as another."""
    _, files = trained
    x = torch.from_numpy(random_input(SIZE)).double()
    for reader, path in files.items():
        for read_as in (None, "opencv", "pjreddie"):
            loaded = load_model(CFG, path, reader=read_as).double().eval()
            with torch.no_grad():
                ours = loaded.forward_raw(x)
                theirs = reader_model(CFG, path, read_as or reader).forward_raw(x)
            for a, b in zip(ours, theirs):
                assert float((a - b).abs().max()) <= EXACT * max(1.0, float(b.abs().max())), (reader, read_as)


def test_opencv_runs_its_own_file_as_the_trained_model_and_our_float64_opencv(trained):
    """The float64 re-implementation is checked against a real reader: OpenCV on every file."""
    model, files = trained
    tolerance = TOLERANCE
    assert max_raw_difference(model, CFG, files["opencv"], SIZE) <= tolerance
    assert max_raw_difference(model, CFG, files["alexeyab"], SIZE) > tolerance
    for path in files.values():
        as_opencv = reader_model(CFG, path, "opencv").float()
        assert max_raw_difference(as_opencv, CFG, path, SIZE) <= tolerance


def run(script, *flags, cwd):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *flags], capture_output=True, text=True,
                          cwd=cwd, timeout=HANG_LIMIT)


def test_convert_writes_for_the_named_reader_and_reads_with_an_override(trained, tmp_path):
    model, files = trained
    out = str(tmp_path / "for-alexeyab.weights")
    proc = run("convert.py", "--cfg", CFG, "--weights", files["opencv"], "--out", out, "--reader", "alexeyab", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "for AlexeyAB Darknet" in proc.stdout and header(out) == [0, 2, 5]
    assert reader_difference(model, CFG, out, "alexeyab", random_input(SIZE)) <= EXACT
    # the opencv file read as if pjreddie had written it: its statistics change meaning
    back = str(tmp_path / "as-pjreddie.weights")
    proc = run("convert.py", "--cfg", CFG, "--weights", files["opencv"], "--out", back, "--input-reader", "pjreddie",
               "--reader", "pjreddie", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert open(back, "rb").read()[20:] == open(files["opencv"], "rb").read()[20:]
    bad = run("convert.py", "--cfg", CFG, "--weights", files["opencv"], "--out", str(tmp_path / "x.weights"),
              "--reader", "darknet", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--reader" in bad.stderr
    assert not (tmp_path / "x.weights").exists()


def test_prune_records_the_reader_and_checks_its_arithmetic(trained, tmp_path):
    _, files = trained
    proc = run("normal_prune.py", "--cfg", CFG, "--weights", files["pjreddie"], "--percent", "0.3", "--img-size",
               str(SIZE), "--latency-runs", "0", "--reader", "alexeyab", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["reader"] == "alexeyab" and summary["input_read_as"] == "pjreddie"
    assert summary["reader_max_diff"] <= EXACT and summary["opencv_max_diff"] <= summary["opencv_tolerance"]
    assert header(summary["out_weights"]) == [0, 2, 5]
    assert "AlexeyAB Darknet's BN arithmetic (float64)" in proc.stdout


def test_train_writes_its_weights_for_the_named_reader(tmp_path):
    from yoloslim.darknet.load import model_from_checkpoint
    from yoloslim.data.synthetic import generate
    generate(str(tmp_path / "shapes"), n_train=4, n_val=2, img_size=SIZE, seed=0, workers=1, progress=False)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--cfg", CFG, "--data",
                           str(tmp_path / "shapes" / "shapes.data"), "--epochs", "1", "--img-size", str(SIZE),
                           "--batch-size", "2", "--workers", "0", "--quiet", "--out", str(out), "--reader", "alexeyab"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=HANG_LIMIT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    weights = str(out / "last.weights")
    assert header(weights) == [0, 2, 5]
    model = model_from_checkpoint(str(out / "last.pt"))
    assert reader_difference(model, CFG, weights, "alexeyab", random_input(SIZE)) <= EXACT
