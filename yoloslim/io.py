"""Atomic file and folder output: a killed run never leaves a half-written result behind.

Temporary names carry the writer's process id (``.<name>.<pid>.<random>.tmp``), so the next
run can tell the leftovers of a killed process from the work of one still running, and
removes only the former.
"""
import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")
# A temporary name adds '.', '.<pid>.' (pid_max is 2^22: 7 digits), 8 random characters and '.tmp' to
# the output's name; names longer than this many bytes are shortened so the total stays in NAME_MAX (255).
TEMP_STEM_BYTES = 200
# torch.save reports a failed write of its zip container as a RuntimeError, not the OSError behind it
_TORCH_WRITE_FAILED = re.compile(r"unexpected pos|PytorchStreamWriter failed|failed writing file")
WRITE_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def temp_stem(name):
    """``name`` as it appears inside a temporary name: itself, or when too long for NAME_MAX once the
    temporary's decorations are added, its first characters and a digest of the whole (still unique)."""
    if len(name.encode()) <= TEMP_STEM_BYTES:
        return name
    head = name.encode()[:TEMP_STEM_BYTES - 17].decode(errors="ignore")
    return f"{head}~{hashlib.sha1(name.encode()).hexdigest()[:16]}"


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
        if not m or (name is not None and m["name"] != temp_stem(name)) or _pid_alive(int(m["pid"])):
            continue
        path = os.path.join(folder, entry)
        with contextlib.suppress(OSError):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
                for claimed in (e for e in entries if temp_stem(e) == m["name"]):
                    with contextlib.suppress(OSError):  # the empty folder it had claimed, if any
                        os.rmdir(os.path.join(folder, claimed))
            else:
                os.remove(path)
            removed.append(path)
    return removed


def _temp_prefix(path):
    return f".{temp_stem(os.path.basename(path))}.{os.getpid()}."


def named_write_error(e, path):
    """The exception to raise for a failed write of ``path``: an OSError that names it (a write to the
    temporary file has no name, and torch turns the OSError into a RuntimeError), else ``e`` itself."""
    if isinstance(e, OSError) and e.filename is None:
        return OSError(e.errno, e.strerror or str(e), path)
    if isinstance(e, RuntimeError) and _TORCH_WRITE_FAILED.search(str(e)):
        return OSError(errno.EIO, "writing failed (the disk is full or a file size limit was reached)", path)
    return e


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
        try:
            with os.fdopen(fd, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as e:
            named = named_write_error(e, path)
            if named is e:
                raise
            raise named from e
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
    tmp = None
    try:
        tmp = tempfile.mkdtemp(prefix=f".{temp_stem(name)}.{os.getpid()}.", suffix=".tmp", dir=parent)
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        os.rename(tmp, folder)  # replaces the empty claimed folder atomically
    except BaseException:
        if tmp is not None:
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
