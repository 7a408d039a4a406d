"""Which Darknet cfgs this toolkit builds, prunes and writes exactly, one cfg at a time.

For a cfg's text: parse it (a refused section or option is the reason, by name), build the
model at a small size, write a random-weight pair and compare it in OpenCV DNN (head maps, the
read-back gate of yoloslim.deploy.parity) and, where the library is installed, in pjreddie
Darknet (written for pjreddie's BN arithmetic, its head layers' outputs); then prune it with the
normal policy and read the pruned pair back in OpenCV. ``scripts/coverage.py`` runs this over a
cfg folder (AlexeyAB's from a git directory, Debian's from disk) and writes the table in
cfg/README.md.
"""
import math
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

from yoloslim.darknet.cfg import parse_cfg_text, write_model_cfg
from yoloslim.darknet.kinds import layer_strides, pjreddie_gaps
from yoloslim.darknet.model import Darknet
from yoloslim.deploy.darknet_ref import darknet_difference, darknet_missing, run_darknet
from yoloslim.deploy.measure import count_params, randomize_weights
from yoloslim.deploy.opencv_dnn import max_raw_difference, random_input
from yoloslim.deploy.parity import read_back_tolerance
from yoloslim.errors import SlimError
from yoloslim.prune.engine import POLICIES, prune, write_pruned

MIN_SIZE = 128
# a cfg with one of these sections is a detector in Darknet's sense (the ones we do not build included)
DETECTION_SECTIONS = ("yolo", "region", "gaussian_yolo", "detection")


@dataclass
class Coverage:
    name: str
    detector: bool
    builds: bool = False
    reason: str = ""          # why not, the first failing check's one line without the temporary path
    layers: int = 0
    params: int = 0
    size: int = 0
    opencv: str = ""          # "yes 2.1e-06", "no 3.1e-02", "cannot load: ...", "" when not built
    pjreddie: str = ""
    pruned: str = ""


def is_detector(text):
    sections = {s.strip().lower() for s in re.findall(r"^\s*\[([^\]]+)\]", text, re.M)}
    return bool(sections & set(DETECTION_SECTIONS))


def input_size(defs):
    """The smallest multiple of the model's largest stride that is at least MIN_SIZE."""
    strides = [s for s in layer_strides(defs[1:]) if s]
    step = int(max(strides, default=1))
    return step * math.ceil(MIN_SIZE / step)


def _short(error, folder):
    """The message's first clause, without the temporary folder: the rest is advice for a user's own file."""
    return str(error).replace(folder + os.sep, "").splitlines()[0].split("; ")[0]


def _why(error):
    """What Darknet said, from run_darknet's "<cfg>: Darknet cannot run this pair (<why>)"."""
    found = re.search(r"Darknet cannot run this pair \((.*)\)$", str(error))
    return found.group(1) if found else str(error).splitlines()[0]


def verdict(diff, tolerance):
    return f"{'yes' if diff <= tolerance else 'no'} {diff:.1e}"


def opencv_check(model, cfg, weights, size):
    try:
        diff = max_raw_difference(model, cfg, weights, size)
    except SlimError as e:
        return "cannot load: " + str(e).split("(", 1)[-1].rstrip(")")
    return verdict(diff, read_back_tolerance(model, random_input(size)))


def pjreddie_check(model, cfg, folder, size):
    if darknet_missing():
        return "not installed"
    weights = os.path.join(folder, "pjreddie.weights")
    model.save_darknet_weights(weights, reader="pjreddie")
    x = random_input(size, seed=0, channels=model.in_channels)[0]
    try:
        run = run_darknet(cfg, weights, x, thresh=0.5, nms=0)   # the layer outputs are compared, not boxes: no NMS
    except SlimError as e:
        return "cannot run: " + _why(e)
    return verdict(darknet_difference(model, run, x), read_back_tolerance(model, x[None]))


def prune_check(model, folder, size):
    try:
        compact, _ = prune(model, POLICIES["normal"], percent=0.3, layer_keep=0.05)
        cfg, weights = write_pruned(compact, folder, "pruned")
    except SlimError as e:
        return "no: " + _short(e, folder)
    return opencv_check(compact.eval(), cfg, weights, size)


