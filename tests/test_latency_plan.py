"""Per-layer latency tables and the latency-aware planner, on small models in seconds.

Tables are measured for real (OpenCV DNN, one thread, yolov3-tiny at 64 px) into a cache under
a temporary XDG_CACHE_HOME; nothing here asserts on how fast anything ran, only on what the
tables and the planner do with the numbers they got.
"""
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import HANG_LIMIT, ROOT, cfg_path
from test_prune import relative_difference
from yoloslim.darknet.cfg import parse_cfg_text, parse_model_cfg, write_model_cfg
from yoloslim.darknet.load import load_model
from yoloslim.darknet.model import Darknet
from yoloslim.deploy.layer_latency import (ConvShape, LatencyCache, LayerTable, RuntimeTimer, _cliffs, _layer_table,
                                           build_tables, grid_counts, model_key)
from yoloslim.deploy.measure import count_flops, randomize_weights
from yoloslim.errors import PruneError
from yoloslim.prune.engine import POLICIES, PowerOfTwo, Policy, prune, unit_key, zeroed_reference
from yoloslim.prune.latency_plan import BudgetPlanner, ladder, plan_to_budget

SIZE = 64
RUNTIME = "opencv"      # the quickest to build a one-layer network in; always installed here


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    defs = parse_model_cfg(cfg_path("yolov3-tiny"))
    defs[0]["width"] = defs[0]["height"] = SIZE
    cfg, weights = str(folder / "tiny.cfg"), str(folder / "tiny.weights")
    write_model_cfg(defs, cfg)
    randomize_weights(Darknet(cfg), seed=5).save_darknet_weights(weights)
    return cfg, weights


@pytest.fixture(scope="module")
def tiny(tiny_pair):
    return load_model(*tiny_pair).eval()


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory):
    return str(tmp_path_factory.mktemp("xdg-cache"))


@pytest.fixture(scope="module")
def built(tiny, cache_home):
    """Tables built twice into one cache: (first tables, first timer, second tables, second timer)."""
    cache_dir = os.path.join(cache_home, "yoloslim", "latency")
    first_timer, second_timer = RuntimeTimer(RUNTIME, 1), RuntimeTimer(RUNTIME, 1)
    first = build_tables(tiny, RUNTIME, None, SIZE, 1, first_timer, LatencyCache(RUNTIME, 1, cache_dir), False)
    second = build_tables(tiny, RUNTIME, None, SIZE, 1, second_timer, LatencyCache(RUNTIME, 1, cache_dir), False)
    return first, first_timer, second, second_timer


def test_a_second_build_reads_every_point_from_the_cache(built, cache_home):
    first, first_timer, second, second_timer = built
    assert first_timer.calls > 1 and first.measured > 0
    assert second_timer.calls == 0 and second.measured == 0
    assert second.predict({}) == pytest.approx(first.predict({}))
    files = os.listdir(os.path.join(cache_home, "yoloslim", "latency"))
    assert len(files) == 1 and "opencv" in files[0] and files[0].endswith("-t1.json")


class MachineNow(RuntimeTimer):
    """A timer whose whole-model timing returns what the machine is said to run the model in now."""
    now_ms = None

    def whole(self, model, img_size):
        return self.now_ms


