"""Ctrl-C at any moment of a command line: one line on stderr, exit 130, nothing partial.

The moments that used to fail: while torch is still importing (a KeyboardInterrupt traceback, or a
C++ abort, exit -6), and after the outputs are complete, in the interpreter's exit (an "Exception
ignored in atexit" traceback). The first is caught as it happens: the test waits until the child has
mapped torch's shared library, then sends SIGINT.
"""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import HANG_LIMIT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_LIB = "libtorch"


def wait_for_mapping(pid, needle, timeout=HANG_LIMIT):
    """True once ``needle`` appears in the child's memory map (a library being loaded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/maps") as f:
                if needle in f.read():
                    return True
        except FileNotFoundError:
            return False
        time.sleep(0.005)
    return False


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc to see when torch is loading")
@pytest.mark.parametrize("script", ["convert.py", "train.py", "shortcut_prune.py"])
def test_ctrl_c_while_torch_imports(tmp_path, script):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, script), "--help"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for_mapping(proc.pid, TORCH_LIB), "torch was never loaded"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=HANG_LIMIT)
    if proc.returncode == 0:   # the imports finished before the signal landed: --help printed, nothing to judge
        pytest.skip("the child finished importing before SIGINT arrived")
    assert (proc.returncode, err) == (130, "interrupted\n")
    assert os.listdir(tmp_path) == []


CHILD = """
import atexit, os, signal, sys, time
from yoloslim.interrupt import exit_quietly_on_ctrl_c
exit_quietly_on_ctrl_c()
from yoloslim.errors import cli_main
import torch

def late_ctrl_c():          # a Ctrl-C while the interpreter shuts down, after the work is done
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)

def work():
    try:
        os.kill(os.getpid(), signal.SIGINT) if sys.argv[1] == "during" else None
        time.sleep(0.5)
    except KeyboardInterrupt:   # what atomic outputs rely on to remove their temporaries
        print("cleanup ran")
        raise
    print("finished")

if sys.argv[1] == "after":
    atexit.register(late_ctrl_c)
cli_main(work)
"""


@pytest.mark.parametrize("when, code, stderr, stdout", [
    ("after", 130, "interrupted\n", "finished\n"),     # outputs complete: exit at once, no atexit traceback
    ("during", 130, "interrupted\n", "cleanup ran\n"),               # the work sees KeyboardInterrupt (cleanups run)
])
def test_ctrl_c_during_and_after_the_work(tmp_path, when, code, stderr, stdout):
    child = tmp_path / "child.py"
    child.write_text(CHILD.format(root=ROOT))
    done = subprocess.run([sys.executable, str(child), when], capture_output=True, text=True, timeout=HANG_LIMIT)
    assert (done.returncode, done.stderr, done.stdout) == (code, stderr, stdout)


def test_cli_main_leaves_the_callers_handler_alone():
    """In-process callers (tests, pipelines) keep KeyboardInterrupt: nothing here exits on their behalf."""
    from yoloslim.errors import cli_main
    before = signal.getsignal(signal.SIGINT)
    assert cli_main(lambda: 5) == 5
    assert signal.getsignal(signal.SIGINT) is before
