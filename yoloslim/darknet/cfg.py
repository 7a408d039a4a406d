"""Read and write Darknet .cfg files, and read .data and .names files.

A parsed cfg is a list of ``Section`` dicts (``module_defs``); index 0 is ``[net]``.
Values are typed (int, float, str, or a list of numbers for comma-separated values)
so that model code can use them directly. Each section also remembers the text each
key had in the file and the comment lines above it, so a written cfg differs from the
original only where a value really changed: anchors, comments and unknown keys survive.
"""
import os
import re

from yoloslim.errors import CfgError, DataError
from yoloslim.io import atomic_write
from yoloslim.darknet.kinds import KINDS, check_section

_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class Section(dict):
    """One ``[type]`` block of a cfg: a dict of typed values plus where it came from."""

    def __init__(self, type_, path=None, line=None):
        super().__init__(type=type_)
        self.path = path
        self.line = line
        self.raw = {}        # key -> text as written in the file
        self.comments = []   # comment lines that stood above the section header

    def where(self):
        """'file.cfg:12 [route]' for messages."""
        loc = f"{self.path}:{self.line}" if self.path else "<cfg>"
        return f"{loc} [{self['type']}]"


def parse_value(text):
    """'3' -> 3, '.5' -> 0.5, '1,2,3' -> [1, 2, 3], 'leaky' -> 'leaky'."""
    text = text.strip()
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > 1 and all(_INT.match(p) or _FLOAT.match(p) for p in parts if p):
        return [parse_value(p) for p in parts if p]
    return text


def format_value(value):
    """Inverse of parse_value; floats keep every digit (repr) so anchors are never truncated."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def parse_cfg_text(text, path=None):
    """Parse cfg text into module_defs; ``path`` is only used in messages."""
    name = path or "<cfg>"
    module_defs, pending_comments = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped[0] in "#;":
            pending_comments.append(stripped)
            continue
        if stripped.startswith("["):
            if not stripped.endswith("]") or len(stripped) < 3:
                raise CfgError(f"{name}:{lineno}: malformed section header {stripped!r}; write it as [type]")
            section = Section(stripped[1:-1].strip().lower(), path, lineno)
            section.comments, pending_comments = pending_comments, []
            module_defs.append(section)
            continue
        if "=" not in stripped:
            raise CfgError(f"{name}:{lineno}: expected 'key=value', got {stripped!r}")
        if not module_defs:
            raise CfgError(f"{name}:{lineno}: 'key=value' before the first [section]; start the file with [net]")
        key, value = (s.strip() for s in stripped.split("=", 1))
        value = re.split(r"\s[#;]", value)[0].strip()  # trailing comment after the value
        if not key or not value:
            raise CfgError(f"{name}:{lineno}: empty key or value in {stripped!r}")
        section = module_defs[-1]
        if key == "type":
            if section["type"] not in KINDS:
                continue  # [cost] type=sse is Darknet's; the section itself is refused by name below
            raise CfgError(f"{name}:{lineno}: 'type' is not a Darknet key; remove it")
        if key in section:
            continue  # Darknet's option_find returns the first match: a repeated key is ignored
        section[key] = parse_value(value)
        section.raw[key] = value
    if not module_defs:
        raise CfgError(f"{name}: no [sections] found; is this a Darknet .cfg file?")
    if module_defs[0]["type"] not in ("net", "network"):
        raise CfgError(f"{module_defs[0].where()}: the first section must be [net]")
    for section in module_defs[1:]:
        check_section(section)   # unknown kinds and refused options fail here, by name
    return module_defs


def parse_model_cfg(path):
    """Parse a Darknet .cfg file into a list of Sections, ``[net]`` first."""
    if not os.path.isfile(path):
        raise CfgError(f"{path}: cfg file not found; check the --cfg path")
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: editors on Windows add a BOM
            text = f.read()
    except UnicodeDecodeError:
        raise CfgError(f"{path}: not a text file; pass the .cfg, not the .weights") from None
    except OSError as e:
        raise CfgError(f"{path}: cannot read it ({e.strerror})") from None
    return parse_cfg_text(text, path)


def cfg_to_text(module_defs):
    """Render module_defs as Darknet cfg text; unchanged values keep their original spelling."""
    lines = []
    for section in module_defs:
        comments = getattr(section, "comments", [])
        raw = getattr(section, "raw", {})
        if lines:
            lines.append("")
        lines.extend(comments)
        lines.append(f"[{section['type']}]")
        for key, value in section.items():
            if key == "type":
                continue
            if key in raw and parse_value(raw[key]) == value:
                lines.append(f"{key}={raw[key]}")
            else:
                lines.append(f"{key}={format_value(value)}")
    return "\n".join(lines) + "\n"


def write_model_cfg(module_defs, path):
    """Write module_defs to ``path`` atomically."""
    with atomic_write(path, "w") as f:
        f.write(cfg_to_text(module_defs))


def parse_data_cfg(path):
    """Parse a .data file (classes, train, valid, names, ...).

    Relative paths are taken relative to the current directory when they exist there,
    otherwise relative to the .data file, so a data set folder can be moved as a whole.
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: .data file not found; check the --data path")
    options = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if "=" not in line:
                raise DataError(f"{path}:{lineno}: expected 'key=value', got {line!r}")
            key, value = (s.strip() for s in line.split("=", 1))
            options[key] = value
    if "classes" in options:
        try:
            options["classes"] = int(options["classes"])
        except ValueError:
            raise DataError(f"{path}: classes={options['classes']!r} is not an integer") from None
    base = os.path.dirname(os.path.abspath(path))
    for key in ("train", "valid", "names", "test"):
        value = options.get(key)
        if value and not os.path.isabs(value) and not os.path.exists(value):
            options[key] = os.path.join(base, value)
    return options


def load_classes(path):
    """Class names, one per non-empty line of a .names file."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: .names file not found; check 'names=' in the .data file")
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]
