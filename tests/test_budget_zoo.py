"""benchmarks/budget_zoo.py as a user runs it, at a toy size on one cfg: the budget is placed
between the floor and the unpruned model, the prune script runs to it, and the page says what
the written model measured. No assertion depends on a timing."""
import json
import os
import subprocess
import sys

from conftest import HANG_LIMIT, cfg_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(tmp_path, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, os.path.join("benchmarks", "budget_zoo.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=HANG_LIMIT, env=env)


def test_a_cfg_is_pruned_to_a_budget_between_its_floor_and_itself(tmp_path):
    out = tmp_path / "zoo.md"
    proc = run_script(tmp_path, "--cfgs", cfg_path("yolov3-tiny"), "--runtime", "opencv", "--latency-runs", "1",
                      "--work", str(tmp_path / "work"), "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = json.loads((tmp_path / "zoo.json").read_text())["rows"]    # no [shortcut]: normal_prune only
    assert row["cfg"] == "yolov3-tiny" and row["policy"] == "normal"
    assert row["floor_ms"] < row["predicted_original_ms"] and 0 < row["target_ms"] < row["timed_ms"]
    if row["returncode"] == 0:      # the script wrote its pair and timed it
        assert row["measured_ms"] > 0 and (tmp_path / "work" / "yolov3-tiny-normal" / "summary.json").is_file()
    else:                           # or refused in one line, which the page quotes
        assert row["returncode"] == 2 and row["error"].startswith("error: ")
    text = out.read_text()
    assert "| yolov3-tiny | normal_prune.py |" in text and "budgets met" in text
    again = run_script(tmp_path, "--report-only", "--out", str(out))
    assert again.returncode == 0 and out.read_text() == text


def test_a_used_work_folder_is_refused_in_one_line(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "old.txt").write_text("a finished run")
    proc = run_script(tmp_path, "--cfgs", cfg_path("yolov3-tiny"), "--work", str(tmp_path / "work"),
                      "--out", str(tmp_path / "zoo.md"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "not empty" in proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "zoo.md").exists()
