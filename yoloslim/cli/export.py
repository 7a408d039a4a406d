"""What export.py does beyond plain ONNX: OpenVINO IR and INT8, with every file built in a hidden
folder beside --out and renamed into place only once it has passed its check."""
import os
import sys

import numpy as np

from yoloslim.cli import checks
from yoloslim.deploy.exported import (ExportedDetector, convert_to_ir, hidden_workdir, ir_bin, max_difference, publish)
from yoloslim.errors import SlimError
from yoloslim.deploy.int8 import CALIB_METHODS, check_drift, measure_drift, quantize
from yoloslim.io import refuse_overwrite
from yoloslim.deploy.latency import compare, describe, require

INT8_ONLY = ("calib", "data", "images", "max_drop", "calib_images", "calib_method")
EXPORT_RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino"}


def add_int8_arguments(p):
    p.add_argument("--int8", action="store_true", help="quantize the convolutions to int8 (needs --calib)")
    p.add_argument("--calib", type=checks.image_source, help="images (folder, file or glob) to calibrate the int8 ranges on")
    p.add_argument("--calib-images", type=checks.positive_int, default=100, help="calibrate on at most this many of them")
    p.add_argument("--calib-method", choices=CALIB_METHODS, default="percentile", help="how the ranges are chosen")
    p.add_argument("--data", type=checks.input_file, help=".data file: judge the int8 model by mAP@0.5 on its valid= list")
    p.add_argument("--images", type=checks.image_source,
                   help="without --data: judge by agreement with the float model on these images "
                        "(when left out: the --calib images)")
    p.add_argument("--max-drop", type=checks.fraction, default=0.02,
                   help="refuse (write nothing) when mAP@0.5 or agreement falls by more than this")
    p.add_argument("--threads", type=checks.positive_int, default=os.cpu_count(),
                   help="threads set in the runtime for the speed-up timing")
    p.add_argument("--latency-runs", type=checks.timed_runs, default=20,
                   help="interleaved timed runs of the float and int8 models (0 = skip)")


def validate_int8(args, parser):
    """Refuse a flag that would silently do nothing, and a missing runtime, before any work."""
    require(EXPORT_RUNTIME[args.format])
    if args.format == "openvino":
        require("onnxruntime")   # the check and the int8 path export through ONNX first
        refuse_overwrite(ir_bin(args.out), args.cfg, args.weights)
    if args.int8 and not args.calib:
        raise SlimError("--int8 needs --calib DIR: images like those the model will see, to set the int8 ranges")
    given = [k for k in INT8_ONLY if getattr(args, k) != parser.get_default(k)]
    if not args.int8 and given:
        raise SlimError(f"--{given[0].replace('_', '-')} only applies with --int8; add --int8 or leave it out")


def export_deployed(args, model, size):
    """Export (and quantize) in a hidden folder, check, then publish the output file(s)."""
    from yoloslim.deploy.onnx_export import export_onnx
    with hidden_workdir(args.out) as work:
        fp32 = os.path.join(work, "fp32.onnx")
        export_onnx(model, fp32, size, args.opset)
        final = quantized(args, model, size, fp32, work) if args.int8 else fp32
        if args.format == "openvino" and not final.endswith(".xml"):
            final = convert_to_ir(final, os.path.join(work, "model.xml"))
        files = [(ir_bin(final), ir_bin(args.out)), (final, args.out)] if args.format == "openvino" else [(final, args.out)]
        result = None if args.int8 else check_against_torch(args, model, files[-1][0], size)
        publish(files)
    total = sum(os.path.getsize(dst) for _, dst in files)
    print(f"wrote {' and '.join(dst for _, dst in files)} ({total / 1e6:.2f} MB)")
    return result


def check_against_torch(args, model, path, size):
    diff = max_difference(model, path, size)
    print(f"{EXPORT_RUNTIME[args.format]} vs PyTorch max relative diff {diff:.2e}")
    if not np.isfinite(diff):
        print("warning: the model's outputs hold NaN or Inf on a random input, so the comparison is meaningless "
              "and so are its detections; check the weights", file=sys.stderr)
    return diff


def quantized(args, model, size, fp32, work):
    """The int8 model (ONNX, or IR for --format openvino), once its drift is within --max-drop;
    prints drift and speed-up together."""
    int8 = quantize(fp32, os.path.join(work, "int8.onnx"), args.calib, size, args.calib_images, args.calib_method)
    judged = int8
    if args.format == "openvino":   # judge and time what will be published: OpenVINO's reading of it
        judged = convert_to_ir(int8, os.path.join(work, "int8.xml"))
    drift = measure_drift(model, ExportedDetector(judged, model.nc, args.threads), size,
                          args.data, None if args.data else (args.images or args.calib))
    print(f"int8 ({args.calib_method} ranges from up to {args.calib_images} images of {args.calib}): {drift.line()}")
    if args.latency_runs:
        runtime = EXPORT_RUNTIME[args.format]
        t = compare({"fp32": fp32, "int8": judged}, runtime, size, args.threads, args.latency_runs)
        print(f"int8 on {runtime}: x{t['fp32'].median / t['int8'].median:.2f} faster "
              f"({t['fp32'].median:.2f} -> {t['int8'].median:.2f} ms; p10 {t['fp32'].p10:.2f} -> {t['int8'].p10:.2f})")
        print(describe([runtime], size, args.threads, args.latency_runs, 5))
    check_drift(drift, args.max_drop, args.out)
    return judged
