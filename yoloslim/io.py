"""Atomic file and folder output: a killed run never leaves a half-written result behind.

Temporary names carry the writer's process id (``.<name>.<pid>.<random>.tmp``), so the next
run can tell the leftovers of a killed process from the work of one still running, and
removes only the former.
"""
import contextlib
import os
import re
import shutil
import tempfile

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")


def _pid_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temps(folder, name=None):
    """Remove hidden temporary files/folders in ``folder`` left by processes that no longer run
    (``name``: only those of that output). Returns the removed paths."""
    removed = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry)
        if not m or (name is not None and m["name"] != name) or _pid_alive(int(m["pid"])):
            continue
        path = os.path.join(folder, entry)
        with contextlib.suppress(OSError):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
                with contextlib.suppress(OSError):  # the empty folder it had claimed, if any
                    os.rmdir(os.path.join(folder, m["name"]))
            else:
                os.remove(path)
            removed.append(path)
    return removed


def _temp_prefix(path):
    return f".{os.path.basename(path)}.{os.getpid()}."


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside ``path``; on success rename it over ``path``.

    The rename is atomic on POSIX, so readers see either the old file or the new one,
    never a truncated mix. On any exception the temporary file is removed; after a SIGKILL
    it stays, and the next write of the same name removes it.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    clean_stale_temps(folder, os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs should look like any other file
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def claim_folder(base):
    """Create and return a new empty folder named ``base``, ``base-2``, ``base-3``, ...

    ``os.mkdir`` fails if the name exists, so two runs started at once never get the same one.
    """
    base = os.fspath(base).rstrip(os.sep) or os.sep
    os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
    clean_stale_temps(os.path.dirname(os.path.abspath(base)))
    folder, n = base, 2
    while True:
        try:
            os.mkdir(folder)
            return folder
        except FileExistsError:
            folder, n = f"{base}-{n}", n + 1


@contextlib.contextmanager
def atomic_folder(folder):
    """Build the contents of the (claimed, empty) ``folder`` in a hidden sibling, then rename it
    into place: readers see an empty folder or a complete one. On failure both are removed."""
    folder = os.fspath(folder).rstrip(os.sep)
    parent, name = os.path.split(os.path.abspath(folder))
    tmp = tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}.", suffix=".tmp", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        os.rename(tmp, folder)  # replaces the empty claimed folder atomically
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(folder)  # only if still empty
        raise


def _umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


def is_torch_file(path):
    """True when ``path`` holds a torch.save file (a zip archive, or a pickle for the legacy format),
    whatever its name: a checkpoint is recognised by content, not by extension. A Darknet
    .weights file starts with its int32 major version (0 or 1), so neither signature fits it."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def refuse_overwrite(output, *inputs):
    """Raise if ``output`` is one of ``inputs`` (same file), so results never replace sources."""
    from yoloslim.errors import SlimError
    out = os.path.realpath(output)
    for src in inputs:
        if src and os.path.realpath(src) == out:
            raise SlimError(f"{output}: output would overwrite the input {src}; choose another --out")
