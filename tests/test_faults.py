"""Faults of the environment, not of the input: a full disk (or a file size limit) while writing, and
output names at the length limit. Each must end in one ``error:`` line that names the file and the fix,
exit 2, and leave neither a partial file nor an empty folder behind.

A full disk is simulated with RLIMIT_FSIZE in the child (``ulimit -f``): Python ignores SIGXFSZ, so a
write past the limit fails with EFBIG exactly where ENOSPC would, and it binds for root as well.
"""
import os
import re
import resource
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from yoloslim.darknet.model import Darknet  # noqa: E402
from yoloslim.darknet.weights import save_checkpoint  # noqa: E402
from conftest import HANG_LIMIT

CFG = os.path.join(ROOT, "cfg", "yolov3-tiny-5cls.cfg")
NAME_MAX = 255


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("w") / "tiny.weights")
    torch.manual_seed(0)
    model = Darknet(CFG)
    with torch.no_grad():   # gammas of different sizes, so a plan has channels to remove
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.1, 1.0)
    model.save_darknet_weights(path)
    return path


def run_cli(script, *args, cwd, fsize=None):
    limit = None if fsize is None else (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=HANG_LIMIT, preexec_fn=limit)


def assert_one_line_error(done, *patterns):
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    for pattern in patterns:
        assert re.search(pattern, lines[0]), (pattern, lines[0])


@pytest.mark.parametrize("name", ["model.pt", "model.weights"])
def test_full_disk_while_writing_names_the_file_and_leaves_nothing(tmp_path, tiny_weights, name):
    """torch.save's zip writer turns the failed write into 'RuntimeError: unexpected pos'; a .weights
    write fails with an OSError that has no file name. Both now name --out and say what to do."""
    out = tmp_path / "out" / name
    out.parent.mkdir()
    done = run_cli("convert.py", "--cfg", CFG, "--weights", tiny_weights, "--out", out, cwd=tmp_path,
                   fsize=1 << 20)
    assert_one_line_error(done, re.escape(str(out)) + ": ", r"free space on that disk .*or choose another --out")
    assert os.listdir(out.parent) == [], "a partial or temporary file was left"


def test_checkpoint_write_failure_in_process_is_a_named_oserror(tmp_path, monkeypatch):
    """train.py's checkpoints go through save_checkpoint: the failure becomes an OSError naming last.pt,
    and the previous last.pt stays whole."""
    model = Darknet(CFG)
    path = str(tmp_path / "last.pt")
    save_checkpoint(model.checkpoint(), path)
    before = open(path, "rb").read()

    def failing_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 408320 vs 408216")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError) as info:
        save_checkpoint(model.checkpoint(), path)
    assert info.value.filename == path and "writing failed" in info.value.strerror
    assert os.listdir(tmp_path) == ["last.pt"] and open(path, "rb").read() == before


def test_other_runtime_errors_are_not_disguised(tmp_path):
    from yoloslim.io import atomic_write
    with pytest.raises(RuntimeError, match="a bug"):
        with atomic_write(str(tmp_path / "x.bin")) as f:
            f.write(b"x")
            raise RuntimeError("a bug")
    assert os.listdir(tmp_path) == []


def test_output_file_name_at_the_length_limit(tmp_path, tiny_weights):
    """A legal 252-character name: the hidden temporary beside it must stay within NAME_MAX too."""
    out = tmp_path / ("m" * 249 + ".pt")
    assert len(out.name) == 252
    done = run_cli("convert.py", "--cfg", CFG, "--weights", tiny_weights, "--out", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == [out.name]


def test_output_folder_name_at_the_length_limit(tmp_path, tiny_weights):
    """A 250-character --out for a prune script: built in a hidden sibling whose name fits NAME_MAX."""
    out = tmp_path / ("r" * 250)
    done = run_cli("prune_tiny.py", "--cfg", CFG, "--weights", tiny_weights, "--percent", "0.3", "--img-size", "64",
                   "--latency-runs", "0", "--out", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == [out.name]
    assert "summary.json" in os.listdir(out)


def test_temporary_names_fit_and_stale_long_ones_are_cleaned(tmp_path):
    from yoloslim.io import atomic_write, temp_stem
    long_name = "é" * 127          # 254 bytes in UTF-8: NAME_MAX counts bytes
    assert len(temp_stem(long_name).encode()) + 22 <= NAME_MAX
    assert temp_stem(long_name) != temp_stem(long_name[:-1] + "e") and temp_stem("short") == "short"
    with atomic_write(str(tmp_path / long_name)) as f:
        f.write(b"x")
    dead = 2 ** 22 + 12345         # above the default pid_max: no process has it
    (tmp_path / f".{temp_stem(long_name)}.{dead}.abc.tmp").write_bytes(b"half")
    with atomic_write(str(tmp_path / long_name)) as f:
        f.write(b"y")
    assert os.listdir(tmp_path) == [long_name]

def test_claimed_folder_is_released_when_its_work_folder_cannot_be_made(tmp_path, monkeypatch):
    """The hidden work folder failing to appear (a name too long, a full disk) left the claimed, empty
    folder behind; now neither remains."""
    import tempfile
    from yoloslim.io import atomic_folder, claim_folder
    folder = claim_folder(str(tmp_path / "f"))

    def too_long(*a, **k):
        raise OSError(36, "File name too long", "x")

    monkeypatch.setattr(tempfile, "mkdtemp", too_long)
    with pytest.raises(OSError):
        with atomic_folder(folder):
            pass
    assert os.listdir(tmp_path) == []
