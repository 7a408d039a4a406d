"""benchmarks/deploy_benchmarks.py (BENCHMARKS.md's third edition) as a user runs it: the report
rendered from a results dict, bad command lines, and the --quick smoke run on yolov3-tiny.
No assertion here depends on a timing."""
import argparse
import hashlib
import json
import math
import os
import re
import subprocess
import sys

import pytest
from conftest import HANG_LIMIT

import deploy_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join("benchmarks", "deploy_benchmarks.py")
# the script's own folder comes first on its sys.path: name this checkout's library explicitly, so a
# package installed from another checkout is not what gets tested
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest() if os.path.exists(path) else None


def timing(ms):
    return {"median": ms, "p10": ms * 0.9, "p90": ms * 1.1, "runs": 3}


def pair(original, pruned):
    return {"original": timing(original), "pruned": timing(pruned)}


def small_results():
    """Made-up numbers chosen so each goal's verdict is known: narrow reaches x5 on ONNX Runtime,
    tiny only x1.6, two cells fall below 0.8 of their FLOP cut, int8 gives x2 and x1.2, the planner
    lands 5 % over its budget."""
    narrow_rows = [{"method": "shortcut", "policy": "shortcut", "percent": 0.87, "blocks": 0, "slug": "shortcut",
                    "params": 100, "GFLOPs": 0.5, "flop_cut": 5.0, "removed_importance": 0.01,
                    "timing": {"opencv": pair(10.0, 4.0), "onnxruntime": pair(10.0, 2.0)}},
                   {"method": "layer+channel", "policy": "shortcut", "percent": 0.86, "blocks": 2,
                    "error": "no blocks to remove"}]
    tiny_rows = [{"method": "tiny (= normal)", "policy": "tiny", "percent": 0.35, "blocks": 0, "slug": "tiny_normal",
                  "params": 400, "GFLOPs": 1.0, "flop_cut": 1.7,
                  "removed_importance": 0.2, "timing": {"opencv": pair(8.0, 5.0), "onnxruntime": pair(8.0, 6.0)}}]
    models = {
        "tiny": {"title": "yolov3-tiny", "img_size": 416, "origin": "COCO", "synthetic": False, "rows": tiny_rows,
                 "original": {"params": 1000, "GFLOPs": 1.7, "timing": {"opencv": timing(8.0),
                                                                       "onnxruntime": timing(8.0)}}},
        "narrow": {"title": "narrow", "img_size": 416, "origin": "trained", "synthetic": False, "rows": narrow_rows,
                   "original": {"params": 1000, "GFLOPs": 2.5, "timing": {"opencv": timing(10.0),
                                                                         "onnxruntime": timing(10.0)}},
                   "training": {"folder": "runs/bench/narrow/train", "epochs": 60, "wall_min": 0.1, "cached": True}}}
    int8 = [{"model": "tiny", "method": "regular x8", "calibration": "10 photos",
             "agreement": {"score": 0.93, "images": 20, "reference_boxes": 40, "candidate_boxes": 41, "on": "photos"},
             "timing": {"onnxruntime": {"original": timing(8.0), "pruned": timing(5.0), "pruned int8": timing(2.5)}}},
            {"model": "narrow", "method": "regular x8", "calibration": "10 photos",
             "agreement": {"score": float("nan"), "images": 20, "reference_boxes": 0, "candidate_boxes": 0, "on": "x"},
             "timing": {"onnxruntime": {"original": timing(10.0), "pruned": timing(6.0), "pruned int8": timing(5.0)}}}]
    planner = [{"model": "narrow", "method": "shortcut", "runtime": "onnxruntime", "target_ms": 2.0, "plan_s": 3.0,
                "budget": {"predicted_ms": 1.9, "original_ms": 10.0, "target": {"ms": 2.0}, "removed_importance": 0.4,
                           "total_importance": 100.0, "removed_share": 0.004},
                "timing": {"original": timing(10.0), "gamma-only": timing(2.0), "latency-aware": timing(2.1)},
                "gamma-only": {"params": 100, "GFLOPs": 0.5, "flop_cut": 5.0, "removed_importance": 0.01},
                "latency-aware": {"params": 150, "GFLOPs": 0.6, "flop_cut": 4.2, "removed_importance": 0.004}}]
    kinds = {"first conv": 3.0, "stride-2 conv": 3.0, "stride-1 3x3 conv": 3.0, "1x1 conv": 0.8, "non-conv": 0.2}
    pruned_kinds = {"first conv": 2.0, "stride-2 conv": 1.0, "stride-1 3x3 conv": 0.6, "1x1 conv": 0.3, "non-conv": 0.1}
    profile = {"model": "narrow", "method": "shortcut", "runtime": "opencv", "img_size": 416,
               "original": {"total_ms": 10.0, "by_kind": kinds, "by_res": {"416x416": 3.0, "208x208": 4.0, "13x13": 3.0},
                            "gflops_by_kind": {k: 0.1 for k in kinds}, "gflops_by_res": {"416x416": 0.1}},
               "pruned": {"total_ms": 4.0, "by_kind": pruned_kinds,
                          "by_res": {"416x416": 2.0, "208x208": 1.0, "13x13": 1.0},
                          "gflops_by_kind": {k: 0.02 for k in kinds}, "gflops_by_res": {"416x416": 0.05}}}
    return {"command": "python benchmarks/deploy_benchmarks.py", "machine": "a CPU, 2 cores", "versions": "opencv 4",
            "runtimes": ["opencv", "onnxruntime"], "threads": 1, "runs": 3, "warmup": 1, "quick": False,
            "date": "2026-12-07 00:00 UTC", "wall_min": 12.5, "load": [0.5, 1.5], "models": models, "int8": int8,
            "planner": planner, "profile": profile, "second_edition_dir": "benchmarks/results"}


