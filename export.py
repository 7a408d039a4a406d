"""Export a model (pruned or not) to ONNX or OpenVINO IR, and check the runtime agrees with PyTorch.

Outputs: ``detections`` (1, N, 5+nc: xywh in input pixels, objectness, class scores, as
``Darknet.forward`` in eval mode) and one raw head tensor per [yolo] layer.

--int8 --calib DIR quantizes the convolutions (ONNX Runtime static quantization, calibrated on
DIR's images letterboxed as our loader does), then measures what that cost: mAP@0.5 with --data,
else agreement with the float model's detections on --images (default: the calibration images),
beside the int8 speed-up (the two models interleaved). Past --max-drop nothing is written.
"""
if __name__ == "__main__":   # first, before torch loads: a Ctrl-C while importing is one line, exit 130
    from yoloslim.interrupt import exit_quietly_on_ctrl_c
    exit_quietly_on_ctrl_c()
import os
import sys

import numpy as np

from yoloslim.darknet.load import load_model
from yoloslim.errors import cli_main
from yoloslim.cli import checks
from yoloslim.deploy.exported import FORMATS, check_format
from yoloslim.deploy.onnx_export import export_onnx, onnx_max_difference
from yoloslim.cli.export import add_int8_arguments, export_deployed, validate_int8
from yoloslim.io import refuse_overwrite


def main(argv=None):
    p = checks.parser(__doc__, prog="export.py")
    p.add_argument("--cfg", required=True, type=checks.input_file, help="Darknet .cfg")
    p.add_argument("--weights", required=True, type=checks.input_file, help="Darknet weights or our checkpoint")
    p.add_argument("--out", required=True, type=checks.output_file,
                   help="output .onnx path (.xml for --format openvino; its .bin is written beside it)")
    p.add_argument("--format", choices=sorted(FORMATS), default=None,
                   help="onnx or openvino (IR); default: from the --out suffix")
    p.add_argument("--img-size", type=checks.img_size, default=None,
                   help="input size, rounded up to a multiple of 32 (default: the cfg's)")
    p.add_argument("--opset", type=checks.number(int, lo=9, hi=20), default=13, help="ONNX opset version")
    add_int8_arguments(p)
    args = p.parse_args(argv)
    args.format = args.format or ("openvino" if args.out.endswith(".xml") else "onnx")
    check_format(args.out, args.format)
    validate_int8(args, p)
    refuse_overwrite(args.out, args.cfg, args.weights)
    defs = checks.check_cfg(args.cfg)
    if args.data:
        checks.check_classes(checks.cfg_classes(defs), checks.check_data(args.data), args.data)
    model = load_model(args.cfg, args.weights, args.img_size)
    size = args.img_size or model.img_size[0]
    if args.format != "onnx" or args.int8:
        return export_deployed(args, model, size)
    export_onnx(model, args.out, size, args.opset)
    diff = onnx_max_difference(model, args.out, size)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB); onnxruntime vs PyTorch max relative diff {diff:.2e}")
    if not np.isfinite(diff):
        print("warning: the model's outputs hold NaN or Inf on a random input, so the comparison is meaningless "
              "and so are its detections; check the weights", file=sys.stderr)
    return diff


if __name__ == "__main__":
    cli_main(main)