def check_cfg(name, text, pjreddie=True):
    """The Coverage of one cfg text (``name`` is only reported)."""
    row = Coverage(name, is_detector(text))
    with tempfile.TemporaryDirectory(prefix="coverage-") as folder:
        try:
            defs = parse_cfg_text(text, os.path.join(folder, name))
            row.size = input_size(defs)
            defs[0]["width"] = defs[0]["height"] = row.size
            cfg = os.path.join(folder, name)          # messages name the cfg, not a temporary file
            write_model_cfg(defs, cfg)
            model = randomize_weights(Darknet(cfg), seed=1).eval()
        except SlimError as e:
            row.reason = _short(e, folder)
            return row
        row.builds, row.layers, row.params = True, len(model.module_defs), count_params(model)
        weights = os.path.join(folder, "model.weights")
        model.save_darknet_weights(weights)
        row.opencv = opencv_check(model, cfg, weights, row.size)
        row.pjreddie = pjreddie_check(model, cfg, folder, row.size) if pjreddie else "not run"
        gaps = pjreddie_gaps(defs)
        if gaps and pjreddie:     # what the original Darknet lacks, which explains a "no" there
            row.pjreddie += f" (lacks {', '.join(gaps)})"
        row.pruned = prune_check(model, folder, row.size)
    return row


def _cell(text):
    return text.replace("|", "\\|") if text else "-"


def markdown_table(rows):
    lines = ["| cfg | detector | builds | refused because | layers | params | px | OpenCV agrees | "
             "pjreddie agrees | normal prune, read back in OpenCV |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {'yes' if r.detector else 'no'} | {'yes' if r.builds else 'no'} | "
                     f"{_cell(r.reason)} | {r.layers or '-'} | {f'{r.params / 1e6:.2f}M' if r.builds else '-'} | "
                     f"{r.size if r.builds else '-'} | {_cell(r.opencv)} | {_cell(r.pjreddie)} | {_cell(r.pruned)} |")
    return "\n".join(lines)


def counts(rows):
    """One line: how many build, agree in OpenCV, and prune, over all cfgs and over the detectors."""
    def part(rs, what):
        built = [r for r in rs if r.builds]
        ok_cv = sum(r.opencv.startswith("yes") for r in built)
        ok_pj = sum(r.pjreddie.startswith("yes") for r in built)
        ok_pr = sum(r.pruned.startswith("yes") for r in built)
        return (f"{len(built)} of {len(rs)} {what} build; OpenCV agrees on {ok_cv}, pjreddie Darknet on {ok_pj}; "
                f"{ok_pr} prune and read back in OpenCV")
    return part([r for r in rows if r.detector], "detector cfgs") + ". " + part(rows, "cfgs") + "."



# ----------------------------------------------------------------------------- cfg folders and the README
def cfgs_in_git(git_dir, folder="cfg"):
    """(name, text) of every .cfg directly in ``folder`` of a bare git directory's HEAD, and its commit."""
    def git(*args):
        proc = subprocess.run(["git", f"--git-dir={git_dir}", *args], capture_output=True, text=True)
        if proc.returncode:
            raise SlimError(f"--darknet-git {git_dir}: git {args[0]} failed ({proc.stderr.strip().splitlines()[-1:]}); "
                            f"pass the git directory of a Darknet clone")
        return proc.stdout
    commit = git("rev-parse", "HEAD").strip()
    names = [n for n in git("ls-tree", "--name-only", "HEAD", f"{folder}/").split("\n") if n.endswith(".cfg")]
    return commit, [(os.path.basename(n), git("show", f"HEAD:{n}")) for n in sorted(names, key=str.lower)]


def cfgs_in_folder(folder):
    """(name, text) of every .cfg in ``folder`` (bytes that are not UTF-8 become U+FFFD)."""
    names = sorted((n for n in os.listdir(folder) if n.endswith(".cfg")), key=str.lower)
    out = []
    for n in names:
        with open(os.path.join(folder, n), encoding="utf-8", errors="replace") as f:
            out.append((n, f.read()))
    return out


BEGIN, END = "<!-- coverage:begin (scripts/coverage.py writes this block) -->", "<!-- coverage:end -->"


def replace_block(readme_text, block):
    """``readme_text`` with the text between the coverage markers replaced (appended when absent)."""
    new = f"{BEGIN}\n{block}\n{END}"
    if BEGIN in readme_text and END in readme_text:
        head, rest = readme_text.split(BEGIN, 1)
        return head + new + rest.split(END, 1)[1]
    return readme_text.rstrip("\n") + "\n\n" + new + "\n"
