"""Error types whose messages are meant for the user, and the CLI wrapper that prints them.

Every error raised for bad input is a ``SlimError``: one line that names the file,
what was wrong and how to fix it. Command lines run through ``cli_main`` so users see
that line instead of a traceback.
"""
import errno
import sys


class SlimError(Exception):
    """Base class for errors caused by the user's input, not by a bug."""


class CfgError(SlimError):
    """A Darknet .cfg (or .data/.names) file that cannot describe a valid network."""


class WeightsError(SlimError):
    """A .weights or .pt file that does not fit the model it is loaded into."""


class DataError(SlimError):
    """A data set, list or label file that cannot be used."""


class PruneError(SlimError):
    """A pruning request that would produce a broken or empty model."""


def cli_main(fn, *args, **kwargs):
    """Run a command-line entry point; turn our errors (and the environment's: OSError,
    MemoryError) into one line on stderr and exit 2."""
    from yoloslim import interrupt
    quiet = interrupt.quiet_outside_work()
    if quiet:
        interrupt.raise_on_ctrl_c()   # during the work: KeyboardInterrupt, so temporaries are removed
    try:
        return _run(fn, *args, **kwargs)
    finally:
        if quiet:
            interrupt.exit_quietly_on_ctrl_c()   # outputs are complete or gone: exit at once


def _run(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except SlimError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # the environment, not a bug: a full disk, a permission changed mid-run
        where = f"{e.filename}: " if e.filename else ""
        full = e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO)
        fix = ("free space on that disk (or raise the file size limit) or choose another --out" if full
               else "check the path, its permissions and free space")
        print(f"error: {where}{e.strerror or e}; {fix}", file=sys.stderr)
        sys.exit(2)
    except MemoryError:
        print("error: out of memory; lower --img-size or --batch-size", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
        sys.exit(130)
