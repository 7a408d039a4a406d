"""The pruning engine on every standard cfg: exact compensation, OpenCV parity, policies, errors."""
import copy
import os

import numpy as np
import pytest
import torch

from conftest import cfg_path
from yoloslim.darknet.model import Darknet
from yoloslim.errors import PruneError
from yoloslim.deploy.opencv_dnn import max_layout_difference, opencv_forward, read_net, torch_in_opencv_layout
from yoloslim.darknet.cfg import parse_model_cfg
from yoloslim.prune.graph import analyze
from yoloslim.train.sparsity import policy_layers as sparsity_layers
from yoloslim.prune.engine import (POLICIES, build_compact, plan_channels, plan_layers, prune, write_pruned,
                               zeroed_reference)
from yoloslim.deploy.measure import randomize_weights

SMALL = ["yolov3-tiny", "yolov4-tiny", "yolov3-narrow"]
BIG = ["yolov3", "yolov3-spp"]


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = randomize_weights(Darknet(cfg_path(name)), seed=7).eval()
        return cache[name]
    return get


def replicate_padding(model):
    """Zero padding sees a pruned channel's constant as 0 at the border, so compensation is
    exact only away from it; with replicate padding in both models it is exact everywhere."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.padding[0] > 0:
            m.padding_mode = "replicate"
    return model


def relative_difference(a, b, size=96):
    a, b = replicate_padding(copy.deepcopy(a)).double().eval(), replicate_padding(copy.deepcopy(b)).double().eval()
    x = torch.rand(1, b.in_channels, size, size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        ra, rb = a.forward_raw(x), b.forward_raw(x)
    return max(float((u - v).abs().max() / v.abs().max()) for u, v in zip(ra, rb))


def check_written_pair(compact, tmp_path, size=128):
    cfg, weights = write_pruned(compact, str(tmp_path), "pruned")
    defs = parse_model_cfg(cfg)
    reread = Darknet(defs)
    assert os.path.getsize(weights) == 20 + 4 * reread.darknet_float_count()
    reread.load_darknet_weights(weights)
    x = np.random.default_rng(1).random((1, compact.in_channels, size, size), dtype=np.float32)
    diff = max_layout_difference(torch_in_opencv_layout(compact, x), opencv_forward(read_net(cfg, weights, exact=True), x))
    assert diff <= 1e-4
    return defs


CASES = [(cfg, pol) for cfg in SMALL for pol in ("normal", "regular-pow2", "regular-x8", "shortcut", "l1")] + \
        [(cfg, pol) for cfg in BIG for pol in ("normal", "shortcut")]


@pytest.mark.parametrize("name,policy", CASES)
def test_compact_equals_original_with_pruned_gammas_zeroed(models, name, policy, tmp_path):
    model = models(name)
    compact, (plan,) = prune(model, POLICIES[policy], percent=0.6, layer_keep=0.05)
    assert plan.pruned_channels() > 0
    assert relative_difference(compact, zeroed_reference(model, plan)) < 1e-6
    check_written_pair(compact, tmp_path)


@pytest.mark.parametrize("name", ["yolov3-narrow", "yolov3", "yolov3-spp"])
def test_layer_and_channel_prune(models, name, tmp_path):
    model = models(name)
    graph = analyze(model.module_defs)
    plan = plan_layers(model, graph, 3)
    compact = build_compact(model, plan, graph)
    assert len(compact.module_defs) == len(model.module_defs) - 9
    assert relative_difference(compact, zeroed_reference(model, plan)) < 1e-6
    both, plans = prune(model, POLICIES["shortcut"], percent=0.5, n_blocks=3)
    defs = check_written_pair(both, tmp_path)
    assert sum(d["type"] == "yolo" for d in defs) == 3


def test_uncompensated_pruning_is_caught(models):
    """The reference comparison must fail when a consumer is left uncompensated."""
    model = models("yolov3-tiny")
    graph = analyze(model.module_defs)
    plan = plan_channels(model, graph, POLICIES["tiny"], 0.5)
    naive = build_compact(model, plan, graph, compensate=False)
    assert relative_difference(naive, zeroed_reference(model, plan)) > 1e-3


def test_compensation_reaches_route_into_second_head(models):
    """yolov3-tiny: a backbone conv is read again through a route by the second head. Its pruned
    channels must be compensated there too (one earlier toolkit misses exactly this)."""
    model = models("yolov3-tiny")
    graph = analyze(model.module_defs)
    routed = {j for i, d in enumerate(model.module_defs) if d["type"] == "route" for j in graph.sources[i]}
    target = next(c for c in graph.prunable if c in routed and len(graph.consumers[c]) > 1)
    keep = torch.ones(model.module_list[target].Conv2d.out_channels, dtype=torch.bool)
    keep[::2] = False
    from yoloslim.prune.engine import PrunePlan
    plan = PrunePlan(masks={target: keep})
    compact = build_compact(model, plan, graph)
    x = torch.rand(1, 3, 96, 96, dtype=torch.float64)
    ref = replicate_padding(zeroed_reference(model, plan)).double()
    out = replicate_padding(copy.deepcopy(compact)).double()
    with torch.no_grad():
        diffs = [float((u - v).abs().max()) for u, v in zip(out.forward_raw(x), ref.forward_raw(x))]
    assert max(diffs) < 1e-6


def test_regular_counts_in_allowed_set(models):
    model = models("yolov3-narrow")
    graph = analyze(model.module_defs)
    pow2 = plan_channels(model, graph, POLICIES["regular-pow2"], 0.6)
    x8 = plan_channels(model, graph, POLICIES["regular-x8"], 0.6)
    for conv, keep in pow2.masks.items():
        n, width = int(keep.sum()), keep.numel()
        assert n == width or (n & (n - 1) == 0 and n >= 8)
    for conv, keep in x8.masks.items():
        n, width = int(keep.sum()), keep.numel()
        assert n == width or n % 8 == 0


def test_shortcut_groups_share_one_mask(models):
    model = models("yolov3-narrow")
    graph = analyze(model.module_defs)
    plan = plan_channels(model, graph, POLICIES["shortcut"], 0.6)
    groups = graph.shortcut_groups()
    assert groups
    for group in groups:
        masks = [plan.masks[c] for c in group]
        assert all(torch.equal(masks[0], m) for m in masks)
        assert not masks[0].all()


def test_normal_prune_leaves_shortcut_groups_whole(models):
    model = models("yolov3-narrow")
    graph = analyze(model.module_defs)
    plan = plan_channels(model, graph, POLICIES["normal"], 0.6)
    in_groups = {c for g in graph.shortcut_groups() for c in g}
    assert in_groups and not in_groups & set(plan.masks)


def test_grouped_route_keeps_equal_halves(models):
    model = models("yolov4-tiny")
    graph = analyze(model.module_defs)
    plan = plan_channels(model, graph, POLICIES["tiny"], 0.7, layer_keep=0.05)
    split = [c for c, s in graph.split_of.items() if s == 2]
    assert split
    for c in split:
        halves = plan.masks[c].chunk(2)
        assert int(halves[0].sum()) == int(halves[1].sum())


def test_graph_finds_structure_without_indices():
    tiny = analyze(parse_model_cfg(cfg_path("yolov3-tiny"))[1:])
    assert not tiny.shortcut_groups() and not tiny.blocks
    y3 = analyze(parse_model_cfg(cfg_path("yolov3"))[1:])
    assert len(y3.blocks) == 23 and len(y3.shortcut_groups()) == 5
    assert len(y3.head_convs) == 3
    # mode 0 spares the shortcut groups, mode 1 sparsifies them too
    defs = parse_model_cfg(cfg_path("yolov3"))[1:]
    assert set(sparsity_layers(defs, 0)) < set(sparsity_layers(defs, 1))


def test_percent_outside_range_refused(models):
    model = models("yolov3-tiny")
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(PruneError, match="outside"):
            prune(model, POLICIES["tiny"], percent=bad)


def test_ratio_beyond_safe_limit_refused_with_safe_ratio(models):
    model = copy.deepcopy(models("yolov3-tiny"))
    graph = analyze(model.module_defs)
    with torch.no_grad():  # one layer whose every gamma is small: the safe limit is low
        model.module_list[graph.prunable[2]].BatchNorm2d.weight.mul_(0.01)
    with pytest.raises(PruneError, match=r"safe limit is --percent 0\.\d+"):
        prune(model, POLICIES["tiny"], percent=0.5)
    compact, (plan,) = prune(model, POLICIES["tiny"], percent=0.5, layer_keep=0.1)
    assert min(int(m.sum()) for m in plan.masks.values()) >= 1


def test_insufficient_sparsity_is_reported_with_figures(models, capsys):
    from yoloslim.cli.prune import sparsity_report
    model = copy.deepcopy(models("yolov3-tiny"))
    graph = analyze(model.module_defs)
    near = sparsity_report(model, graph, POLICIES["tiny"], 0.5)   # random gammas: none near zero
    out = capsys.readouterr().out
    assert near == 0.0 and "0.0% of" in out and "does not look sparsity-trained" in out
    with torch.no_grad():  # a sparsity-trained model: 60% of gammas pushed to ~0
        for c in graph.prunable:
            bn = model.module_list[c].BatchNorm2d
            bn.weight[: int(0.6 * bn.num_features)] = 1e-4
    near = sparsity_report(model, graph, POLICIES["tiny"], 0.5)
    out = capsys.readouterr().out
    assert near > 0.55 and "does not look sparsity-trained" not in out
