"""Reading the user's small text inputs (label files, image lists) with one-line errors.

A label or list file that is a folder, a device, or not UTF-8 text would otherwise surface as a
``UnicodeDecodeError``/``IsADirectoryError`` traceback, or worse, be taken for "no objects".
"""
import os

from yoloslim.errors import DataError


def refuse_non_regular(path, kind):
    """Raise when ``path`` exists but is not a regular file (a folder, a FIFO, a device)."""
    if os.path.exists(path) and not os.path.isfile(path):
        what = "a folder" if os.path.isdir(path) else "not a regular file"
        raise DataError(f"{path}: is {what}, not a {kind}; remove or rename it so that the path holds the file")


def read_text_lines(path, kind, fix):
    """The lines of the UTF-8 text file ``path``; ``kind`` and ``fix`` go into the one-line error."""
    refuse_non_regular(path, kind)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file (byte {e.start} cannot be decoded); {fix}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the {kind} ({e.strerror}); check its permissions") from None
