"""The three forms of a user's data set read into one DataSet, and derive_cfg.py on each."""
import os
import subprocess
import sys

import pytest

from owndata_sets import NAMES, tree_digest, write_darknet_data, write_dataset_yaml, write_yolo_folder
from yoloslim.errors import DataError
from yoloslim.darknet.cfg import parse_model_cfg
from yoloslim.data.userdata import load_dataset, parse_simple_yaml, write_darknet_data as write_lists
from conftest import HANG_LIMIT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def mine(tmp_path):
    folder = write_yolo_folder(str(tmp_path / "set"))
    return {"folder": folder, "data": write_darknet_data(folder), "yaml": write_dataset_yaml(str(tmp_path), "set"),
            "root": str(tmp_path)}


def test_three_forms_give_the_same_data_set(mine, tmp_path):
    specs = [load_dataset(mine[k]) for k in ("folder", "data", "yaml")]
    assert [s.form for s in specs] == ["YOLO folder", "Darknet .data", "dataset YAML"]
    for s in specs:
        assert s.names == NAMES and len(s.train) == 6 and len(s.val) == 3
        assert s.train == specs[0].train and s.val == specs[0].val and all(os.path.isabs(p) for p in s.train)
    data = write_lists(specs[2], str(tmp_path / "run" / "data"))
    assert load_dataset(data).train == specs[0].train          # what train.py reads is the same set


def test_yaml_subset(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("# c\npath: .  # root\ntrain: [a/images, 'b, c']\nval:\n  - v1\n  - \"v2\"\n"
                    "names: {0: cat, 1: 'dog # not a comment'}\ndownload: |\n  import os\n  x: 1\nnc: 2\n")
    assert parse_simple_yaml(str(path)) == {"path": ".", "train": ["a/images", "b, c"], "val": ["v1", "v2"],
                                            "names": {"0": "cat", "1": "dog # not a comment"}, "download": None,
                                            "nc": "2"}
    path.write_text("names:\n  0: a\n    deeper: b\n")
    with pytest.raises(DataError, match=r"d\.yaml:3"):
        parse_simple_yaml(str(path))
    path.write_text("train: &anchor x\n")
    with pytest.raises(DataError, match="anchors, aliases and tags"):
        parse_simple_yaml(str(path))


@pytest.mark.parametrize("text, message", [
    ("path: set\ntrain: images/train\nval: images/val\nnames:\n  0: a\n  2: b\n", r"ids \[0, 2\] are not 0\.\.1"),
    ("path: set\ntrain: images/train\nval: images/val\nnames: [a, b]\nnc: 3\n", "nc: 3 but 2 names"),
    ("path: set\ntrain: images/train\nval: images/nope\nnames: [a, b]\n", "val: images/nope not found"),
    ("path: set\ntrain: images/train\nval: images/val\nnames: [a]\n", "class 1 is not 0..0"),
    ("path: set\ntrain: images/train\nnames: [a, b]\n", "no 'val:' entry"),
])
def test_bad_yaml_is_one_error_naming_the_file(mine, text, message):
    path = os.path.join(mine["root"], "bad.yaml")
    with open(path, "w") as f:
        f.write(text)
    with pytest.raises(DataError, match=message):
        load_dataset(path)


def test_folder_without_names_counts_classes_from_labels_and_without_val_is_refused(mine, capsys):
    os.remove(os.path.join(mine["folder"], "classes.txt"))
    os.remove(os.path.join(mine["folder"], "obj.names"))
    spec = load_dataset(mine["folder"])
    assert spec.names == ["class0", "class1"] and "counted from the labels" in capsys.readouterr().err
    os.rename(os.path.join(mine["folder"], "images", "val"), os.path.join(mine["folder"], "images", "v"))
    with pytest.raises(DataError, match="no images/val folder"):
        load_dataset(mine["folder"])


def run_derive(*args):
    return subprocess.run([sys.executable, "derive_cfg.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=HANG_LIMIT, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_derive_cfg_command(mine, tmp_path):
    before = tree_digest(mine["root"])
    out = tmp_path.parent / f"{tmp_path.name}-derived.cfg"
    done = run_derive("--cfg", "cfg/yolov3-tiny.cfg", "--data", mine["yaml"], "--img-size", "96", "--out", out)
    assert done.returncode == 0, done.stderr
    defs = parse_model_cfg(str(out))
    heads = [i for i, m in enumerate(defs) if m["type"] == "yolo"]
    assert defs[0]["width"] == defs[0]["height"] == 96 and len(heads) == 2
    for i in heads:
        assert defs[i]["classes"] == 2 and defs[i - 1]["filters"] == len(defs[i]["mask"]) * (5 + 2)
        assert len(defs[i]["anchors"]) == 12 and max(defs[i]["anchors"]) <= 96   # k-means at 96 px, not COCO's
    assert "k-means on the training boxes" in done.stdout
    again = run_derive("--cfg", "cfg/yolov3-tiny.cfg", "--data", mine["folder"], "--out", out)
    assert again.returncode == 2 and again.stderr.startswith("error: --out") and "never replaces" in again.stderr
    assert tree_digest(mine["root"]) == before


@pytest.mark.parametrize("cfg, method", [("yolov3-narrow", "shortcut"), ("yolov3", "shortcut"),
                                         ("yolov3-tiny", "tiny"), ("yolov4-tiny", "tiny")])
def test_method_follows_the_graph_unless_overridden(cfg, method):
    from yoloslim.pipeline.starting_point import choose_method
    defs = parse_model_cfg(os.path.join(ROOT, "cfg", f"{cfg}.cfg"))
    chosen, why = choose_method(defs)
    assert chosen == method and ("shortcut group" in why) == (method == "shortcut")
    assert choose_method(defs, "regular-x8") == ("regular-x8", "--method")
