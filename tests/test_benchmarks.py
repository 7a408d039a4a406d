"""benchmarks/run_benchmarks.py as a user runs it: the --quick smoke run on yolov3-tiny, every section."""
import hashlib
import json
import os
import subprocess
import sys

import pytest
from conftest import HANG_LIMIT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SCRIPT = os.path.join("benchmarks", "run_benchmarks.py")


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest() if os.path.exists(path) else None


def test_quick_run_writes_every_section_and_judges_every_row(coco_tiny, tmp_path):
    checked_in = digest(os.path.join(ROOT, "BENCHMARKS.md"))
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--models", "tiny", "--work", str(tmp_path / "work"),
                           "--threads", "1"], cwd=ROOT, capture_output=True, text=True, timeout=HANG_LIMIT, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "work" / "BENCHMARKS.md"                     # --quick never writes the repo's report
    assert digest(os.path.join(ROOT, "BENCHMARKS.md")) == checked_in
    report = out.read_text()
    results = json.load(open(tmp_path / "work" / "results" / "results.json"))
    rows = results["models"]["tiny"]["rows"]
    assert [r["method"] for r in rows] == ["tiny (= normal)", "regular 2^n", "regular x8", "filter L1"]
    original = results["models"]["tiny"]["original"]
    for r in rows:
        assert r["params"] < original["params"] and r["opencv_ms"] > 0 and r["opencv_ms_original"] > 0
        assert 0 <= r["mAP50_kd"] <= 1 and 0 <= r["mAP50_plain"] <= 1
        # one table row per method: four targets, each with its measured value and a verdict
        line, = [ln for ln in report.splitlines() if ln.startswith(f"| {r['method']} |") and "met**" in ln]
        assert line.count("met**") == 4, line
        if "not met" in line:
            assert f"- {r['method']}, not met (" in report and "tried" in report
    x8 = next(r for r in rows if r["method"] == "regular x8")
    assert all(c["filters"] % 8 == 0 for c in read_convs(x8["pair"][0]) if not c["head"])
    for section in ("## Targets", "## Ratio sweep", "## Iterative against one-shot", "## Input size",
                    "## Prune surgery time", "## Beside the earlier toolkits' published figures", "smoke run"):
        assert section in report
    for figure in ("ratio_sweep.png", "gamma_before_after.png"):
        path = tmp_path / "work" / "results" / figure
        assert path.stat().st_size > 1000 and f"results/{figure}" in report
    again = subprocess.run([sys.executable, SCRIPT, "--quick", "--report-only", "--work", str(tmp_path / "work"),
                            "--out", str(tmp_path / "work" / "again.md")], cwd=ROOT, capture_output=True, text=True, timeout=HANG_LIMIT)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "work" / "again.md").read_text() == report          # the report is a function of results.json
    it, = results["iterative"]
    assert it["history"][-1]["params"] == pytest.approx(it["one_shot"]["params"], rel=0.05)


def read_convs(cfg):
    from yoloslim.darknet.cfg import parse_model_cfg
    defs = parse_model_cfg(cfg)[1:]
    return [{"filters": int(d["filters"]), "head": i + 1 < len(defs) and defs[i + 1]["type"] == "yolo"}
            for i, d in enumerate(defs) if d["type"] == "convolutional"]


@pytest.mark.parametrize("args, named", [(["--models", "yolov9"], "--models"),
                                         (["--latency-runs", "0"], "--latency-runs"),
                                         (["--jobs", "0"], "--jobs"),
                                         (["--out", "{file}/B.md"], "--out"),
                                         (["--figures", "{file}"], "--figures"),
                                         (["--report-only", "--figures", "{tmp}/empty"], "results.json")])
def test_bad_arguments_are_one_line_errors(args, named, tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    args = [a.format(file=tmp_path / "file", tmp=tmp_path) for a in args]
    proc = subprocess.run([sys.executable, SCRIPT, "--work", str(tmp_path / "work"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=HANG_LIMIT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"{os.path.basename(SCRIPT)}: error:")
              or line.startswith("error:") or "error:" in line]
    assert len(errors) == 1 and named in errors[0], proc.stderr


def test_report_only_refuses_results_from_another_version_in_one_line(tmp_path):
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "results.json").write_text(json.dumps({"command": "x", "models": {"tiny": {"spec": "tiny"}}}))
    out = tmp_path / "B.md"
    proc = subprocess.run([sys.executable, SCRIPT, "--report-only", "--figures", str(figures), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=HANG_LIMIT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("error:") == 1 and "results.json" in proc.stderr and "without --report-only" in proc.stderr
    assert not out.exists()


def test_each_target_is_judged_from_its_measured_value():
    from bench_report import judge
    original = {"params": 100, "GFLOPs": 2.0, "mAP50": 0.6}
    targets = {"params_cut": 0.5, "speedup": 1.5, "max_drop": 0.01}
    good = {"params": 40, "GFLOPs": 1.0, "opencv_ms_original": 10.0, "opencv_ms": 5.0,
            "mAP50_kd": 0.595, "mAP50_plain": 0.58}
    verdicts = judge(good, original, targets)
    assert [met for *_, met in verdicts] == [True, True, True, True]
    assert verdicts[2][2] == "-0.0050 (distilled)"            # the better fine-tune is the one judged
    bad = {**good, "params": 55, "GFLOPs": 0.5, "opencv_ms": 8.0, "mAP50_kd": 0.58, "mAP50_plain": 0.585}
    verdicts = judge(bad, original, targets)
    assert [met for *_, met in verdicts] == [False, False, False, False]
    assert verdicts[2][2] == "-0.0150 (plain)" and verdicts[3][2] == "0.31"