def test_the_report_judges_the_goals_and_explains_the_profile(tmp_path):
    results = small_results()
    verdicts = {goal: (verdict, measured) for goal, verdict, measured in deploy_report.goals(results)}
    assert verdicts["residual yolov3 >= x4 on ONNX Runtime"] == ("**met**", "narrow: best x5.00 (shortcut)")
    low = verdicts["speed-up >= 0.8 of the FLOP cut on every runtime"]
    assert low[0] == "**not met**" and "2 of 4" in low[1] and "0.50 (narrow shortcut, OpenCV DNN)" in low[1]
    assert verdicts["yolov3-tiny >= x2 on its best runtime"] == ("**not met**", "best x1.60 (tiny (= normal), OpenCV DNN)")
    assert verdicts["INT8 >= x1.5 on top of pruning (on the model's best runtime)"][0] == "**not met**"   # narrow x1.2
    assert verdicts["the planner's plan lands within 10% of the ms budget"][0] == "**met**"
    assert verdicts["mAP@0.5 loss <= 0.01 (every goal above)"][0] == "not measured here"

    out, figures = tmp_path / "B.md", tmp_path / "results"
    deploy_report.write_all(results, str(out), str(figures))
    text = out.read_text()
    assert "in **12.5 min**" in text and "**1 thread**" in text and "median of 3 timed runs" in text
    assert "| shortcut 0.87 + 0 blocks |" not in text and "| shortcut 0.87 |" in text
    assert "layer+channel 0.86 + 2 blocks: not pruned (no blocks to remove)" in text
    assert "| narrow | ONNX Runtime | 10.00 (9.00-11.00) | 6.00 (5.40-6.60) | 5.00 (4.50-5.50) | x1.20 | x2.00 | n/a" in text
    assert "0.0100 | " in text and "(planner's own count: 0.0040); predicted 1.90 ms" in text
    # first conv + stride-2: 6 of 10 ms before, 3 of 4 after; their pruned 3 ms cap the speed-up at x3.33
    assert "60% of the original's time and 75% of the pruned model's" in text and "x3.33" in text
    assert "(results/deploy_profile.png)" in text
    link, = set(re.findall(r"\[second edition\]\(([^)]+)\)", text))
    assert os.path.samefile(tmp_path / link, os.path.join(ROOT, "benchmarks", "results", "second_edition.md"))
    assert (figures / "deploy_profile.png").stat().st_size > 1000
    assert (figures / "deploy_benchmarks.md").read_text().count("## ") == text.count("## ")


def test_a_budget_the_planner_cannot_meet_is_a_row_and_a_missed_goal():
    results = small_results()
    results["planner"].append({"model": "tiny", "method": "tiny (= normal)", "runtime": "onnxruntime",
                               "target_ms": 5.0, "error": "--target-ms 5 ms cannot be met"})
    verdicts = {goal: (verdict, measured) for goal, verdict, measured in deploy_report.goals(results)}
    assert verdicts["the planner's plan lands within 10% of the ms budget"] == (
        "**not met**", "narrow: 2.10 ms for a 2.00 ms budget; tiny: no plan for a 5.00 ms budget")
    text = deploy_report.render(results)
    assert "- tiny (tiny (= normal), ONNX Runtime, budget 5.00 ms): the planner made no plan: --target-ms 5 ms" in text
    assert "| narrow | ONNX Runtime | 2.00 | latency-aware (shortcut) |" in text


