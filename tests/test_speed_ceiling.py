"""benchmarks/speed_ceiling.py as a user runs it, at a toy size: every runtime's floor plans
timed against the original and written down. No assertion depends on a timing."""
import json
import os
import subprocess
import sys

from conftest import HANG_LIMIT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}


def run_script(*args):
    return subprocess.run([sys.executable, os.path.join("benchmarks", "speed_ceiling.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=HANG_LIMIT, env=ENV)


def test_floor_plans_of_every_runtime_are_timed_and_written(tmp_path):
    from yoloslim.deploy.latency import installed
    proc = run_script("--models", "tiny", "--img-size", "64", "--runs", "1", "--out", str(tmp_path / "c.md"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((tmp_path / "c.json").read_text())["rows"]
    runtimes = [r for r in ("opencv", "onnxruntime", "openvino", "torch") if installed(r)]
    # the planner's multiple on each runtime, and 1 beside it where that is not 1
    expected = {(r, m) for r in runtimes for m in ({8, 1} if r != "opencv" else {1})}
    assert {(r["runtime"], r["multiple"]) for r in rows} == expected
    for r in rows:
        assert r["floor_flops"] < r["flops"] and r["floor_params"] < r["params"] and r["floor_ms"] > 0
    by = {(r["runtime"], r["multiple"]): r for r in rows}
    assert by[("onnxruntime", 1)]["floor_flops"] < by[("onnxruntime", 8)]["floor_flops"]
    text = (tmp_path / "c.md").read_text()
    assert "| tiny | tiny | ONNX Runtime | 8 (the planner's) |" in text and "ceiling speed-up" in text


def test_an_unknown_model_is_one_error_line(tmp_path):
    proc = run_script("--models", "tiny,yolov9", "--out", str(tmp_path / "c.md"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "yolov9" in proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "c.md").exists()
