"""Every cfg shipped in cfg/: it builds, OpenCV reads a random-weight pair of it with the same
head maps, and every prune policy that its graph allows prunes it into a pair OpenCV reads back.

Applicable policies come from the graph (yoloslim.prune.graph.analyze), never from file names:
normal and l1 where some conv lies outside shortcut groups, shortcut where a shortcut group is
prunable, tiny where there are no shortcut groups at all (prune_tiny.py's rule), layer removal
where residual blocks exist. Models are built at SIZE px from a copy of the cfg with that size.
"""
import glob
import os

import pytest
import torch

from conftest import CFG_DIR
from yoloslim.darknet.model import Darknet
from test_prune import relative_difference
from yoloslim.deploy.opencv_dnn import max_raw_difference, random_input
from yoloslim.deploy.parity import read_back_tolerance
from yoloslim.darknet.cfg import parse_model_cfg, write_model_cfg
from yoloslim.prune.graph import analyze
from yoloslim.prune.engine import POLICIES, build_compact, plan_layers, prune, write_pruned, zeroed_reference
from yoloslim.deploy.measure import count_params, randomize_weights

SIZE = 128           # every shipped model's largest stride (32) divides it
# head maps vs OpenCV (Winograd off): yoloslim.deploy.parity's read-back gate, 1e-4 of each head's magnitude
# or 4x the model's own float32 error where that is larger (yolov4: fp32 alone moves the maps 1.6e-4)
EXACT_SIZE = 64      # replicate padding makes that comparison exact at any size, so keep it small
EXACT_TOL = 1e-5     # compact model vs the original with the pruned gammas zeroed (fp64, replicate padding);
                     # the surgery itself runs in fp32: 1.5e-6 on yolov4-csp layer removal, against
                     # 0.64 there without compensation
ZOO = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(CFG_DIR, "*.cfg")))
# a model above this many conv weights is "big": its default run checks one policy (the first
# of applicable_policies); YOLOSLIM_FULL_ZOO=1 runs them all (68 cases instead of 56, 41 s of CPU
# instead of 26 s here)
BIG_WEIGHTS = 30_000_000


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine OpenMP spin-waits make two threads slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def conv_weight_count(defs):
    """Conv weights a cfg declares, counted from the text alone (no model built)."""
    channels, outs, total = [int(defs[0].get("channels", 3))], [], 0
    graph = analyze(defs[1:])
    for i, d in enumerate(defs[1:]):
        srcs = graph.sources[i]
        c_in = outs[i - 1] if i else channels[0]
        if d["type"] == "convolutional":
            total += d["filters"] * c_in // d.get("groups", 1) * d.get("size", 1) ** 2
            c = d["filters"]
        elif d["type"] == "route":
            c = sum(outs[j] for j in srcs) // d.get("groups", 1)
        else:
            c = c_in
        outs.append(c)
    return total


def applicable_policies(defs):
    """The policies whose preconditions this cfg's graph meets, strongest pruning first."""
    g = analyze(defs[1:])
    outside = [c for c in g.prunable if not g.in_shortcut_group(c)]
    inside = [c for c in g.prunable if g.in_shortcut_group(c)]
    found = []
    if inside:
        found.append("shortcut")
    if g.blocks:
        found.append("layer")
    if outside:
        found += ["normal", "l1"]
        if not g.shortcut_groups():
            found.append("tiny")
    return found


def zoo_cases():
    cases = []
    for name in ZOO:
        try:
            defs = parse_model_cfg(os.path.join(CFG_DIR, f"{name}.cfg"))
            policies = applicable_policies(defs)
            big = conv_weight_count(defs) > BIG_WEIGHTS
        except Exception:       # a cfg the parser refuses still gets a case, which then fails loudly
            policies, big = ["normal"], False
        assert policies, f"{name}: no prune policy applies"
        if big and not os.environ.get("YOLOSLIM_FULL_ZOO"):
            policies = policies[:1]
        cases += [(name, p) for p in policies]
    return cases


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """name -> (random-weight model at SIZE px, its cfg copy, its .weights), built once per module."""
    cache, folder = {}, tmp_path_factory.mktemp("zoo")

    def get(name):
        if name not in cache:
            defs = parse_model_cfg(os.path.join(CFG_DIR, f"{name}.cfg"))
            defs[0]["width"] = defs[0]["height"] = SIZE
            cfg = str(folder / f"{name}.cfg")
            write_model_cfg(defs, cfg)
            model = randomize_weights(Darknet(cfg), seed=11).eval()
            weights = str(folder / f"{name}.weights")
            model.save_darknet_weights(weights)
            cache[name] = (model, cfg, weights)
        return cache[name]
    return get


@pytest.mark.parametrize("name", ZOO)
def test_builds_and_matches_opencv(zoo, name):
    model, cfg, weights = zoo(name)
    assert count_params(model) > 0 and model.yolo_layers
    with torch.no_grad():
        raw = model.forward_raw(torch.rand(1, 3, SIZE, SIZE))
    assert len(raw) == len(model.yolo_layers) and all(torch.isfinite(r).all() for r in raw)
    assert max_raw_difference(model, cfg, weights, SIZE) <= read_back_tolerance(model, random_input(SIZE))


@pytest.mark.parametrize("name,policy", zoo_cases())
def test_policy_prunes_and_reads_back(zoo, name, policy, tmp_path):
    model, _, _ = zoo(name)
    if policy == "layer":
        graph = analyze(model.module_defs)
        n_blocks = min(2, len(graph.blocks))
        plan = plan_layers(model, graph, n_blocks)
        compact = build_compact(model, plan, graph)
        assert len(compact.module_defs) == len(model.module_defs) - 3 * n_blocks
    else:
        compact, (plan,) = prune(model, POLICIES[policy], percent=0.5, layer_keep=0.05)
        assert plan.pruned_channels() > 0
    assert count_params(compact) < count_params(model)
    assert relative_difference(compact, zeroed_reference(model, plan), size=EXACT_SIZE) < EXACT_TOL
    cfg, weights = write_pruned(compact, str(tmp_path), "pruned")
    assert max_raw_difference(compact, cfg, weights, SIZE) <= read_back_tolerance(compact, random_input(SIZE))


def test_every_shipped_cfg_is_covered():
    """The zoo is the cfg folder: a cfg added there is tested without editing this file."""
    names = {n for n, _ in zoo_cases()}
    assert names == set(ZOO)
    assert {"yolov3", "yolov3-spp", "yolov3-tiny", "yolov4-tiny", "yolov3-narrow", "yolov5s", "yolov5n"} <= names

