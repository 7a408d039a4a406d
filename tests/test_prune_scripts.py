"""Every prune script run as a user runs it, and every written pair read back in real Darknet.

Models: the real COCO yolov3-tiny (416), and yolov3 / yolov3-spp with random weights written
by our writer, their cfg copied with width=height=96 to keep the suite fast. Every script writes
``--reader pjreddie``: each written pair is run in pjreddie Darknet (yoloslim/deploy/darknet_ref.py) and
compared, with no BN adjustment, with the pruned model (the pair loaded by its header, which
undoes the writer's conversion): raw [yolo] maps within yoloslim.deploy.parity.TOLERANCE (1e-4 of each
head's magnitude, w/h relative) on a random input. OpenCV reads the same files as its own.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import HANG_LIMIT, ROOT, cfg_path
from yoloslim.darknet.model import Darknet
from yoloslim.darknet.load import load_model
from yoloslim.deploy.darknet_ref import darknet_difference, run_darknet
from yoloslim.deploy.parity import TOLERANCE
from yoloslim.darknet.cfg import parse_model_cfg, write_model_cfg
from yoloslim.deploy.measure import randomize_weights

BIG_SIZE = 96

# (case id, script, flags, models it runs on). Every script runs on every model it accepts; the
# --importance l1 and --multiple 8 variants change only the plan, so yolov3-spp skips them for time.
CASES = [
    ("normal", "normal_prune.py", ["--percent", "0.35"], ["tiny", "yolov3", "yolov3-spp"]),
    ("l1", "normal_prune.py", ["--importance", "l1", "--percent", "0.35"], ["tiny", "yolov3"]),
    ("pow2", "regular_prune.py", ["--percent", "0.7", "--layer-keep", "0.05"], ["tiny", "yolov3", "yolov3-spp"]),
    ("x8", "regular_prune.py", ["--multiple", "8", "--percent", "0.35"], ["tiny", "yolov3"]),
    ("shortcut", "shortcut_prune.py", ["--percent", "0.35"], ["yolov3", "yolov3-spp"]),   # tiny: refused below
    ("tiny", "prune_tiny.py", ["--percent", "0.35"], ["tiny"]),
    ("layer", "layer_channel_prune.py", ["--layers", "4", "--percent", "0.35"], ["yolov3", "yolov3-spp"]),
]
RUNS = [(case, model) for case, _, _, models in CASES for model in models]


def run_script(script, *flags, cwd):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *flags, "--latency-runs", "0"],
                          capture_output=True, text=True, cwd=cwd, timeout=HANG_LIMIT)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, coco_tiny):
    """cfg/weights for each model name, made once: the real tiny, random yolov3 and yolov3-spp at 96 px."""
    made = {"tiny": (coco_tiny["cfg"], coco_tiny["weights"])}

    def get(name):
        if name not in made:
            folder = tmp_path_factory.mktemp(name)
            defs = parse_model_cfg(cfg_path(name))
            defs[0]["width"] = defs[0]["height"] = BIG_SIZE
            cfg = str(folder / f"{name}.cfg")
            write_model_cfg(defs, cfg)
            weights = str(folder / f"{name}.weights")
            randomize_weights(Darknet(cfg), seed=11).save_darknet_weights(weights)
            made[name] = (cfg, weights)
        return made[name]
    return get


@pytest.fixture(scope="module")
def pruned(pairs, tmp_path_factory):
    """Runs each (case, model) script once; returns (completed process, summary or None)."""
    done = {}

    def get(case, model):
        if (case, model) not in done:
            _, script, flags, _ = next(c for c in CASES if c[0] == case)
            cfg, weights = pairs(model)
            work = tmp_path_factory.mktemp(f"{case}-{model}")
            proc = run_script(script, "--cfg", cfg, "--weights", weights, *flags, "--reader", "pjreddie",
                              "--out", str(work / "out"), cwd=work)
            summary_path = work / "out" / "summary.json"
            summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
            done[(case, model)] = (proc, summary)
        return done[(case, model)]
    return get


@pytest.mark.parametrize("case,model", RUNS)
def test_script_writes_a_smaller_pair_that_opencv_reads(pruned, case, model):
    proc, summary = pruned(case, model)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert summary is not None
    assert summary["after"]["params"] < summary["before"]["params"]
    assert os.path.getsize(summary["out_weights"]) < os.path.getsize(summary["weights"])
    assert summary["opencv_max_diff"] <= summary["opencv_tolerance"] == TOLERANCE
    assert "OpenCV DNN reads them back" in proc.stdout


@pytest.mark.parametrize("case,model", RUNS)
def test_written_pair_matches_in_darknet(darknet, pruned, case, model):
    proc, summary = pruned(case, model)
    assert proc.returncode == 0, proc.stderr
    assert summary["reader"] == "pjreddie" and summary["reader_max_diff"] <= 1e-6
    compact = load_model(summary["out_cfg"], summary["out_weights"]).eval()
    assert compact.read_as == "pjreddie"
    size = compact.img_size[0]
    x = np.random.default_rng(3).random((3, size, size), dtype=np.float32)
    run = run_darknet(summary["out_cfg"], summary["out_weights"], x)
    assert darknet_difference(compact, run, x) <= TOLERANCE


def test_l1_prints_its_rule_not_a_threshold(pruned):
    proc, _ = pruned("l1", "tiny")
    assert proc.returncode == 0, proc.stderr
    assert "keeps its strongest 65% of filters by L1 norm" in proc.stdout


@pytest.mark.parametrize("script,model,needle", [("prune_tiny.py", "yolov3", "has residual shortcuts"),
                                                 ("layer_channel_prune.py", "tiny", "no residual blocks"),
                                                 ("shortcut_prune.py", "tiny", "use normal_prune.py")])
def test_script_refuses_the_wrong_model_in_one_line(pairs, tmp_path, script, model, needle):
    cfg, weights = pairs(model)
    proc = run_script(script, "--cfg", cfg, "--weights", weights, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and needle in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("model", ["yolov3", "yolov3-spp"])
def test_regular_pow2_that_removes_nothing_is_an_error(pairs, tmp_path, model):
    """At --percent 0.3 the 2^n rounding keeps every layer of yolov3 whole: say so, write nothing."""
    cfg, weights = pairs(model)
    proc = run_script("regular_prune.py", "--cfg", cfg, "--weights", weights, "--percent", "0.3",
                      "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout
    assert "kept 100.0%" in proc.stdout
    assert "removes no channel at all" in proc.stderr and "--multiple 8" in proc.stderr
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_far_less_than_asked_is_a_warning_with_the_share(pairs, tmp_path):
    cfg, weights = pairs("tiny")
    proc = run_script("normal_prune.py", "--cfg", cfg, "--weights", weights, "--percent", "0.3", "--layer-keep", "0.95",
                      "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("removed "))
    removed = float(line.split("%")[0].split()[-1]) / 100
    assert 0 < removed <= 0.05
    assert f"kept {1 - removed:.1%}" in line
    assert "warning: --percent 0.3 asked to remove 30% of prunable channels but the plan removes" in proc.stdout
