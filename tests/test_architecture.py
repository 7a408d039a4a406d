"""The floor plan: the library (yoloslim/) imports no script, the model and the trainer know
nothing of the command line, and no file edits sys.path to find the code."""
import ast
import glob
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = sorted(glob.glob(os.path.join(ROOT, "yoloslim", "**", "*.py"), recursive=True))
SCRIPTS = {os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(ROOT, "*.py"))}
SCRIPT_FOLDERS = {"scripts", "benchmarks", "tests"}
# parts below the command line: none of them may import yoloslim.cli
BELOW_CLI = ("darknet", "prune", "train", "data", "eval", "deploy", "zoo")


def imported_modules(path):
    """Every module name ``path`` imports, at any depth (function-level imports included)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def rel(path):
    return os.path.relpath(path, ROOT)


def test_the_library_is_found_and_the_checks_read_it():
    assert len(LIBRARY) > 30 and {"train", "test", "models", "slim"} <= SCRIPTS
    assert "yoloslim.cli.checks" in set(imported_modules(os.path.join(ROOT, "yoloslim", "cli", "prune.py")))


@pytest.mark.parametrize("path", LIBRARY, ids=rel)
def test_no_library_module_imports_a_script(path):
    upward = [m for m in imported_modules(path) if m.split(".")[0] in SCRIPTS | SCRIPT_FOLDERS]
    assert not upward, f"{rel(path)} imports {upward}: move what it needs into yoloslim/"


@pytest.mark.parametrize("path", [p for p in LIBRARY if rel(p).split(os.sep)[1] in BELOW_CLI], ids=rel)
def test_nothing_below_the_command_line_imports_it(path):
    upward = [m for m in imported_modules(path) if m.startswith("yoloslim.cli")]
    assert not upward, f"{rel(path)} imports {upward}: the model, trainer and engine know no command line"


def test_no_file_edits_sys_path():
    sources = [p for p in glob.glob(os.path.join(ROOT, "**", "*.py"), recursive=True)
               if not rel(p).startswith(("weights", "runs", "data" + os.sep)) and p != os.path.abspath(__file__)]
    edits = [rel(p) for p in sources if "sys.path.insert" in open(p, encoding="utf-8").read()
             or "sys.path.append" in open(p, encoding="utf-8").read()]
    assert not edits, f"{edits} edit sys.path; the package installs (pip install -e .) and pytest adds the root"
