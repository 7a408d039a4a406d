"""Stage caching in yoloslim/pipeline/stages.py:run_training: a stage is reused only with the same arguments and inputs."""
import json
import os

import pytest
import torch

from yoloslim.pipeline.stages import run_training, stage_key
from yoloslim.train.config import TrainConfig
from yoloslim.data.synthetic import generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NARROW = os.path.join(ROOT, "cfg", "yolov3-narrow.cfg")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("cache-data")
    generate(str(out), n_train=4, n_val=2, img_size=136, seed=0, workers=1, progress=False)
    return str(out / "shapes.data")


def stage(out, data, options, weights=None):
    return run_training(TrainConfig(data, cfg=None if weights else NARROW, weights=weights, epochs=1, img_size=64,
                                    batch_size=4, out=str(out), val_max_images=2, **options), quiet=True)


def trained_tensor(out):
    return torch.load(os.path.join(out, "last.pt"), weights_only=True)["model"]["module_list.0.Conv2d.weight"]


def test_changed_argument_or_input_reruns_the_stage(data, tmp_path, capsys):
    base, sparse = tmp_path / "train", tmp_path / "sparse"
    stage(base, data, {"lr0": 0.001})
    first = trained_tensor(base)
    stage(base, data, {"lr0": 0.001})
    assert "[cached]" in capsys.readouterr().out
    assert torch.equal(trained_tensor(base), first)

    stage(base, data, {"lr0": 0.01})                      # new argument: retrained, and said why
    out = capsys.readouterr().out
    assert "[rerun]" in out and "--lr0 0.001 -> 0.01" in out
    assert not torch.equal(trained_tensor(base), first)
    assert json.load(open(base / "done.json"))["key"]["config"]["lr0"] == 0.01

    stage(sparse, data, {"sr": True, "s": 0.01}, weights=str(base / "last.pt"))
    capsys.readouterr()
    stage(base, data, {"lr0": 0.003})                     # the upstream stage retrains ...
    capsys.readouterr()
    stage(sparse, data, {"sr": True, "s": 0.01}, weights=str(base / "last.pt"))
    out = capsys.readouterr().out                             # ... so the stage reading it reruns too
    assert "[rerun]" in out and "last.pt changed" in out


def test_unfinished_stage_with_the_same_key_resumes(data, tmp_path, capsys):
    out = tmp_path / "s"
    stage(out, data, {})
    os.remove(out / "done.json")                              # as if killed before the record was written
    ckpt = torch.load(out / "last.pt", weights_only=True)
    ckpt["epoch"], ckpt["batch"] = 0, 0                       # ... and before the last epoch ended
    torch.save(ckpt, out / "last.pt")
    stage(out, data, {})
    assert "[resume]" in capsys.readouterr().out


def test_finished_stage_without_its_record_is_trained_again(data, tmp_path, capsys):
    out = tmp_path / "s"
    stage(out, data, {})
    os.remove(out / "done.json")                              # killed between the last checkpoint and the record
    result = stage(out, data, {})
    assert "the run finished but its result was never recorded" in capsys.readouterr().out
    assert os.path.isfile(out / "done.json") and "mAP50" in result


def test_key_holds_every_option_that_changes_the_result_and_none_that_do_not(data, tmp_path):
    config = TrainConfig(data, cfg=NARROW, out=str(tmp_path / "a"))
    key = stage_key(config)
    assert key["config"]["ema"] == 0.999 and key["config"]["lrf"] == 0.05   # defaults, resolved
    assert stage_key(TrainConfig(data, cfg=NARROW, out=str(tmp_path / "b"), threads=1, workers=2)) == key
    assert stage_key(TrainConfig(data, cfg=NARROW, out=str(tmp_path / "a"), ema=0.5)) != key
    assert set(key["inputs"]) == {NARROW, data}
