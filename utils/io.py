"""Atomic file output: a killed run never leaves a half-written result behind."""
import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside ``path``; on success rename it over ``path``.

    The rename is atomic on POSIX, so readers see either the old file or the new one,
    never a truncated mix. On any exception the temporary file is removed.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
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


def refuse_overwrite(output, *inputs):
    """Raise if ``output`` is one of ``inputs`` (same file), so results never replace sources."""
    from utils.errors import SlimError
    out = os.path.realpath(output)
    for src in inputs:
        if src and os.path.realpath(src) == out:
            raise SlimError(f"{output}: output would overwrite the input {src}; choose another --out")
