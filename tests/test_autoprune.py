"""Sparsity that adapts, and the prune ratio found rather than guessed.

Bisection on synthetic monotone metrics, budget searches on the 5-class yolov3-tiny cfg at
64 px (random weights), the adaptive s in a 3-epoch run of the narrow cfg on 24 images, and
the prune scripts' --percent auto and its refusals run as a user runs them.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import train
from conftest import HANG_LIMIT, ROOT
from yoloslim.darknet.model import Darknet
from yoloslim.prune.engine import POLICIES
from yoloslim.prune.ratio_search import (STEP, Criterion, Prober, bisect_largest, bisect_smallest, plot_search, ratio_grid,
                                search_ratio)
from yoloslim.train.sparsity_target import MAX_GAIN, SparsityTarget
from yoloslim.data.synthetic import generate
from yoloslim.deploy.measure import count_flops, count_params

TINY_CFG = os.path.join(ROOT, "cfg", "yolov3-tiny-5cls.cfg")
NARROW = os.path.join(ROOT, "cfg", "yolov3-narrow.cfg")
SIZE = 64
ENV = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    """The 5-class tiny cfg with spread-out gammas, so every ratio prunes a different set."""
    torch.manual_seed(0)
    model = Darknet(TINY_CFG, img_size=SIZE)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.01, 1.0)
    return model.eval()


@pytest.fixture(scope="module")
def files(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("autoprune")
    weights = str(root / "tiny.weights")
    tiny.save_darknet_weights(weights)
    generate(str(root / "shapes"), n_train=4, n_val=6, img_size=SIZE, seed=0, workers=1, progress=False)
    return {"root": root, "cfg": TINY_CFG, "weights": weights, "data": str(root / "shapes" / "shapes.data")}


# ----------------------------------------------------------------------------- bisection
@pytest.mark.parametrize("edge", [0.0, 0.005, 0.31, 0.5, 0.7349, 0.98])
def test_bisection_finds_the_last_grid_ratio_of_a_monotone_metric(edge):
    grid = ratio_grid(0.98)
    asked = []

    def ok(r):
        asked.append(r)
        return r <= edge                      # a metric that holds up to ``edge``, then fails

    found = bisect_largest(ok, grid)
    assert found == max(r for r in grid if r <= edge)
    assert len(set(asked)) <= 9               # bisection, not a sweep over 197 ratios

    asked.clear()
    smallest = bisect_smallest(lambda r: asked.append(r) or r >= edge, grid[1:])
    assert smallest == min(r for r in grid[1:] if r >= edge)
    assert len(set(asked)) <= 9


def test_quality_search_on_a_monotone_synthetic_score_picks_the_last_passing_ratio(tiny):
    # score = share of parameters kept: monotone in the ratio, and known without evaluating
    base = count_params(tiny)
    result = search_ratio(tiny, POLICIES["tiny"], Criterion(max_drop=0.4), SIZE,
                          score=lambda m: count_params(m) / base, layer_keep=0.05, metric_name="kept")
    chosen = result.chosen()
    assert chosen.metric >= 1 - 0.4 and chosen.ok
    nxt = Prober(tiny, POLICIES["tiny"], SIZE, layer_keep=0.05, score=lambda m: count_params(m) / base)(
        result.ratio + STEP)
    assert nxt.metric < 1 - 0.4, "a larger ratio also passed: the search stopped short"
    assert result.curve()[0].ratio == 0 and result.curve()[0].metric == 1.0
    assert [p.ratio for p in result.curve()] == sorted(p.ratio for p in result.curve())


@pytest.mark.parametrize("criterion, key", [(Criterion(target_params=0.5), "params"),
                                            (Criterion(target_flops=0.6), "flops"),
                                            (Criterion(target_params=2_000_000), "params")])
def test_budget_search_meets_the_target_with_the_smallest_ratio(tiny, criterion, key, tmp_path):
    result = search_ratio(tiny, POLICIES["tiny"], criterion, SIZE, layer_keep=0.05)
    base = {"params": count_params(tiny), "flops": count_flops(tiny, SIZE)}[key]
    value = criterion.target_params if key == "params" else criterion.target_flops
    goal = value * base if value <= 1 else value
    prober = Prober(tiny, POLICIES["tiny"], SIZE, layer_keep=0.05)
    assert getattr(prober(result.ratio), key) <= goal
    assert getattr(prober(round(result.ratio - STEP, 6)), key) > goal, "a smaller ratio met the target too"
    assert result.metric_name == "" and all(p.metric is None for p in result.probes)
    png = plot_search(result, str(tmp_path / "curve.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_budget_that_no_ratio_reaches_is_refused_with_what_was_reached(tiny):
    from yoloslim.errors import PruneError
    with pytest.raises(PruneError, match=r"--target-params 0\.001 cannot be met: at the largest ratio"):
        search_ratio(tiny, POLICIES["tiny"], Criterion(target_params=0.001), SIZE, layer_keep=0.5)


# ----------------------------------------------------------------------------- adaptive s
def test_sparsity_target_doubles_s_while_behind_and_relaxes_past_the_goal():
    t = SparsityTarget(target=0.4, epochs=8)      # goal reached at epoch 6 (3/4 of 8)
    assert t.expected(3) == pytest.approx(0.2) and t.expected(6) == pytest.approx(0.4) and t.expected(8) == 0.4
    assert t.update(0.05, 1) == 2.0               # 5% < 6.7% expected: behind
    assert t.update(0.10, 2) == 4.0               # 10% < 13.3%: behind again
    assert t.update(0.25, 3) == 4.0               # 25% >= 20% expected, below the goal: hold
    assert t.update(0.45, 4) == 2.0               # past the goal: give room back
    for e in range(20):
        t.update(0.0, 5)
    assert t.gain == MAX_GAIN                     # bounded
    assert t.shortfall(0.45, 0.001, 8) is None
    assert "train longer (--epochs 16" in t.shortfall(0.1, 0.001, 8)


@pytest.fixture(scope="module")
def shapes128(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes128")
    generate(str(out), n_train=16, n_val=4, img_size=128, seed=0, workers=1, progress=False)
    return str(out / "shapes.data")


def test_training_raises_s_when_the_share_lags_and_warns_when_short(shapes128, tmp_path, capsys):
    opt = train.parse_args(["--cfg", NARROW, "--data", shapes128, "--epochs", "3", "--batch-size", "8",
                            "--img-size", "128", "--workers", "0", "--out", str(tmp_path / "run"), "--quiet",
                            "-sr", "--s", "0.0001", "--prune", "1", "--sparsity-target", "0.9"])
    result = train.train(opt)
    out = capsys.readouterr().out
    rows = list(__import__("csv").DictReader(open(tmp_path / "run" / "results.csv")))
    s = [float(r["s"]) for r in rows]
    assert s == pytest.approx([0.0001, 0.0002, 0.0004])      # doubled after each lagging epoch
    assert [float(r["sparsity_goal"]) for r in rows] == pytest.approx([0.4, 0.8, 0.9])
    assert all(float(r["gamma_below_1e-2"]) < 0.4 for r in rows)
    assert "gamma_below_1e-2" in out and "s 0.0001 -> 0.0002" in out
    assert "short of --sparsity-target 90%" in out and "train longer" in result["sparsity_warning"]
    ckpt = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["sparsity"]["gain"] == 4.0 and ckpt["sparsity_target"]["gain"] == 4.0


# ----------------------------------------------------------------------------- command lines
def run(script, *flags, cwd):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *flags], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=HANG_LIMIT)


@pytest.mark.parametrize("script, flags, metric", [
    ("prune_tiny.py", ["--percent", "auto", "--target-flops", "0.5"], None),
    ("normal_prune.py", ["--data", "{data}", "--max-drop", "0.05", "--search-images", "4"], "mAP@0.5"),
])
def test_percent_auto_through_a_prune_script(files, script, flags, metric):
    out = files["root"] / f"out-{script}"
    flags = [f.format(**files) for f in flags]
    proc = run(script, "--cfg", files["cfg"], "--weights", files["weights"], "--img-size", str(SIZE),
               "--layer-keep", "0.05", "--latency-runs", "0", "--out", str(out), *flags, cwd=files["root"])
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    search = summary["ratio_search"]
    assert summary["percent"] == search["ratio"] > 0 and search["metric"] == (metric or "")
    assert f"chosen: --percent {search['ratio']:.3f}" in proc.stdout
    assert (out / "ratio_search.png").read_bytes()[:4] == b"\x89PNG"
    if metric is None:
        assert summary["after"]["GFLOPs"] <= 0.5 * summary["before"]["GFLOPs"] + 1e-9
    else:
        base = search["curve"][0]["metric"]
        chosen = next(p for p in search["curve"] if p["ratio"] == search["ratio"])
        assert chosen["metric"] >= base - 0.05


@pytest.mark.parametrize("flags, message", [
    (["--percent", "0.3", "--target-params", "0.5"], r"--percent 0\.3 fixes the ratio but --target-params asks"),
    (["--target-params", "0.5", "--target-flops", "0.5"], r"--target-params and --target-flops are alternative"),
    (["--max-drop", "0.02"], r"--max-drop measures mAP@0.5 against labels; pass --data"),
    (["--min-agreement", "0.9"], r"--min-agreement compares detections on images; pass --images"),
    (["--percent", "auto"], r"--percent auto needs a yardstick: --data"),
    (["--target-params", "5"], r"--target-params: 5 is neither a fraction of the original"),
])
def test_contradicting_search_flags_are_one_error_line(files, flags, message):
    import re
    out = files["root"] / "refused"
    proc = run("prune_tiny.py", "--cfg", files["cfg"], "--weights", files["weights"], "--out", str(out), *flags,
               cwd=files["root"])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(message, lines[0]), proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--sparsity-target", "0.5"], r"--sparsity-target steers sparsity training; add -sr"),
    (["-sr", "--sparsity-target", "0.5", "--sr-schedule", "linear"], r"--sr-schedule linear decays it: pass only one"),
    (["-sr", "--sparsity-target", "1"], r"--sparsity-target: 1 is out of range"),
])
def test_train_refuses_a_sparsity_target_it_cannot_follow(files, flags, message):
    import re
    proc = run("train.py", "--cfg", files["cfg"], "--data", files["data"], "--out", str(files["root"] / "t"), *flags,
               cwd=files["root"])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and re.search(message, lines[0]), proc.stderr


def test_the_sparsity_target_is_part_of_a_stage_key(files):
    from yoloslim.pipeline.stages import stage_key
    from yoloslim.train.config import TrainConfig
    plain = TrainConfig(files["data"], cfg=files["cfg"], sr=True)
    targeted = TrainConfig(files["data"], cfg=files["cfg"], sr=True, sparsity_target=0.4)
    assert stage_key(targeted)["config"]["sparsity_target"] == 0.4 and stage_key(plain) != stage_key(targeted)