def test_an_unmeasured_section_says_so():
    results = small_results()
    results.update(planner="skipped (--no-planner)", profile=None, int8=[], int8_note="Not measured: no runtime.")
    text = deploy_report.render(results)
    assert "Not measured: skipped (--no-planner)." in text and "Not measured: no runtime." in text
    assert "Not measured in this run" in text
    assert not math.isnan(deploy_report.speedup(results["models"]["tiny"]["rows"][0]["timing"]["opencv"]))


@pytest.mark.parametrize("args, named", [(["--models", "yolov9"], "--models"),
                                         (["--runs", "0"], "--runs"),
                                         (["--threads", "0"], "--threads"),
                                         (["--runtimes", "tensorrt"], "--runtimes"),
                                         (["--img-size", "0"], "--img-size"),
                                         (["--out", "{file}/B.md"], "--out"),
                                         (["--figures", "{file}"], "--figures"),
                                         (["--report-only", "--figures", "{tmp}/empty"], "deploy_results.json")])
def test_bad_arguments_are_one_line_errors(args, named, tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    args = [a.format(file=tmp_path / "file", tmp=tmp_path) for a in args]
    proc = subprocess.run([sys.executable, SCRIPT, "--work", str(tmp_path / "work"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=HANG_LIMIT, env=ENV)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("error:") and named in errors[0], proc.stderr


def test_quick_run_writes_the_report_and_results_under_its_work_folder(coco_tiny, tmp_path):
    checked_in = digest(os.path.join(ROOT, "BENCHMARKS.md"))
    work = tmp_path / "work"
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--models", "tiny", "--img-size", "128", "--runs", "2",
                           "--no-planner", "--work", str(work)], cwd=ROOT, capture_output=True, text=True,
                          timeout=HANG_LIMIT, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert digest(os.path.join(ROOT, "BENCHMARKS.md")) == checked_in        # --quick never writes the repo's report
    report = (work / "BENCHMARKS.md").read_text()
    results = json.load(open(work / "results" / "deploy_results.json"))
    assert (work / "results" / "deploy_benchmarks.md").stat().st_size > 0
    assert results["quick"] and results["threads"] == 1 and results["runs"] == 2
    tiny = results["models"]["tiny"]
    assert [r["method"] for r in tiny["rows"]] == ["tiny (= normal)", "regular 2^n", "regular x8", "filter L1"]
    for row in tiny["rows"]:           # no shortcut or layer rows: the graph of yolov3-tiny has neither
        assert row["params"] < tiny["original"]["params"] and row["flop_cut"] > 1
        assert set(row["timing"]) == set(results["runtimes"])
        assert all(t["pruned"]["runs"] == 2 for t in row["timing"].values())
        assert f"| {row['method']} {row['percent']:g} |" in report
    if {"onnxruntime", "openvino"} & set(results["runtimes"]):
        row, = results["int8"]
        assert row["method"] == "regular x8" and row["timing"]
        assert "## INT8 on top of pruning" in report
    assert "smoke run" in report and "skipped (--no-planner)" in report and "## Goals (issue 20)" in report
    again = subprocess.run([sys.executable, SCRIPT, "--quick", "--report-only", "--work", str(work),
                            "--out", str(work / "again.md")], cwd=ROOT, capture_output=True, text=True,
                           timeout=HANG_LIMIT, env=ENV)
    assert again.returncode == 0, again.stderr
    assert (work / "again.md").read_text() == report          # the report is a function of deploy_results.json


@pytest.fixture
def tiny_subject(tmp_path):
    """yolov3-tiny with seeded random weights at 64 px: the measuring code's path in seconds."""
    import deploy_models
    from bench_models import MODELS
    from yoloslim.darknet.load import load_model
    from yoloslim.deploy.measure import randomize_weights
    model = randomize_weights(load_model(os.path.join(ROOT, "cfg", "yolov3-tiny.cfg"), None, 64)).eval()
    subject = deploy_models.Subject("tiny", "yolov3-tiny", 64, model, MODELS["tiny"].methods[:1], "random")
    args = argparse.Namespace(work=str(tmp_path), runtimes=["torch", "opencv"], threads=1, runs=1, warmup=0,
                              planner_runtime="torch")
    return subject, args


def test_the_planner_rows_take_the_gamma_only_prunes_measured_ms_as_budget(tiny_subject, monkeypatch):
    """The section's own code with a stand-in planner (the real one builds latency tables, minutes): the
    budget passed is the gamma-only row's measured median, and both plans are counted alike."""
    import deploy_models
    from yoloslim.prune.engine import prune
    subject, args = tiny_subject
    asked = {}

    def plan_to_budget(model, policy, runtime, img_size, threads, target_ms=None, layer_keep=0.05, **more):
        asked.update(runtime=runtime, img_size=img_size, target_ms=target_ms, policy=policy.name)
        compact, plans = prune(model, policy, 0.2, layer_keep)
        return compact, plans, argparse.Namespace(predicted_ms=target_ms, original_ms=1.0, target={"ms": target_ms},
                                                  removed_importance=0.5, total_importance=2.0)

    monkeypatch.setattr(deploy_models, "plan_to_budget", plan_to_budget)
    result, original, pruned = deploy_models.measure_subject(args, subject)
    row, = result["rows"]
    assert set(row["timing"]) == {"torch", "opencv"} and row["flop_cut"] > 1
    found = deploy_models.planner_rows(args, subject, result, original, pruned)
    assert asked == {"runtime": "torch", "img_size": 64, "target_ms": row["timing"]["torch"]["pruned"]["median"],
                     "policy": "tiny"}
    assert found["gamma-only"]["removed_importance"] == row["removed_importance"]
    # the stand-in removes 20 % of the channels where gamma-only removed 35 %: less importance
    assert 0 < found["latency-aware"]["removed_importance"] < found["gamma-only"]["removed_importance"]
    assert found["budget"]["removed_share"] == 0.25 and set(found["timing"]) == {"original", "gamma-only",
                                                                                     "latency-aware"}
    assert "| tiny | PyTorch |" in deploy_report.planner_section({"planner": [found]})[-2]

    def unmeetable(*args, **kwargs):
        from yoloslim.errors import PruneError
        raise PruneError("--target-ms 0.01 ms cannot be met")

    monkeypatch.setattr(deploy_models, "plan_to_budget", unmeetable)
    refused = deploy_models.planner_rows(args, subject, result, original, pruned)
    assert refused["error"] == "--target-ms 0.01 ms cannot be met" and "timing" not in refused


def test_opencv_layer_names_map_to_darknet_layers_and_every_layer_is_profiled(tiny_subject):
    import deploy_models
    subject, args = tiny_subject
    assert [deploy_models.opencv_layer_index(n) for n in ("conv_12", "bn_12", "leaky_13", "permute_16", "x")] \
        == [12, 12, 12, 16, None]
    original, _, _, _ = deploy_models.prune_rows(args, subject)
    layers = deploy_models.opencv_profile({"original": (original.cfg, original.weights)}, 64, 1, 1, 0)["original"]
    kinds = deploy_models.layer_kinds(subject.model, 64)
    assert set(kinds) <= set(layers) and all(ms >= 0 for ms in layers.values())
    assert [k for k, _ in kinds.values()].count("first conv") == 1
    by_kind, by_res = deploy_models.grouped(layers, kinds)
    assert sum(by_kind.values()) == pytest.approx(sum(by_res.values())) == pytest.approx(sum(layers.values()))
    assert "64x64" in by_res and "stride-1 3x3 conv" in by_kind and "1x1 conv" in by_kind


def test_the_companion_benchmarks_results_join_the_goals_table(tmp_path):
    """photos_deploy's verdicts (accuracy after fine-tuning) and speed_ceiling's floor speed-ups,
    read from the results folder and linked from the page."""
    figures = tmp_path / "results"
    figures.mkdir()
    (figures / "photos_deploy.json").write_text(json.dumps({"verdicts": [
        ["yolov3-tiny >= x2 on its best runtime at <= 0.01 loss, 416 px", "met", "x2.40 (ratio, OpenCV DNN)"]]}))
    floor = {"model": "narrow", "policy": "shortcut", "runtime": "onnxruntime", "planner_multiple": 8}
    (figures / "speed_ceiling.json").write_text(json.dumps({"rows": [
        dict(floor, multiple=8, original_ms=30.0, floor_ms=10.0), dict(floor, multiple=1, original_ms=30.0, floor_ms=6.0),
        dict(floor, runtime="opencv", multiple=1, planner_multiple=1, original_ms=30.0, floor_ms=3.0)]}))
    out = tmp_path / "B.md"
    deploy_report.write_all(small_results(), str(out), str(figures))
    text = out.read_text()
    assert ("| yolov3-tiny >= x2 on its best runtime at <= 0.01 loss, 416 px | **met** | *own data*: x2.40 (ratio, "
            "OpenCV DNN) ([own data](results/photos_deploy.md)) |") in text
    row = next(line for line in text.splitlines() if "within the ceiling of channel pruning" in line)
    assert "| **no** | narrow: x3.00 (shortcut, counts in multiples of 8), x5.00 in any count" in row
    assert "([ceiling](results/speed_ceiling.md))" in row
    assert "the rows marked *own data* below" in text
