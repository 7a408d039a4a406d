"""benchmarks/photos_deploy.py as a user runs it on two finished slim runs (the jobs themselves
are slim.py's, tested in test_slim*.py): every model evaluated and timed at every size, int8
copies beside them, the goals judged; and the goal verdicts from made-up numbers. No assertion
depends on a timing."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import HANG_LIMIT, cfg_path
from owndata_sets import write_darknet_data, write_yolo_folder

import photos_deploy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}


def fake_run(folder, base, percent, ms, budget=None):
    """A finished slim run folder: the base pair in train/, a pruned final pair, report.json."""
    from yoloslim.prune.engine import POLICIES, prune, write_pruned
    os.makedirs(os.path.join(folder, "train"))
    shutil.copy(base[0], os.path.join(folder, "train", "model.cfg"))
    shutil.copy(base[1], os.path.join(folder, "train", "last.weights"))
    from yoloslim.darknet.load import load_model
    compact, _ = prune(load_model(*base).eval(), POLICIES["tiny"], percent, 0.05)
    os.makedirs(os.path.join(folder, "final"))
    write_pruned(compact, os.path.join(folder, "final"), "tiny-finetuned", "opencv")
    report = {"command": f"python slim.py --data d --percent {percent}", "percent": percent, "job_seconds": 60.0,
              "rows": {"pruned + fine-tuned": {"onnxruntime_ms": ms}},
              "budget": {"target": {"ms": budget}} if budget else None}
    with open(os.path.join(folder, "report.json"), "w") as f:
        json.dump(report, f)
    with open(os.path.join(folder, "report.md"), "w") as f:
        f.write(f"# slim.py run\n\nCommand: `{report['command']}`\n")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from yoloslim.darknet.cfg import write_model_cfg
    from yoloslim.darknet.model import Darknet
    from yoloslim.deploy.measure import randomize_weights
    from yoloslim.train.transfer import cfg_for_data
    root = tmp_path_factory.mktemp("photos")
    data = write_darknet_data(write_yolo_folder(str(root / "set")))
    defs = cfg_for_data(cfg_path("yolov3-tiny"), 2)
    defs[0]["width"] = defs[0]["height"] = 64
    cfg, weights = str(root / "base.cfg"), str(root / "base.weights")
    write_model_cfg(defs, cfg)
    torch.manual_seed(0)
    randomize_weights(Darknet(cfg), seed=1).save_darknet_weights(weights)
    fake_run(str(root / "ratio"), (cfg, weights), 0.5, 4.0)
    fake_run(str(root / "budget"), (cfg, weights), 0.3, 4.2, budget=4.0)
    return {"root": root, "data": data, "base": (cfg, weights)}


def run_script(*args, cache=None):
    """The script as a user runs it; ``cache``: its XDG_CACHE_HOME (the latency tables)."""
    env = {**ENV, "XDG_CACHE_HOME": str(cache)} if cache else ENV
    return subprocess.run([sys.executable, os.path.join("benchmarks", "photos_deploy.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=HANG_LIMIT, env=env)


def test_two_finished_runs_are_evaluated_and_timed_at_every_size(runs, tmp_path):
    root = runs["root"]
    out = tmp_path / "photos.md"
    proc = run_script("--data", runs["data"], "--ratio-run", str(root / "ratio"), "--budget-run", str(root / "budget"),
                      "--run", str(tmp_path / "unused"), "--img-size", "64", "--deploy-size", "96", "--runs", "1",
                      "--calib-images", "2", "--frontier-ratios", "0.3,0.5", "--out", str(out), cache=tmp_path / "xdg")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not (tmp_path / "unused").exists()          # both runs were finished: no job ran
    text = out.read_text()
    found = json.loads((tmp_path / "photos.json").read_text())
    assert set(found["results"]) == {"64", "96"}
    for size, res in found["results"].items():
        assert set(res["mAP"]) == {"base", "ratio", "budget", "ratio int8", "budget int8"}
        assert all(0.0 <= v <= 1.0 for v in res["mAP"].values())
        assert "base" in res["ms"]["opencv"] and "ratio int8" in res["ms"]["onnxruntime"]
        assert "ratio int8" not in res["ms"]["opencv"]            # OpenCV does not run the QDQ model
        assert res["flops"]["ratio"] < res["flops"]["budget"] < res["flops"]["base"]
        assert f"## At {size} px" in text
    assert "## Goals (issue 20)" in text and "python slim.py --data d --percent 0.5" in text
    assert (tmp_path / "photos_runs" / "ratio.md").exists() and "took 1.0 and 1.0 min" in text
    assert "| --target-ms lands within 10% of the budget | met | 4.20 ms for 4.00 ms (+5.0%" in text
    frontier = found["meta"]["frontier"]
    assert sorted((r["kind"], r["ratio"]) for r in frontier) == sorted(
        (k, r) for k in ("ratio", "planner", "planner, unbounded") for r in (0.3, 0.5))
    by = {(r["kind"], r["ratio"]): r for r in frontier}
    for ratio in (0.3, 0.5):      # the planner's plans are predicted at most the ratio plan's ms
        for kind in ("planner", "planner, unbounded"):
            assert by[(kind, ratio)]["predicted_ms"] <= by[("ratio", ratio)]["predicted_ms"] + 1e-9
    assert by[("ratio", 0.5)]["flops"] < by[("ratio", 0.3)]["flops"]
    assert "## The frontier before fine-tuning, at 64 px on ONNX Runtime" in text
    assert (tmp_path / "photos_deploy_frontier.png").stat().st_size > 1000
    (tmp_path / "photos_deploy_frontier.png").unlink()
    proc = run_script("--report-only", "--out", str(out))       # the page again from its .json, nothing run
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == text and (tmp_path / "photos_deploy_frontier.png").exists()


def test_runs_pruned_from_different_base_models_are_refused(runs, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(runs["root"] / "budget", other)
    with open(other / "train" / "last.weights", "ab") as f:
        f.write(b"\0\0\0\0")
    proc = run_script("--data", runs["data"], "--ratio-run", str(runs["root"] / "ratio"), "--budget-run", str(other),
                      "--run", str(tmp_path / "unused"), "--img-size", "64", "--out", str(tmp_path / "p.md"))
    assert proc.returncode == 2, proc.stdout
    assert proc.stderr.startswith("error: ") and "pruned different base models" in proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "p.md").exists()


def test_a_run_folder_without_its_final_pair_is_refused(runs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(runs["root"] / "ratio", broken)
    shutil.rmtree(broken / "final")
    proc = run_script("--data", runs["data"], "--ratio-run", str(broken), "--budget-run", str(runs["root"] / "budget"),
                      "--run", str(tmp_path / "unused"), "--img-size", "64", "--out", str(tmp_path / "p.md"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"error: {broken}: not a finished slim.py run folder" in proc.stderr and not (tmp_path / "p.md").exists()


def timing(ms):
    return {"median": ms, "p10": ms, "p90": ms}


def test_the_goals_are_judged_on_the_measured_rows():
    """Made-up numbers. At 256 the budget model is the fastest (x2.5 on OpenCV) but loses 0.02, so
    the goal is judged on the ratio model (x2.0, losing 0.005); the budget's int8 copy is x1.5 over
    its float model but loses 0.2, the ratio's x2.0 losing 0.008. At 416 the best is x1.8."""
    results = {
        256: {"mAP": {"base": 0.70, "ratio": 0.695, "budget": 0.68, "ratio int8": 0.692, "budget int8": 0.5},
              "ms": {"opencv": {"base": timing(10.0), "ratio": timing(5.0), "budget": timing(4.0)},
                     "onnxruntime": {"base": timing(8.0), "ratio": timing(4.0), "budget": timing(4.5),
                                     "ratio int8": timing(2.0), "budget int8": timing(3.0)}}},
        416: {"mAP": {"base": 0.60, "ratio": 0.60, "budget": 0.60},
              "ms": {"opencv": {"base": timing(9.0), "ratio": timing(5.0), "budget": timing(6.0)}}}}
    rows = photos_deploy.verdicts(results, 256, {"target": 4.0, "measured": 4.5, "runtime": "onnxruntime"})

    def verdict(goal, measured):
        found = [v for g, v, m in rows if goal in g and m.startswith(measured)]
        assert len(found) == 1, (goal, measured, rows)
        return found[0]

    assert verdict("yolov3-tiny >= x2 on its best runtime at <= 0.01 loss, 256 px",
                   "x2.00 (ratio, OpenCV DNN), mAP -0.0050") == "met"
    assert verdict("yolov3-tiny >= x2 on its best runtime at <= 0.01 loss, 416 px", "x1.80 (ratio") == "not met"
    assert verdict("INT8 >= x1.5 over the float pruned model at <= 0.01 loss (vs the base), 256 px",
                   "x2.00 (ratio int8, ONNX Runtime), mAP -0.0080") == "met"
    assert verdict("latency-aware against the ratio", "mAP 0.6800 against 0.6950 (-0.0150) at 256 px") == "not better"
    assert verdict("--target-ms lands within 10% of the budget", "4.50 ms for 4.00 ms (+12.5%") == "not met"
    assert "runs at x0.89 the ratio model's speed" in rows[-1][2]
    assert len(rows) == 5


def test_help_and_a_bad_runtime(tmp_path):
    proc = run_script("--help")
    assert proc.returncode == 0 and "--ratio-run" in proc.stdout and "--deploy-size" in proc.stdout
    proc = run_script("--runtime", "tensorrt", "--out", str(tmp_path / "p.md"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "tensorrt" in proc.stderr
