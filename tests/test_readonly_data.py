"""A user's data set is read-only to every tool.

An existing YOLO data folder, a Darknet .data file inside it, a dataset YAML beside it and one
of its images are given, one at a time, to every flag of every tool that takes a path (inputs
and outputs alike). A tool may refuse (exit 2, one ``error:`` line) or run (exit 0); it may
never raise a traceback, and afterwards every byte and every name under the data set's folder
must be as before (hashed). slim.py's --data is run end to end, with the same hash check, in
tests/test_slim_owndata.py.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from owndata_sets import tree_digest, write_darknet_data, write_dataset_yaml, write_yolo_folder
from conftest import HANG_LIMIT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
PRUNE = ["normal_prune.py", "regular_prune.py", "shortcut_prune.py", "prune_tiny.py", "layer_channel_prune.py"]

# Per tool: the arguments of a command line that works, and its flags that take a path.
# "{x}" is a workspace path; "{n}" makes an output name unique per case.
PRUNE_BASE = {"--cfg": "{cfg}", "--weights": "{weights}", "--out": "{tmp}/prune", "--img-size": "64",
              "--percent": "0.3", "--latency-runs": "0"}
TOOLS = {
    **{s: (PRUNE_BASE, ["--cfg", "--weights", "--data", "--images", "--out"]) for s in PRUNE},
    "regular_prune.py": ({**PRUNE_BASE, "--multiple": "8"}, ["--cfg", "--weights", "--data", "--images", "--out"]),
    "layer_channel_prune.py": ({**PRUNE_BASE, "--layers": "0"}, ["--cfg", "--weights", "--data", "--images", "--out"]),
    "train.py": ({"--cfg": "{cfg}", "--weights": "{weights}", "--data": "{data}", "--out": "{tmp}/train{n}",
                  "--epochs": "1", "--img-size": "64", "--batch-size": "4", "--workers": "0", "--quiet": None},
                 ["--cfg", "--data", "--weights", "--weights-cfg", "--out", "--t_cfg", "--t_weights", "--hyp"]),
    "test.py": ({"--cfg": "{cfg}", "--weights": "{weights}", "--data": "{data}", "--img-size": "64"},
                ["--cfg", "--data", "--weights", "--reference-cfg", "--reference-weights", "--source"]),
    "detect.py": ({"--cfg": "{cfg}", "--weights": "{weights}", "--source": "{image}", "--out": "{tmp}/detect",
                   "--img-size": "64"}, ["--cfg", "--weights", "--source", "--names", "--out"]),
    "convert.py": ({"--cfg": "{cfg}", "--weights": "{weights}", "--out": "{tmp}/c{n}.pt"}, ["--cfg", "--weights", "--out"]),
    "export.py": ({"--cfg": "{cfg}", "--weights": "{weights}", "--out": "{tmp}/e{n}.onnx", "--img-size": "64"},
                  ["--cfg", "--weights", "--out"]),
    "derive_cfg.py": ({"--cfg": "{cfg}", "--data": "{data}", "--img-size": "64", "--out": "{tmp}/d{n}.cfg"},
                      ["--cfg", "--data", "--out"]),
    "yoloslim/data/synthetic.py": ({"--out": "{tmp}/synthetic", "--n-train": "1", "--n-val": "1", "--img-size": "160",
                            "--workers": "1"}, ["--out"]),
    "scripts/fetch_tiny.py": ({"--dest": "{tmp}/fetched", "--sdist": "{tmp}/none.tar.gz"}, ["--dest", "--sdist"]),
    "scripts/yolov5_cfg.py": ({"--model": "n", "--classes": "2", "--out": "{tmp}/y{n}.cfg"}, ["--out"]),
    # slim.py's own synthetic set keeps the refused runs short; --data runs in test_slim_owndata.py
    "slim.py": ({"--model": "narrow", "--out": "{tmp}/slim", "--data-dir": "{tmp}/slim-data", "--n-train": "2",
                 "--n-val": "1", "--epochs": "1", "--sparse-epochs": "1", "--finetune-epochs": "1",
                 "--img-size": "160", "--latency-runs": "0", "--threads": "1", "--percent": "0.999"},
                ["--cfg", "--weights", "--out", "--data-dir"]),
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from yoloslim.darknet.model import Darknet
    from yoloslim.darknet.cfg import write_model_cfg
    from yoloslim.train.transfer import cfg_for_data
    root = tmp_path_factory.mktemp("users")
    mine = root / "mine"                          # everything the user owns lives under here
    folder = write_yolo_folder(str(mine / "set"))
    p = {"folder": folder, "data": write_darknet_data(folder), "yaml": write_dataset_yaml(str(mine), "set"),
         "image": os.path.join(folder, "images", "train", "000000.jpg"), "mine": str(mine)}
    tmp = root / "work"                           # ours: models and outputs
    tmp.mkdir()
    p["tmp"] = str(tmp)
    p["cfg"] = str(tmp / "model.cfg")
    write_model_cfg(cfg_for_data(os.path.join(ROOT, "cfg", "yolov3-tiny.cfg"), 2, img_size=64), p["cfg"])
    torch.manual_seed(0)
    model = Darknet(p["cfg"])
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.1, 1.0)
    p["weights"] = str(tmp / "model.weights")
    model.save_darknet_weights(p["weights"])
    return p


def cases_for(tool, ws):
    base, flags = TOOLS[tool]
    cases, n = [], 0
    for flag in flags:
        for target in ("folder", "data", "yaml", "image"):
            n += 1
            args = {**base, flag: ws[target]}
            argv = []
            for key, value in args.items():
                argv.append(key)
                if value is not None:
                    argv.append(value.format(n=n, **{k: v for k, v in ws.items()}) if "{" in value else value)
            cases.append(argv)
    return cases


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_the_users_data_is_never_written(tool, ws, tmp_path):
    before = tree_digest(ws["mine"])
    cases = cases_for(tool, ws)
    with open(tmp_path / "cases.json", "w") as f:
        json.dump(cases, f)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "readonly_driver.py"), tool,
                           str(tmp_path / "cases.json")], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=HANG_LIMIT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    assert len(results) == len(cases)
    for r in results:
        where = f"{tool} {' '.join(r['argv'])}"
        assert r["code"] in (0, 2), f"{where}: exit {r['code']}\n{r['stderr'][-2000:]}"
        if r["code"] == 2:
            errors = [line for line in r["stderr"].splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and "Traceback" not in r["stderr"], f"{where}:\n{r['stderr'][-2000:]}"
    assert tree_digest(ws["mine"]) == before, f"{tool} changed something under the user's data folder"
    # the output flags were really given the user's paths and refused; outputs elsewhere were not
    if tool in ("convert.py", "scripts/yolov5_cfg.py", "yoloslim/data/synthetic.py"):
        outs = [r for r in results if any(a in r["argv"] for a in (ws["data"], ws["yaml"], ws["image"]))
                and r["argv"][r["argv"].index("--out") + 1] in (ws["data"], ws["yaml"], ws["image"], ws["folder"])]
        assert outs and all(r["code"] == 2 for r in outs)


def test_generator_refuses_a_users_folder_and_reuses_its_own(tmp_path):
    """The issue's data loss: generate() wrote over images/train/000000.jpg of a user's set."""
    from yoloslim.errors import SlimError
    from yoloslim.owned import MARKER
    from yoloslim.data.synthetic import generate
    users = write_yolo_folder(str(tmp_path / "set"))
    before = tree_digest(users)
    with pytest.raises(SlimError, match="did not write"):
        generate(users, n_train=1, n_val=1, img_size=160, workers=1, progress=False)
    assert tree_digest(users) == before
    ours = str(tmp_path / "ours")
    assert generate(ours, n_train=1, n_val=1, img_size=160, workers=1, progress=False) is True
    assert os.path.isfile(os.path.join(ours, MARKER))
    assert generate(ours, n_train=2, n_val=1, img_size=160, workers=1, progress=False) is True   # ours: rebuilt
    os.remove(os.path.join(ours, MARKER))          # as an earlier version left it: meta.json names the generator
    assert generate(ours, n_train=2, n_val=1, img_size=160, workers=1, progress=False) is False
