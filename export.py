"""Export a model (pruned or not) to ONNX, and check onnxruntime agrees with PyTorch.

Outputs: ``detections`` (1, N, 5+nc: xywh in input pixels, objectness, class scores, as
``Darknet.forward`` in eval mode) and one raw head tensor per [yolo] layer.
"""
if __name__ == "__main__":   # first, before torch loads: a Ctrl-C while importing is one line, exit 130
    from utils.interrupt import exit_quietly_on_ctrl_c
    exit_quietly_on_ctrl_c()
import os
import sys
import warnings

import numpy as np
import torch

from models import load_model
from utils.errors import SlimError, cli_main
from utils import cli_checks as checks
from utils.io import atomic_write, refuse_overwrite
from utils.opencv_dnn import finite_max


class _Exportable(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        io, p = self.model(x)
        return (io, *self.model.forward_raw(x))


def export_onnx(model, path, img_size, opset=13):
    """Write ``model`` as ONNX to ``path`` (atomically) and return the output names."""
    model = model.eval()
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    names = ["detections"] + [f"head{k}" for k in range(len(model.yolo_layers))]
    with warnings.catch_warnings(), atomic_write(path, "wb") as f:
        warnings.simplefilter("ignore")  # the tracer's constant-folding notes are not for users
        x = torch.zeros(1, model.in_channels, h, w)
        torch.onnx.export(_Exportable(model), x, f, dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=names)
    return names


def onnx_max_difference(model, path, img_size, seed=0):
    """Largest difference between onnxruntime and PyTorch on a random input, relative to
    max(1, |value|): boxes are in pixels, so absolute float error grows with the input size."""
    import onnxruntime as ort
    x = np.random.default_rng(seed).random((1, model.in_channels, img_size, img_size), dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"images": x})
    with torch.no_grad():
        ours = _Exportable(model.eval())(torch.from_numpy(x))
    return finite_max(np.abs(a.numpy() - b) / np.maximum(1.0, np.abs(b)) for a, b in zip(ours, theirs))


def main(argv=None):
    p = checks.parser(__doc__, prog="export.py")
    p.add_argument("--cfg", required=True, type=checks.input_file, help="Darknet .cfg")
    p.add_argument("--weights", required=True, type=checks.input_file, help="Darknet weights or our checkpoint")
    p.add_argument("--out", required=True, type=checks.output_file, help="output .onnx path")
    p.add_argument("--img-size", type=checks.img_size, default=None,
                   help="input size, rounded up to a multiple of 32 (default: the cfg's)")
    p.add_argument("--opset", type=checks.number(int, lo=9, hi=20), default=13, help="ONNX opset version")
    args = p.parse_args(argv)
    if not args.out.endswith(".onnx"):
        raise SlimError(f"{args.out}: the output name must end in .onnx")
    refuse_overwrite(args.out, args.cfg, args.weights)
    checks.check_cfg(args.cfg)
    model = load_model(args.cfg, args.weights, args.img_size)
    size = args.img_size or model.img_size[0]
    export_onnx(model, args.out, size, args.opset)
    diff = onnx_max_difference(model, args.out, size)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB); onnxruntime vs PyTorch max relative diff {diff:.2e}")
    if not np.isfinite(diff):
        print("warning: the model's outputs hold NaN or Inf on a random input, so the comparison is meaningless "
              "and so are its detections; check the weights", file=sys.stderr)
    return diff


if __name__ == "__main__":
    cli_main(main)
