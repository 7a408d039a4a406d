"""yoloslim.pipeline.coverage, which writes cfg/README.md's coverage of Darknet's cfg folders."""
import subprocess

from conftest import HANG_LIMIT
from test_layers import conv, net, region
from yoloslim.pipeline.coverage import cfgs_in_git, check_cfg, counts, markdown_table, replace_block


def test_refused_cfg_reports_the_reason_by_name():
    row = check_cfg("g.cfg", net() + conv(8) + "[gaussian_yolo]\nclasses=2\n")
    assert not row.builds and row.detector
    assert row.reason.startswith("g.cfg:") and "[gaussian_yolo]" in row.reason and "/" not in row.reason


def test_region_cfg_builds_agrees_and_prunes(darknet):
    row = check_cfg("r.cfg", net() + conv(8) + conv(16, stride=2) + conv(16) + region())
    assert row.builds and row.size == 128 and row.layers == 5
    assert row.opencv.startswith("yes") and row.pjreddie.startswith("yes") and row.pruned.startswith("yes"), row
    assert "| r.cfg | yes | yes | - | 5 |" in markdown_table([row])
    assert counts([row]).startswith("1 of 1 detector cfgs build; OpenCV agrees on 1, pjreddie Darknet on 1; 1 prune")


def test_pjreddie_column_names_what_the_original_darknet_lacks(darknet):
    row = check_cfg("m.cfg", net() + conv(8, act="mish") + conv(16, stride=2) + region())
    assert row.builds and row.pjreddie.startswith("no ") and row.pjreddie.endswith("(lacks activation=mish)"), row


def test_a_wrong_reader_shows_as_no(monkeypatch):
    """The OpenCV column can say no: the same check with the head decoded off by a factor."""
    import yoloslim.pipeline.coverage as coverage
    monkeypatch.setattr(coverage, "max_raw_difference", lambda *a: 0.5)
    row = check_cfg("r.cfg", net() + conv(8) + conv(16, stride=2) + region(), pjreddie=False)
    assert row.opencv == "no 5.0e-01" and row.pjreddie == "not run"


def test_readme_block_is_replaced_not_repeated():
    once = replace_block("# Zoo\n\ntext\n", "table 1")
    twice = replace_block(once, "table 2")
    assert once.startswith("# Zoo\n\ntext\n") and "table 1" in once
    assert "table 1" not in twice and twice.count("table 2") == 1 and twice.count("coverage:begin") == 1


def test_cfgs_are_read_from_a_git_directory(tmp_path):
    work = tmp_path / "w"
    (work / "cfg").mkdir(parents=True)
    (work / "cfg" / "b.cfg").write_text("[net]\n")
    (work / "cfg" / "A.cfg").write_text("[net]\nwidth=1\n")
    (work / "cfg" / "coco.names").write_text("x\n")
    git = ["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "c"]):
        subprocess.run(git + args, check=True, timeout=HANG_LIMIT)
    commit, cfgs = cfgs_in_git(str(work / ".git"))
    assert len(commit) == 40 and cfgs == [("A.cfg", "[net]\nwidth=1\n"), ("b.cfg", "[net]\n")]
