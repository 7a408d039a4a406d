"""Every cfg shipped in cfg/: it builds, OpenCV reads a random-weight pair of it with the same
head maps, and every prune policy that its graph allows prunes it into a pair OpenCV reads back.

Applicable policies come from the graph (yoloslim.prune.graph.analyze), never from file names:
normal and l1 where some conv lies outside shortcut groups, shortcut where a shortcut group is
prunable, tiny where there are no shortcut groups at all (prune_tiny.py's rule), layer removal
where residual blocks exist. Models are built at SIZE px from a copy of the cfg with that size.
"""
import copy
import glob
import os

import numpy as np
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
from yoloslim.darknet.bn_readers import READERS
from yoloslim.darknet.kinds import pjreddie_gaps
from yoloslim.deploy.darknet_ref import darknet_difference, run_darknet
from yoloslim.deploy.parity import TOLERANCE
from yoloslim.deploy.reader_checks import reader_difference, with_small_variances

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


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def is_big(name):
    return conv_weight_count(parse_model_cfg(os.path.join(CFG_DIR, f"{name}.cfg"))) > BIG_WEIGHTS


def reader_cases():
    """(cfg, reader) for every shipped cfg and reader. Of the big models (each case writes and runs
    60M weights in float64, a minute on a busy core) only yolov4-csp in AlexeyAB's arithmetic runs by
    default: the deepest drift measured (3.7e-2 written for OpenCV), where the epsilons part most;
    yolov3 runs in the Darknet library below. YOLOSLIM_FULL_ZOO=1 runs them all."""
    full = os.environ.get("YOLOSLIM_FULL_ZOO")
    return [(n, r) for n in ZOO for r in READERS
            if full or not is_big(n) or (n, r) == ("yolov4-csp", "alexeyab")]


# the cfgs whose every section and option the original Darknet implements (derived from the kinds);
# of the big ones only yolov3 by default, the deepest drift and the model most users bring
PJREDDIE_ZOO = [n for n in ZOO if not pjreddie_gaps(parse_model_cfg(os.path.join(CFG_DIR, f"{n}.cfg")))
                and (os.environ.get("YOLOSLIM_FULL_ZOO") or not is_big(n) or n == "yolov3")]


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



def written_for(model, reader, folder, seed=3):
    """(model with small BN variances, the .weights written from it for ``reader``): variances spanning
    1e-3..1e1, as trained Darknet files hold, are where the readers' BN epsilons part ways."""
    small = with_small_variances(copy.deepcopy(model), seed=seed)
    weights = str(folder / f"{reader}.weights")
    small.save_darknet_weights(weights, reader=reader)
    return small, weights


@pytest.mark.parametrize("name,reader", reader_cases())
def test_pair_written_for_a_reader_is_the_model_in_its_arithmetic(zoo, name, reader, tmp_path):
    """OpenCV, AlexeyAB and pjreddie each divide by their own BN epsilon: the file written for one is
    the trained model in that reader's arithmetic (float64, yoloslim/darknet/bn_readers.py), and
    closer to it than a file written for OpenCV, which AlexeyAB's and pjreddie's readers would drift from."""
    model, cfg, _ = zoo(name)
    small, weights = written_for(model, reader, tmp_path)
    x = random_input(EXACT_SIZE, 0, small.in_channels)   # the arithmetic is per channel: a small input shows it
    diff = reader_difference(small, cfg, weights, reader, x)
    assert diff <= TOLERANCE
    if reader != "opencv" and not is_big(name):
        _, opencv_file = written_for(model, "opencv", tmp_path)
        assert diff < reader_difference(small, cfg, opencv_file, reader, x)


@pytest.mark.parametrize("name", PJREDDIE_ZOO)
def test_pair_written_for_pjreddie_is_the_model_in_darknet(darknet, zoo, name, tmp_path):
    """The library itself, for every shipped cfg it can run (the others use AlexeyAB's additions)."""
    model, cfg, _ = zoo(name)
    small, weights = written_for(model, "pjreddie", tmp_path)
    x = np.random.default_rng(0).random((3, SIZE, SIZE), dtype=np.float32)
    assert darknet_difference(small, run_darknet(cfg, weights, x), x) <= TOLERANCE


def test_the_darknet_cases_are_the_cfgs_without_alexeyab_additions():
    assert {"yolov3", "yolov3-tiny", "yolov3-narrow", "yolov3-tiny_3l"} <= set(PJREDDIE_ZOO)
    assert {n for n, _ in reader_cases()} | {"yolov3", "yolov3-spp", "yolov4", "yolov2"} == set(ZOO)
    gaps = pjreddie_gaps(parse_model_cfg(os.path.join(CFG_DIR, "yolov4-tiny.cfg")))
    assert gaps == ["[route] groups=", "[yolo] scale_x_y="]
