"""A save killed half-way must leave the previous complete file in place, byte for byte.

A child process rewrites a large file in a loop through ``yoloslim.io.atomic_write`` (and, in a
second test, ``Darknet.save_darknet_weights``); the test SIGKILLs it while a write is under way
and then checks that the file under the real name is a complete earlier version. Temporary
files of the killed write may remain beside it (nothing can clean up after SIGKILL); they carry
a hidden ``.<name>.*.tmp`` name and never the real one.
"""
import glob
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from conftest import HANG_LIMIT  # noqa: E402
from yoloslim.darknet.bn_readers import OPENCV_REVISION  # noqa: E402
from yoloslim.errors import SlimError  # noqa: E402
from yoloslim.io import atomic_write, refuse_overwrite  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")

SIZE_MB = 64
CHUNK = 1 << 20

# Version k of the file is SIZE_MB chunks, each filled with one byte derived from k; the small
# sleep per chunk stands in for a slow disk, so a write lasts long enough to be interrupted.
WRITER = textwrap.dedent(f"""
    import sys, time
    from yoloslim.io import atomic_write
    path = sys.argv[1]
    for k in range(int(sys.argv[2]), 10 ** 6):
        print("begin", k, flush=True)
        with atomic_write(path, "wb") as f:
            for c in range({SIZE_MB}):
                f.write(bytes([(k * 31 + c) % 256]) * {CHUNK})
                time.sleep(0.002)
        print("done", k, flush=True)
""")


def version_bytes(k):
    return b"".join(bytes([(k * 31 + c) % 256]) * CHUNK for c in range(SIZE_MB))


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def temp_leftovers(path):
    folder, name = os.path.split(path)
    return glob.glob(os.path.join(folder, f".{name}.*.tmp"))


def start(script, *args):
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)


def wait_for(proc, word, count=1):
    """Read the child's progress lines until ``word`` has been seen ``count`` times; return the last k."""
    seen, last = 0, None
    done = []
    while seen < count:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"writer exited early: {proc.stderr.read()}")
        tag, k = line.split()
        if tag == "done":
            done.append(int(k))
        if tag == word:
            seen, last = seen + 1, int(k)
    return last, done


def wait_until(condition, timeout=HANG_LIMIT):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.001)


def kill(proc):
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=HANG_LIMIT)
    rest = proc.stdout.read().split()
    return [int(rest[i + 1]) for i in range(0, len(rest) - 1, 2) if rest[i] == "done"]


@pytest.mark.parametrize("delay", [0.0, 0.03, 0.08])
def test_sigkill_during_atomic_write_keeps_the_previous_file(tmp_path, delay):
    target = str(tmp_path / "big.weights")
    with atomic_write(target) as f:
        f.write(version_bytes(0))
    proc = start(WRITER, target, 1)
    try:
        wait_for(proc, "done")               # version 1 is complete and under the real name
        wait_for(proc, "begin")              # version 2 is being written ...
        wait_until(lambda: temp_leftovers(target))  # ... into its temporary file
        time.sleep(delay)
    finally:
        finished = kill(proc)
    last_complete = 1 + len(finished)        # a 'done' may have raced with the kill
    assert os.path.getsize(target) == SIZE_MB * CHUNK
    digest = sha256_file(target)
    assert digest in {hashlib.sha256(version_bytes(k)).hexdigest() for k in (last_complete, last_complete + 1)}
    # the killed write's temporary file is the only thing left over, under a hidden temp name
    assert all(os.path.basename(p).endswith(".tmp") for p in temp_leftovers(target))
    assert sorted(os.listdir(tmp_path)) == sorted(["big.weights"] + [os.path.basename(p) for p in temp_leftovers(target)])


SAVER = textwrap.dedent("""
    import sys
    import torch
    from yoloslim.darknet.model import Darknet
    torch.set_num_threads(1)
    model = Darknet.without_init(sys.argv[1])
    for k in range(1, 10 ** 6):
        torch.manual_seed(k)
        for p in model.parameters():
            p.data.normal_()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
                m.running_mean.zero_()   # without_init leaves it uninitialised (NaN is refused on load)
        model.seen = k
        print("begin", k, flush=True)
        model.save_darknet_weights(sys.argv[2])
        print("done", k, flush=True)
""")


def test_sigkill_during_save_darknet_weights_leaves_a_loadable_file(tmp_path):
    """Real weights of a 35 MB model: after the kill the file loads and is one complete save."""
    from yoloslim.darknet.model import Darknet
    cfg, target = os.path.join(ROOT, "cfg", "yolov3-tiny.cfg"), str(tmp_path / "tiny.weights")
    proc = start(SAVER, cfg, target)
    try:
        wait_for(proc, "done", count=2)
        wait_for(proc, "begin")
        time.sleep(0.05)
    finally:
        kill(proc)
    model = Darknet.without_init(cfg).load_darknet_weights(target)   # a partial file would be refused
    assert model.seen >= 2
    assert os.path.getsize(target) == 20 + 4 * model.darknet_float_count()
    assert all(p.endswith(".tmp") for p in temp_leftovers(target))


def test_failed_write_keeps_the_old_file_and_removes_its_temp(tmp_path):
    target = str(tmp_path / "out.pt")
    with atomic_write(target) as f:
        f.write(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"half of the new")
            raise RuntimeError("disk full")
    assert open(target, "rb").read() == b"old"
    assert os.listdir(tmp_path) == ["out.pt"]


def test_atomic_write_output_is_readable_by_others(tmp_path):
    """mkstemp makes 0600 files; a written model must get the usual umask permissions."""
    target = str(tmp_path / "m.weights")
    with atomic_write(target) as f:
        f.write(b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~umask


def test_refuse_overwrite(tmp_path):
    src = tmp_path / "in.weights"
    src.write_bytes(b"w")
    os.symlink(src, tmp_path / "link.weights")
    for same in (str(src), str(tmp_path / "." / "in.weights"), str(tmp_path / "link.weights")):
        with pytest.raises(SlimError, match="overwrite the input"):
            refuse_overwrite(same, "cfg/x.cfg", str(src))
    relative = os.path.relpath(src)
    with pytest.raises(SlimError):
        refuse_overwrite(relative, str(src))
    refuse_overwrite(str(tmp_path / "out.weights"), str(src), None, "")  # different file, empty inputs: fine
    assert src.read_bytes() == b"w"


def test_save_darknet_weights_is_atomic_on_error(tmp_path):
    """An exception while the bytes are produced leaves the old weights file untouched."""
    from yoloslim.darknet.model import Darknet
    model = Darknet(os.path.join(ROOT, "cfg", "yolov3-tiny-5cls.cfg"))
    target = str(tmp_path / "m.weights")
    model.save_darknet_weights(target)
    before = sha256_file(target)
    model.darknet_weights_bytes = lambda *args: (_ for _ in ()).throw(OSError("no space left"))
    with pytest.raises(OSError):
        model.save_darknet_weights(target)
    assert sha256_file(target) == before and os.listdir(tmp_path) == ["m.weights"]
    assert np.frombuffer(open(target, "rb").read(12), np.int32).tolist() == [0, 2, OPENCV_REVISION]
