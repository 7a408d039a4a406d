"""Folders this project created, and the rule that keeps it out of every other one.

A tool that generates files into a folder it may reuse later (the synthetic data set, a slim.py
run, detections, fetched weights) first marks the folder with ``MARKER``, a small file naming the
tool. Such a folder is written into again; an absent or empty folder is created and marked; any
other folder holding files is refused with one line, because it is the user's (a data set, say)
and the user's files are read-only to us. ``legacy`` lets a tool recognise a folder that one of
its earlier versions wrote before markers existed.
"""
import os

from yoloslim.errors import SlimError
from yoloslim.io import atomic_write

MARKER = ".yolo-slim-owned"


def is_ours(folder, legacy=None):
    """True when ``folder`` carries the marker, or ``legacy(folder)`` recognises an earlier run's files."""
    return os.path.isfile(os.path.join(folder, MARKER)) or bool(legacy and legacy(folder))


def check_claimable(folder, flag, legacy=None):
    """Refuse (SlimError) a ``folder`` that holds files and is not ours; writes nothing."""
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise SlimError(f"{flag} {folder}: is an existing file, not a folder; choose another {flag}")
    if os.path.isdir(folder) and os.listdir(folder) and not is_ours(folder, legacy):
        raise SlimError(f"{flag} {folder}: folder holds files this project did not write (no {MARKER}); "
                        f"choose a new or empty folder for {flag}, so nothing of yours is overwritten")
    return folder


def claim(folder, flag, tool, legacy=None):
    """Create (or take an empty / already marked) ``folder`` and mark it as written by ``tool``."""
    check_claimable(folder, flag, legacy)
    os.makedirs(folder, exist_ok=True)
    marker = os.path.join(folder, MARKER)
    if not os.path.isfile(marker):
        with atomic_write(marker, "w") as f:
            f.write(f"written by {tool}; yolo-slim writes into this folder again, and into no unmarked one\n")
    return folder


def has_any(*names):
    """A ``legacy`` test: the folder holds one of ``names`` (glob patterns)."""
    import glob

    def test(folder):
        return any(glob.glob(os.path.join(folder, n)) for n in names)
    return test


def inside(path, folder):
    """True when ``path`` is ``folder`` or lies under it (both resolved)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)
