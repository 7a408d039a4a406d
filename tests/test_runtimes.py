"""Latency on the deployment runtimes (interleaved, threads set), OpenVINO IR export, and INT8
export with its drift gate: the library in-process, every command line as a user runs it."""
import glob
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from conftest import HANG_LIMIT, ROOT
from yoloslim.darknet.model import Darknet
from yoloslim.darknet.load import load_model
from yoloslim.deploy import latency
from yoloslim.deploy.latency import RUNTIMES, Timing, compare, interleave
from yoloslim.deploy.measure import randomize_weights

SIZE = 64
CFG = ("[net]\nwidth=64\nheight=64\nchannels=3\n"
       + "".join(f"[convolutional]\nbatch_normalize=1\nfilters={f}\nsize=3\nstride={s}\npad=1\nactivation=leaky\n"
                 for f, s in ((16, 1), (32, 2), (64, 2), (64, 1)))
       + "[convolutional]\nfilters=30\nsize=1\nactivation=linear\n"
       + "[yolo]\nmask=0,1,2\nanchors=4,6, 10,12, 20,18\nclasses=5\nnum=3\n")   # the synthetic set's 5 classes


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A small untrained model (cfg + .weights) and a folder of noise images of several shapes."""
    root = tmp_path_factory.mktemp("runtimes")
    cfg, weights = str(root / "m.cfg"), str(root / "m.weights")
    with open(cfg, "w") as f:
        f.write(CFG)
    randomize_weights(Darknet(cfg), seed=3).save_darknet_weights(weights)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for k in range(6):
        cv2.imwrite(str(images / f"{k}.png"), (rng.random((40 + 8 * k, 80, 3)) * 255).astype(np.uint8))
    return {"root": root, "cfg": cfg, "weights": weights, "images": str(images)}


def run(script, *flags, env=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, flags)], cwd=ROOT,
                          capture_output=True, text=True, timeout=HANG_LIMIT, env=env)


def one_error_line(r, *needles):
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# ----------------------------------------------------------------------------- the latency module
def test_interleave_rotates_the_order_and_times_every_call():
    now, calls = [0.0], []

    def model(name, seconds):
        def call():
            calls.append(name)
            now[0] += seconds
        return call

    times = interleave({"a": model("a", 0.003), "b": model("b", 0.001), "c": model("c", 0.002)},
                       runs=4, warmup=2, clock=lambda: now[0])
    rounds = [calls[k:k + 3] for k in range(0, len(calls), 3)]
    assert len(rounds) == 6 and all(sorted(r) == ["a", "b", "c"] for r in rounds)   # once each per round
    assert [r[0] for r in rounds] == ["a", "b", "c", "a", "b", "c"]                  # the order rotates
    assert times == {"a": pytest.approx([3.0] * 4), "b": pytest.approx([1.0] * 4), "c": pytest.approx([2.0] * 4)}


def test_timing_is_the_median_and_percentiles_of_the_runs():
    t = Timing.of([5.0, 1.0, 4.0, 2.0, 3.0, 100.0])
    assert (t.median, t.runs) == (3.5, 6)
    assert t.p10 == pytest.approx(1.5) and t.p90 == pytest.approx(52.5)   # linear between 5 and 100


def test_compare_runs_the_models_interleaved_on_the_threads_asked(monkeypatch, ws):
    calls, seen_threads = [], set()

    def recording_loader(d, img_size, threads, work):
        name = "pair" if d.cfg else "model"

        def call():
            calls.append(name)
            seen_threads.add(torch.get_num_threads())
        return call

    monkeypatch.setitem(latency.LOADERS, "torch", recording_loader)
    before = torch.get_num_threads()
    model = load_model(ws["cfg"], ws["weights"])
    timed = compare({"pair": (ws["cfg"], ws["weights"]), "model": model}, "torch", threads=3, runs=5, warmup=2)
    assert calls == ["pair", "model", "model", "pair"] * 3 + ["pair", "model"]     # never back to back
    assert seen_threads == {3} and torch.get_num_threads() == before               # set, then restored
    assert {k: t.runs for k, t in timed.items()} == {"pair": 5, "model": 5}


COMPARE_CHILD = """
import json, sys
from yoloslim.darknet.load import load_model
from yoloslim.deploy.latency import compare
cfg, weights, runtime = sys.argv[1:4]
timed = compare({"pair": (cfg, weights), "model": load_model(cfg, weights)}, runtime, threads=1, runs=3, warmup=1)
print(json.dumps({k: [t.runs, t.p10, t.median, t.p90] for k, t in timed.items()}))
"""


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_compare_times_each_runtime_from_a_pair_and_a_model(runtime, ws):
    # in a child process: OpenVINO's thread pool beside torch's, in the long-lived test process,
    # is not something a user's process ever holds, and a crash there would end the whole suite
    proc = subprocess.run([sys.executable, "-c", COMPARE_CHILD, ws["cfg"], ws["weights"], runtime], cwd=ROOT,
                          capture_output=True, text=True, timeout=HANG_LIMIT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    timed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(timed) == {"pair", "model"}
    for runs, p10, median, p90 in timed.values():
        assert runs == 3 and 0 < p10 <= median <= p90


def test_a_missing_runtime_package_is_one_line(monkeypatch, ws):
    monkeypatch.setitem(sys.modules, "openvino", None)   # import openvino now raises ImportError
    with pytest.raises(latency.RuntimeMissing, match=r"needs the openvino package, which is not installed; pip install"):
        compare({"m": (ws["cfg"], ws["weights"])}, "openvino")
    shadow = ws["root"] / "shadow"
    shadow.mkdir(exist_ok=True)
    (shadow / "openvino.py").write_text("raise ImportError('No module named openvino')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow)}
    out = ws["root"] / "pruned-missing"
    r = run("normal_prune.py", "--cfg", ws["cfg"], "--weights", ws["weights"], "--percent", "0.3",
            "--runtime", "opencv,openvino", "--out", out, env=env)
    one_error_line(r, "--runtime", "pip install 'openvino'")
    assert not out.exists()


def test_prune_script_times_both_models_on_each_runtime_asked(ws):
    out = ws["root"] / "pruned"
    r = run("normal_prune.py", "--cfg", ws["cfg"], "--weights", ws["weights"], "--percent", "0.3",
            "--runtime", "opencv,onnxruntime,openvino", "--threads", "1", "--latency-runs", "2", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "interleaved run by run, 1 thread(s) set in each runtime (opencv, onnxruntime, openvino)" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["latency"] == {"runtimes": ["opencv", "onnxruntime", "openvino"], "threads": 1, "runs": 2,
                                  "warmup": 5, "img_size": SIZE}
    for side in ("before", "after"):
        assert all(summary[side][f"{rt}_ms"] > 0 for rt in ("opencv", "onnxruntime", "openvino"))
        assert "torch_ms" not in summary[side]
    assert "| openvino ms" in r.stdout and "| onnxruntime ms" in r.stdout


# ----------------------------------------------------------------------------- export
IR_CHILD = """
import sys
import numpy as np
import openvino as ov
path, x_path, out_path = sys.argv[1:4]
compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
np.save(out_path, np.asarray(compiled({0: np.load(x_path)})[compiled.outputs[0]]))
"""


def detections_in(path, x):
    if path.endswith(".xml"):   # OpenVINO in a child process, as in test_compare_times_each_runtime_...
        np.save(path + ".x.npy", x)
        proc = subprocess.run([sys.executable, "-c", IR_CHILD, path, path + ".x.npy", path + ".y.npy"],
                              capture_output=True, text=True, timeout=HANG_LIMIT)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return np.load(path + ".y.npy")
    import onnxruntime as ort
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(["detections"], {"images": x})[0]


@pytest.mark.parametrize("fmt,suffix", [("openvino", ".xml"), ("onnx", ".onnx")])
def test_export_round_trips_in_the_runtime(fmt, suffix, ws):
    out = str(ws["root"] / f"exported{suffix}")
    r = run("export.py", "--cfg", ws["cfg"], "--weights", ws["weights"], "--format", fmt, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "vs PyTorch max relative diff" in r.stdout
    x = np.random.default_rng(5).random((1, 3, SIZE, SIZE), dtype=np.float32)
    with torch.no_grad():
        ours = load_model(ws["cfg"], ws["weights"]).eval()(torch.from_numpy(x))[0].numpy()
    theirs = detections_in(out, x)
    assert theirs.shape == ours.shape
    assert float((np.abs(ours - theirs) / np.maximum(1.0, np.abs(ours))).max()) < 1e-4
    if fmt == "openvino":
        assert os.path.getsize(out[:-4] + ".bin") > 4 * 30 * 64   # float32 weights, not halved


@pytest.mark.parametrize("flags,needles", [
    (["--format", "openvino", "--out", "{root}/x.onnx"], ["must end in .xml"]),
    (["--out", "{root}/x.onnx", "--int8"], ["--int8 needs --calib"]),
    (["--out", "{root}/x.onnx", "--calib", "{images}"], ["--calib only applies with --int8"]),
    (["--out", "{root}/x.onnx", "--max-drop", "0.1"], ["--max-drop only applies with --int8"]),
])
def test_export_refuses_what_it_would_not_do(flags, needles, ws):
    flags = [f.format(root=ws["root"], images=ws["images"]) for f in flags]
    r = run("export.py", "--cfg", ws["cfg"], "--weights", ws["weights"], *flags)
    one_error_line(r, *needles)
    assert not glob.glob(str(ws["root"] / "x.*")) and not glob.glob(str(ws["root"] / ".x.*"))


# ----------------------------------------------------------------------------- INT8
def test_int8_writes_a_quantized_model_that_onnxruntime_runs(ws):
    import onnx
    out = str(ws["root"] / "int8.onnx")
    r = run("export.py", "--cfg", ws["cfg"], "--weights", ws["weights"], "--out", out, "--int8",
            "--calib", ws["images"], "--max-drop", "1", "--threads", "1", "--latency-runs", "3")
    assert r.returncode == 0, r.stderr
    assert "agreement mAP@0.5: fp32 1.0000, int8" in r.stdout and "int8 on onnxruntime: x" in r.stdout
    graph = onnx.load(out).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(int8_weights) == 4          # every conv but the one feeding [yolo], which stays float
    x = np.random.default_rng(5).random((1, 3, SIZE, SIZE), dtype=np.float32)
    assert detections_in(out, x).shape == (1, 3 * 16 * 16, 10)


def test_int8_with_labels_reports_map_of_both_models(ws):
    from test import evaluate
    from yoloslim.data.synthetic import generate
    data_dir = ws["root"] / "shapes"
    generate(str(data_dir), n_train=2, n_val=6, img_size=SIZE, workers=1, progress=False)
    data = str(data_dir / "shapes.data")
    out = ws["root"] / "labelled-int8.onnx"
    r = run("export.py", "--cfg", ws["cfg"], "--weights", ws["weights"], "--out", out, "--int8", "--calib",
            ws["images"], "--data", data, "--max-drop", "1", "--latency-runs", "0")
    assert r.returncode == 0, r.stderr
    fp32 = float(evaluate(load_model(ws["cfg"], ws["weights"]), data, img_size=SIZE, verbose=False,
                          progress=False)["mAP50"])
    assert f"int8 (percentile ranges from up to 100 images of {ws['images']}): mAP@0.5: fp32 {fp32:.4f}, int8" in r.stdout
    assert out.exists()


def test_int8_past_max_drop_is_refused_and_writes_nothing(ws):
    out = ws["root"] / "drifted.onnx"
    r = run("export.py", "--cfg", ws["cfg"], "--weights", ws["weights"], "--out", out, "--int8",
            "--calib", ws["images"], "--max-drop", "0", "--latency-runs", "0")
    one_error_line(r, "drifts too far", "--max-drop 0", str(out))
    agreement = float(r.stdout.split("int8 ")[-1].split()[0])
    assert agreement < 1.0                   # it did drift: the refusal is the gate, not a fixed answer
    assert not out.exists() and not glob.glob(str(ws["root"] / ".drifted.onnx.*"))


def test_runtime_speedup_benchmark_writes_its_table(ws):
    out = ws["root"] / "speedup.md"
    pair = [ws["cfg"], ws["weights"]]
    r = run("benchmarks/runtime_speedup.py", "--original", *pair, "--pruned", *pair, "--threads", "1",
            "--runs", "2", "--warmup", "0", "--out", out)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "FLOP cut x1.00 (at 64 px)" in text and "median of 2 runs" in text and "Machine:" in text
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and not line.startswith("| runtime |")]
    assert sorted({row[0][2:] for row in rows}) == sorted(RUNTIMES)
    assert all(float(row[3]) > 0 for row in rows) and len(rows) == 2 * len(RUNTIMES)
