"""Telling a truncated JPEG from a whole one without decoding it.

libjpeg decodes a truncated file into a grey-filled image and only prints "Premature end of JPEG
file" on stderr, so cv2.imread gives no sign. A whole JPEG ends its last scan with an EOI marker
(FF D9); inside entropy-coded data every FF byte is followed by 00 or a restart marker, so the walk
below cannot mistake image data for a marker, and an EXIF thumbnail (inside APP1) is skipped whole.
"""
import re

SOI, EOI, SOS = 0xD8, 0xD9, 0xDA
_STANDALONE = {0x01, *range(0xD0, 0xD8)}          # TEM, RST0-7: no length field
_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def is_jpeg(data):
    return data[:2] == b"\xff\xd8"


def reaches_eoi(data):
    """True when the marker walk from SOI arrives at EOI before the data ends."""
    pos = 2
    while pos + 1 < len(data):
        if data[pos] != 0xFF:
            return False                           # not at a marker: corrupt
        marker = data[pos + 1]
        if marker == 0xFF:                          # fill byte before a marker
            pos += 1
            continue
        if marker == EOI:
            return True
        if marker in _STANDALONE:
            pos += 2
            continue
        if pos + 4 > len(data):
            return False
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == SOS:                           # entropy-coded data up to the next real marker
            found = _MARKER_IN_SCAN.search(data, pos)
            if found is None:
                return False
            pos = found.start()
    return False


def jpeg_truncated(data):
    """True for JPEG bytes that stop before their end-of-image marker; False for other formats."""
    if not is_jpeg(data):
        return False
    if data.rstrip(b"\x00").endswith(b"\xff\xd9"):  # the common case, without a walk
        return False
    return not reaches_eoi(data)                   # data appended after EOI (camera trailers) is fine


def jpeg_file_truncated(path):
    """jpeg_truncated for a file, reading only its last bytes when they already end in EOI (the up-front
    check of a data set touches every image)."""
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return False
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 64))
        if f.read().rstrip(b"\x00").endswith(b"\xff\xd9"):
            return False
        f.seek(0)
        return jpeg_truncated(f.read())
