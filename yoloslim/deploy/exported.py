"""Exported models as users run them: OpenVINO IR written from our ONNX, output checks against
PyTorch, and an exported file wrapped so that mAP and agreement can score it like our model."""
import contextlib
import os
import shutil
import tempfile

import numpy as np
import torch

from yoloslim.errors import SlimError
from yoloslim.io import clean_stale_temps
from yoloslim.deploy.latency import ort_session, ov_compiled, require
from yoloslim.deploy.onnx_export import Exportable
from yoloslim.deploy.opencv_dnn import finite_max

FORMATS = {"onnx": ".onnx", "openvino": ".xml"}


@contextlib.contextmanager
def hidden_workdir(out):
    """A hidden folder beside ``out`` (named so that yoloslim.io.clean_stale_temps removes it after a
    kill), removed on the way out: intermediate files never sit under a finished-looking name."""
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    clean_stale_temps(parent, os.path.basename(out))   # what a killed run of the same output left
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.{os.getpid()}.", suffix=".tmp", dir=parent)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ir_bin(xml):
    return os.path.splitext(xml)[0] + ".bin"


def convert_to_ir(onnx_path, xml_path):
    """OpenVINO IR (.xml + .bin) from an ONNX file, at full precision (OpenVINO's converter would
    halve the weights to fp16 by default, which is a precision change the user did not ask for)."""
    ov = require("openvino")
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
    return xml_path


def publish(files):
    """Rename finished (src, dst) files into place, the entry file last: a reader that finds the
    .xml finds its .bin."""
    for src, dst in files:
        os.replace(src, dst)


def runtime_outputs(path, x, threads=1):
    """Every output of an exported file for input ``x``, in the file's output order (ONNX Runtime
    for .onnx, OpenVINO for .xml)."""
    path = os.fspath(path)
    if path.endswith(".xml"):
        compiled = ov_compiled(path, threads, exact=True)
        result = compiled({0: x})
        return [np.asarray(result[o]) for o in compiled.outputs]
    session = ort_session(path, threads)
    return session.run(None, {session.get_inputs()[0].name: x})


def max_difference(model, path, img_size, seed=0):
    """Largest difference between an exported file and PyTorch on a random input, relative to
    max(1, |value|) as export.onnx_max_difference measures it."""
    x = np.random.default_rng(seed).random((1, model.in_channels, img_size, img_size), dtype=np.float32)
    theirs = runtime_outputs(path, x)
    with torch.no_grad():
        ours = Exportable(model.eval())(torch.from_numpy(x))
    if len(ours) != len(theirs):
        return float("inf")
    return finite_max(np.abs(a.numpy() - b) / np.maximum(1.0, np.abs(b)) for a, b in zip(ours, theirs))


class ExportedDetector(torch.nn.Module):
    """An exported file behind the interface test.evaluate and yoloslim.eval.agreement use: eval-mode
    ``(detections, None)`` for a batch, one image at a time (the export has batch 1)."""

    def __init__(self, path, nc, threads=1):
        super().__init__()
        self.nc = nc
        self.path = os.fspath(path)
        self.register_parameter("anchor_device", torch.nn.Parameter(torch.zeros(1), requires_grad=False))
        if self.path.endswith(".xml"):
            compiled = ov_compiled(self.path, threads)
            request = compiled.create_infer_request()
            self._run = lambda x: np.asarray(request.infer({0: x})[compiled.outputs[0]])
        else:
            session = ort_session(self.path, threads)
            name = session.get_inputs()[0].name
            self._run = lambda x: session.run(["detections"], {name: x})[0]

    def forward(self, imgs):
        outs = [self._run(np.ascontiguousarray(img[None].cpu().numpy(), dtype=np.float32)) for img in imgs]
        return torch.from_numpy(np.concatenate(outs)), None


def check_format(out, fmt):
    """The output name must end in the format's suffix: a .onnx file holding IR (or the reverse)
    would be read by the wrong tool."""
    suffix = FORMATS[fmt]
    if not out.endswith(suffix):
        raise SlimError(f"{out}: the output name must end in {suffix} for --format {fmt}")