def test_a_cached_calibration_the_machine_disagrees_with_is_measured_again(tiny, built, cache_home, monkeypatch,
                                                                         tmp_path):
    """A calibration set cached while other jobs held the cores would set every level too high:
    one whole-model timing per process checks it; past STALE the set (not the grids) is taken again."""
    from yoloslim.deploy import layer_latency
    folder = shutil.copytree(os.path.join(cache_home, "yoloslim", "latency"), tmp_path / "latency")  # theirs stays
    cache = LatencyCache(RUNTIME, 1, str(folder))
    prefix = model_key(tiny, (SIZE, SIZE))
    cached_ms, alone_ms = cache.points[prefix + "/model"], cache.points[prefix + "/alone"]
    runs = []
    for now in (alone_ms * 1.2, alone_ms / 10):            # within STALE, then 10 times faster
        monkeypatch.setattr(layer_latency, "_FRESH", set())  # as a new process
        timer = MachineNow(RUNTIME, 1)
        timer.now_ms = now
        tables = build_tables(tiny, RUNTIME, None, SIZE, 1, timer, LatencyCache(RUNTIME, 1, cache.folder), False)
        runs.append((timer, tables))
    (agreed, kept), (disagreed, remeasured) = runs
    assert agreed.checks == 1 and agreed.calls == 0 and kept.whole_ms == cached_ms
    assert disagreed.checks == 1 and disagreed.calls == 1          # the calibration set only: no grid point
    assert kept.measured == 0 and remeasured.measured_layers == 0
    layers = {shape.key(cin, cout) for shape, cin, cout in remeasured.shapes.values()}
    assert remeasured.measured == 3 + len(layers) and remeasured.whole_ms != cached_ms   # model, overhead, alone
    stored = LatencyCache(RUNTIME, 1, cache.folder).points
    assert stored[prefix + "/model"] == remeasured.whole_ms and stored[prefix + "/alone"] == alone_ms / 10
    again = MachineNow(RUNTIME, 1)
    build_tables(tiny, RUNTIME, None, SIZE, 1, again, LatencyCache(RUNTIME, 1, cache.folder), False)
    assert again.checks == 0 and again.calls == 0                  # once per process


def test_the_cache_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert LatencyCache(RUNTIME, 3).path.startswith(str(tmp_path / "yoloslim" / "latency"))


def test_tables_cover_every_conv_and_sum_to_the_measured_model(tiny, built):
    tables = built[0]
    assert tables.predict({}) == pytest.approx(tables.whole_ms)
    assert sorted(tables.tables) == [i for i, k in enumerate(tiny.kinds) if k.has_weights]
    shape, cin, cout = tables.shapes[0]
    assert (shape.in_h, cin, cout) == (SIZE, 3, 16) and tables.tables[0].ins == [3]


def test_interpolation_is_monotone_between_and_beyond_the_grid(built):
    noisy = LayerTable([8, 16, 32], [8, 32], [[1.0, 3.0], [0.5, 4.0], [2.0, 9.0]])   # (16, 8) dips: noise
    assert noisy.ms[1][0] == 1.0 and noisy(16, 8) == 1.0 and noisy(32, 32) == 9.0
    for table in list(built[0].tables.values()) + [noisy]:
        cins = range(1, max(table.ins) + 1, max(1, max(table.ins) // 40))
        couts = range(1, max(table.outs) + 1, max(1, max(table.outs) // 40))
        grid = [[table(i, o) for o in couts] for i in cins]
        assert all(a <= b + 1e-12 for row in grid for a, b in zip(row, row[1:]))
        assert all(a <= b + 1e-12 for col in zip(*grid) for a, b in zip(col, col[1:]))
        assert min(min(row) for row in grid) >= 0


class CliffTimer:
    """A runtime whose 3x3 kernel is 8 times slower per FLOP once in x out reaches 2^15 (as OpenCV
    leaves its Winograd path on the machine these tables were first measured on)."""
    calls = 0

    def layer(self, shape, points):
        self.calls += 1
        return {(i, o): i * o * (8.0 if i * o >= 1 << 15 else 1.0) * 1e-4 for i, o in points}


def test_the_grid_is_refined_where_the_runtime_has_a_cliff(tmp_path):
    shape = ConvShape(3, 1, 1, True, "leaky", 26, 26, 26, 26)
    cache = LatencyCache(RUNTIME, 1, str(tmp_path))
    ins, outs = grid_counts(256), grid_counts(256)
    full = 256 * 256 * 8 * 1e-4
    table = _layer_table(CliffTimer(), cache, {}, shape, ins, outs, (256, 256), full)
    assert len(table.ins) > len(ins) or len(table.outs) > len(outs)
    below = (100, 256)            # 25600 < 2^15: on the fast path
    coarse = LayerTable(ins, outs, [[i * o * (8.0 if i * o >= 1 << 15 else 1.0) * 1e-4 for o in outs] for i in ins])
    truth = below[0] * below[1] * 1e-4
    assert abs(table(*below) - truth) < abs(coarse(*below) - truth) / 2
    smooth = {(i, o): i * o * 1e-4 for i in ins for o in outs}
    assert _cliffs(ins, outs, smooth) == (set(), set())     # growth with the FLOPs is no cliff


def test_grid_counts_are_multiples_of_eight_and_the_width():
    assert grid_counts(256) == [8, 64, 128, 256]
    assert grid_counts(255) == [8, 64, 128, 255]
    assert grid_counts(8) == [4, 8] and grid_counts(3) == [1, 3]


def planner_for(model, tables, multiple=1, policy="tiny", layer_keep=0.05):
    return BudgetPlanner(model, POLICIES[policy], layer_keep=layer_keep, multiple=multiple, img_size=SIZE,
                         tables=tables)


@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_budget_search_removes_less_importance_than_a_ratio_at_the_same_latency(tiny, built, ratio):
    tables = built[0]
    planner = planner_for(tiny, tables)
    _, gamma_plans = prune(tiny, POLICIES["tiny"], ratio, 0.05)
    gamma = planner.kept_of(gamma_plans[0])
    target = planner.cost(gamma, "ms")
    kept, _ = planner.search({"ms": target})
    assert planner.cost(kept, "ms") <= target
    assert planner.removed_importance(kept) < planner.removed_importance(gamma)


def test_plan_to_budget_meets_the_predicted_budget_with_the_engines_masks(tiny, built, cache_home, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", cache_home)
    tables = built[0]
    timer = RuntimeTimer(RUNTIME, 1)
    target = 0.7 * tables.predict({})
    compact, plans, report = plan_to_budget(tiny, POLICIES["tiny"], RUNTIME, SIZE, 1, target_ms=target,
                                            timer=timer, progress=False)
    assert timer.calls == 0 and report.measured_points == 0          # every table from the cache
    assert report.predicted_ms <= target < report.original_ms == pytest.approx(tables.predict({}))
    assert 0 < report.removed_importance < report.total_importance
    (plan,) = plans
    assert {c: int(m.sum()) for c, m in plan.masks.items() if not m.all()} == report.kept
    for conv, mask in plan.masks.items():    # each layer keeps its strongest channels by |gamma|
        gamma = tiny.gamma(conv).detach().abs()
        if not mask.all():
            assert gamma[mask].min() >= gamma[~mask].max()
    assert relative_difference(compact, zeroed_reference(tiny, plan)) < 1e-6


def test_counts_round_to_the_multiple_and_respect_layer_keep(tiny, built):
    planner = planner_for(tiny, built[0], multiple=8, layer_keep=0.2)
    kept, _ = planner.search({"ms": 0.6 * built[0].predict({})})
    for k, unit in enumerate(planner.units):
        assert kept[k] == unit.width or kept[k] % 8 == 0
        assert kept[k] >= math.ceil(0.2 * unit.width)


def test_policy_rounding_sets_the_ladder(tiny):
    planner = BudgetPlanner(tiny, POLICIES["tiny"], img_size=SIZE)
    unit, scores = planner.units[3], planner.scores[3]
    pow2 = ladder(unit, scores, Policy("p", rounding=PowerOfTwo()), 8, 0.05)
    assert all(n & (n - 1) == 0 for n in pow2.counts) and pow2.counts[0] == unit.width
    x8 = ladder(unit, scores, POLICIES["tiny"], 8, 0.05)
    assert x8.counts == sorted({unit.width, *range(8, unit.width, 8)}, reverse=True)
    assert x8.kept_score[0] == pytest.approx(float(scores.sum()))
    assert all(a >= b for a, b in zip(x8.kept_score, x8.kept_score[1:]))


def _conv(filters, size=3, stride=1):
    return (f"[convolutional]\nbatch_normalize=1\nfilters={filters}\nsize={size}\nstride={stride}\npad=1\n"
            f"activation=leaky\n")


def _block(filters):
    return _conv(filters // 2, size=1) + _conv(filters) + "[shortcut]\nfrom=-3\nactivation=linear\n"


# a small residual model: stride-2 convs feeding shortcut groups, as in yolov3
RESIDUAL = (f"[net]\nwidth={SIZE}\nheight={SIZE}\nchannels=3\n" + _conv(16) + _conv(32, stride=2) + _block(32)
            + _block(32) + _conv(64, stride=2) + _block(64) + "[convolutional]\nfilters=21\nsize=1\nactivation=linear\n"
            "[yolo]\nmask=0,1,2\nanchors=4,6, 10,12, 20,18\nclasses=2\nnum=3\n")


def test_flops_budget_shares_shortcut_masks_and_stays_exact():
    model = randomize_weights(Darknet(parse_cfg_text(RESIDUAL)), seed=2).eval()
    compact, plans, report = plan_to_budget(model, POLICIES["shortcut"], None, SIZE, 1, target_flops=0.5)
    assert report.predicted_ms is None and report.predicted["flops"] <= report.target["flops"]
    assert count_flops(compact, SIZE) == pytest.approx(report.predicted["flops"], rel=1e-6)
    (plan,) = plans
    planner = BudgetPlanner(model, POLICIES["shortcut"], img_size=SIZE)
    shared = [u for u in planner.units if len(u.convs) > 1]
    assert shared and any(not plan.masks[u.convs[0]].all() for u in shared)
    for unit in shared:
        assert all(torch.equal(plan.masks[c], plan.masks[unit.convs[0]]) for c in unit.convs)
    strided = [c for c, d in enumerate(model.module_defs) if d["type"] == "convolutional" and d.get("stride", 1) == 2]
    assert strided and all(c in plan.masks for c in strided)     # downsampling convs are prunable units too
    assert relative_difference(compact, zeroed_reference(model, plan)) < 1e-6


def test_grouped_routes_keep_equal_halves_under_a_budget():
    model = randomize_weights(Darknet(cfg_path("yolov4-tiny"), img_size=SIZE), seed=4).eval()
    compact, plans, report = plan_to_budget(model, POLICIES["tiny"], None, SIZE, 1, target_params=0.5)
    planner = BudgetPlanner(model, POLICIES["tiny"], img_size=SIZE)
    split = [u for u in planner.units if u.split > 1]
    assert split
    for unit in split:
        mask = plans[0].masks[unit.convs[0]]
        half = mask.numel() // 2
        assert int(mask[:half].sum()) == int(mask[half:].sum())
    assert relative_difference(compact, zeroed_reference(model, plans[0])) < 1e-6


def test_a_budget_below_what_the_floor_allows_is_refused(tiny, built):
    planner = planner_for(tiny, built[0], layer_keep=0.5)
    with pytest.raises(PruneError, match=r"--target-ms 1e-06 ms cannot be met: with every prunable layer at its floor"):
        planner.search({"ms": 1e-6})


def test_kept_counts_naming_an_unprunable_layer_are_refused(tiny):
    planner = BudgetPlanner(tiny, POLICIES["tiny"], img_size=SIZE)
    heads = sorted(set(planner.shapes) - set(planner.unit_of))
    with pytest.raises(PruneError, match="not prunable units"):
        prune(tiny, POLICIES["tiny"], kept={heads[0]: 8})
    assert unit_key(planner.units[0]) == planner.units[0].convs[0]


# ----------------------------------------------------------------------------- the scripts
def run_script(script, *flags, cwd, env=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *flags], capture_output=True, text=True,
                          cwd=cwd, timeout=HANG_LIMIT, env=env)


def test_prune_script_to_a_latency_budget(tiny_pair, tiny, built, cache_home, tmp_path):
    """The run reads the tables from the cache the fixture filled, plans, writes, times the two
    models interleaved and says whether the budget was met (on this machine: either)."""
    target = round(0.75 * built[0].predict({}), 3)
    env = {**os.environ, "XDG_CACHE_HOME": cache_home}
    proc = run_script("prune_tiny.py", "--cfg", tiny_pair[0], "--weights", tiny_pair[1], "--target-ms", str(target),
                      "--runtime", RUNTIME, "--threads", "1", "--latency-runs", "3", "--out", str(tmp_path / "out"),
                      cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    # every layer from the cache; the calibration only is measured again where the load changed
    assert re.search(r"latency tables: (all|every layer) from the cache", proc.stdout), proc.stdout
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(("budget met:", "budget missed by")))
    assert re.search(rf"predicted [\d.]+ ms, measured [\d.]+ ms, target {target:g} ms on opencv", line), line
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    # the plan is calibrated on the measured model: its prediction may sit either side of the budget
    assert summary["budget"]["target"]["ms"] == target and summary["budget"]["measured_ms"] > 0
    assert summary["budget"]["predicted_ms"] > 0 and "calibration: planned for" in proc.stdout
    assert summary["after"]["params"] < summary["before"]["params"]


def test_a_budget_the_unpruned_model_meets_writes_nothing(tiny_pair, built, cache_home, tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": cache_home}
    proc = run_script("prune_tiny.py", "--cfg", tiny_pair[0], "--weights", tiny_pair[1], "--target-ms", "100000",
                      "--runtime", RUNTIME, "--threads", "1", "--out", str(tmp_path / "out"), cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stdout
    assert "error: --target-ms 100000: the unpruned model already meets it" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--target-ms", "0", "--runtime", RUNTIME], r"argument --target-ms: 0 is out of range"),
    (["--target-ms", "5"], r"--target-ms needs the runtime the budget is in: pass --runtime"),
    (["--target-ms", "5", "--runtime", "tensorrt"], r"unknown runtime 'tensorrt'"),
    (["--target-ms", "5", "--runtime", "opencv,onnxruntime"], r"--runtime names 2"),
    (["--target-ms", "5", "--runtime", RUNTIME, "--percent", "0.3"], r"--percent 0\.3 fixes the ratio but --target-ms"),
    (["--target-ms", "5", "--runtime", RUNTIME, "--max-drop", "0.02"], r"--target-ms and --max-drop are alternative"),
])
def test_bad_budget_flags_are_one_error_line(tiny_pair, tmp_path, flags, message):
    proc = run_script("normal_prune.py", "--cfg", tiny_pair[0], "--weights", tiny_pair[1], *flags,
                      "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert re.search(message, proc.stderr), proc.stderr
    assert not (tmp_path / "out").exists()


def test_calibration_replans_until_the_measured_model_meets_the_budget(monkeypatch):
    """The whole model runs as 0.5 x the tables' prediction + 10 ms (an offset, as OpenVINO showed):
    the line through the original's and the plan's measured points finds the predicted ms that
    lands at AIM of the budget in one re-plan; the user's budget stays the one the run is judged by."""
    import types
    from yoloslim.cli import budget
    planned_for = []

    def plan(target):
        planned_for.append(target)
        report = types.SimpleNamespace(predicted_ms=target, original_ms=100.0, target={"ms": target})
        return (types.SimpleNamespace(predicted=target), ["plans"], report)

    def runs_at(predicted):
        return 0.5 * predicted + 10.0

    monkeypatch.setattr(budget, "measure_plan", lambda model, compact, *a: (runs_at(compact.predicted), runs_at(100.0)))
    request = budget.BudgetRequest(target_ms=40.0, runtime="opencv")
    compact, _, report = budget.calibrate(plan, request, None, plan(40.0), 64, 1)
    assert budget.AIM == 0.975 and planned_for == [40.0, pytest.approx(58.0)]     # 0.5 x 58 + 10 = 39
    assert runs_at(compact.predicted) == pytest.approx(39.0) and report.target["ms"] == 40.0

    planned_for.clear()             # faster than any prediction: never re-planned past the unpruned model
    monkeypatch.setattr(budget, "measure_plan", lambda model, compact, *a: (0.1 * compact.predicted, 10.0))
    budget.calibrate(plan, budget.BudgetRequest(target_ms=90.0, runtime="opencv"), None, plan(90.0), 64, 1)
    assert max(planned_for) <= 98.0 and len(planned_for) == budget.CALIBRATION_ROUNDS + 1


def test_a_model_predicted_within_the_budget_is_timed_before_nothing_is_pruned(monkeypatch):
    """The tables say the unpruned model meets the budget: only a measurement may say so. Measured
    over it (the machine runs the model x1.4 the cached calibration), the plan is made for a
    proportionally lower target; measured within it, the refusal quotes the measurement."""
    import types
    from yoloslim.cli import budget
    planned_for = []

    def plan(target):
        planned_for.append(target)
        predicted = min(target, 100.0)                           # the unpruned model: 100 ms predicted
        report = types.SimpleNamespace(predicted_ms=predicted, original_ms=100.0, target={"ms": target},
                                       original_timed_ms=None)
        return (types.SimpleNamespace(predicted=predicted), ["plans"], report)

    slower = 1.4
    monkeypatch.setattr(budget, "measure_original", lambda *a: slower * 100.0)
    monkeypatch.setattr(budget, "measure_plan", lambda model, compact, *a: (slower * compact.predicted, 140.0))
    request = budget.BudgetRequest(target_ms=120.0, runtime="onnxruntime")
    compact, _, report = budget.calibrate(plan, request, None, plan(120.0), 64, 1)
    assert planned_for == [120.0, pytest.approx(100.0 * budget.AIM * 120.0 / 140.0)]
    assert slower * compact.predicted == pytest.approx(budget.AIM * 120.0) and report.predicted_ms < report.original_ms

    planned_for.clear()
    slower = 1.1
    compact, _, report = budget.calibrate(plan, request, None, plan(120.0), 64, 1)
    assert planned_for == [120.0] and report.original_timed_ms == pytest.approx(110.0)
    assert budget.nothing_to_prune(request, report) == ("--target-ms 120: the unpruned model already meets it "
                                                        "(predicted 100.00 ms, measured 110.00 ms on onnxruntime); "
                                                        "nothing to prune")


def test_a_budget_under_the_predicted_floor_is_refused_only_after_the_model_is_timed(monkeypatch):
    """The tables predict the model at 20 ms and the floor plan at 8; a budget of 6 ms is under that
    floor by their level. The machine runs the model in 10 ms (timed as the check times it): at the
    tables' level the budget is 12 ms, which they reach. Only when the scaled budget is out of reach
    too is it refused, in the machine's ms; a machine slower than the tables changes nothing."""
    from yoloslim.cli import budget
    from yoloslim.prune.latency_plan import BudgetUnreachable
    floor = {"ms": 8.0}

    def plan(target):
        if target < floor["ms"]:
            raise BudgetUnreachable(f"--target-ms {target:g} ms cannot be met", "ms", target, floor["ms"], 20.0)
        return ("compact", ["plans"], "report")

    request = budget.BudgetRequest(target_ms=6.0, runtime="onnxruntime")
    monkeypatch.setattr(budget, "measure_original", lambda *a: 10.0)
    assert budget.first_plan(plan, request, None, 64, 1) == (pytest.approx(12.0), ("compact", ["plans"], "report"))
    floor["ms"] = 15.0
    with pytest.raises(PruneError, match=r"--target-ms 6 ms cannot be met: with every prunable layer at its floor "
                                         r"\(--layer-keep\) the plan would run in about 7\.50 ms here \(the unpruned "
                                         r"model measured 10\.00 ms, predicted 20\.00\)"):
        budget.first_plan(plan, request, None, 64, 1)
    monkeypatch.setattr(budget, "measure_original", lambda *a: 25.0)
    with pytest.raises(BudgetUnreachable, match=r"--target-ms 6 ms cannot be met"):
        budget.first_plan(plan, request, None, 64, 1)


def test_a_plan_measured_over_the_budget_is_never_kept_when_one_within_it_was_measured():
    """Noise of a few percent: the calibration accepts only plans at or under the budget (at most
    CLOSE_ENOUGH under), keeps the slowest within it (it removed the least), else the fastest."""
    from yoloslim.cli.budget import lands, slowest_within
    assert lands(9.6, 10.0) and lands(10.0, 10.0) and not lands(10.2, 10.0) and not lands(9.4, 10.0)
    assert slowest_within([(10.3, "over"), (9.1, "under"), (8.0, "far under")], 10.0) == "under"
    assert slowest_within([(10.9, "over"), (10.3, "least over")], 10.0) == "least over"


def test_next_target_brackets_the_budget_between_measured_points():
    """Far from proportional (OpenVINO): once one plan runs under the budget and one over, the next
    target lies between them, never past the unpruned model's prediction."""
    from yoloslim.cli.budget import next_target
    points = [(27.7, 27.5), (18.9, 26.3), (0.001, 9.3)]          # (planner target, measured ms)
    assert 0.001 < next_target(points, 20.0) < 18.9
    assert next_target([(27.7, 27.5), (18.9, 26.3)], 20.0) == 1e-3    # the line runs below zero: floor
    assert next_target([(100.0, 10.0), (90.0, 9.0)], 90.0) == 98.0    # faster than any budget: capped


def test_the_floor_plan_keeps_every_unit_at_the_least_its_ladder_allows(tiny):
    """plan_at_floor: each prunable unit keeps the smallest multiple of 8 at or above --layer-keep
    of its width (or all of it); the model is still exact, and smaller than a ratio's plan."""
    from yoloslim.prune.latency_plan import plan_at_floor
    policy = POLICIES["tiny"]
    compact, plans = plan_at_floor(tiny, policy, 0.25, 8)
    units = BudgetPlanner(tiny, policy, None, 0.25, 8).units
    masks = {c: m for plan in plans for c, m in plan.masks.items()}
    assert units and all(u.convs[0] in masks for u in units if u.width > 8)
    for u in units:
        kept = int(masks[u.convs[0]].sum()) if u.convs[0] in masks else u.width
        assert kept == u.width or (kept % 8 == 0 and kept >= 0.25 * u.width > kept - 8), (u.convs, kept, u.width)
    ratio, _ = prune(tiny, policy, 0.5, 0.05)
    assert count_flops(compact, SIZE) < count_flops(ratio, SIZE)
    (plan,) = plans
    assert relative_difference(compact, zeroed_reference(tiny, plan)) < 1e-6


@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_the_bounded_search_removes_only_what_the_ratios_threshold_would(tiny, built, ratio):
    """At the ratio plan's own predicted ms, every channel under the threshold found is one the
    ratio's threshold removes too, every unit keeps the channels over it, and the budget is met."""
    planner = planner_for(tiny, built[0])
    _, gamma_plans = prune(tiny, POLICIES["tiny"], ratio, 0.05)
    gamma = planner.kept_of(gamma_plans[0])
    target = planner.cost(gamma, "ms")
    kept, _, threshold = planner.search_below_threshold({"ms": target})
    assert planner.cost(kept, "ms") <= target
    below = torch.cat([s[s < threshold] for s in planner.scores])    # the only candidates: all the ratio's too
    assert len(below) and float(below.max()) <= gamma_plans[0].threshold
    for k, scores in enumerate(planner.scores):
        assert kept[k] >= int((scores >= threshold).sum())
    # it removes some of those candidates (the weakest of each unit), never a channel over the threshold
    assert 0 < planner.removed_importance(kept) <= float(below.sum()) * (1 + 1e-6)
