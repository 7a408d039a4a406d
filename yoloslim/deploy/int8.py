"""INT8 after pruning: ONNX Runtime static quantization calibrated on the user's images, and the
judgement of how far the quantized model drifts from the float one.

Only convolutions are quantized (QDQ, int8 weights per output channel, uint8 activations), and the
convs that feed [yolo] layers stay float: their raw outputs become box sizes through exp() and
scores through sigmoid, where a quantization step is a visible error, while they cost a few
percent of the FLOPs. Measured on COCO yolov3-tiny at 416 px (7 Darknet sample photos,
agreement with the float model): every conv quantized, MinMax ranges 0.92; heads float, MinMax 0.92,
percentile ranges 0.98, entropy 0.92; quantizing LeakyReLU, pooling and concatenation as well 0.17.
"""
import contextlib
import io
import os
import warnings
from dataclasses import dataclass

from yoloslim.errors import SlimError
from yoloslim.deploy.latency import require

CALIB_METHODS = ("percentile", "minmax", "entropy")


@dataclass
class Drift:
    """How much the quantized model lost against the float one, by the one measure available."""
    measure: str          # "mAP@0.5" (labels) or "agreement mAP@0.5" (the float model's boxes as labels)
    fp32: float
    int8: float

    @property
    def drop(self):
        return self.fp32 - self.int8

    def line(self):
        return f"{self.measure}: fp32 {self.fp32:.4f}, int8 {self.int8:.4f} (drop {self.drop:+.4f})"


def calibration_batches(folder, img_size, limit):
    """Batch-1 arrays of up to ``limit`` images, letterboxed and scaled as our loader does for
    training and detection, so the calibrated ranges are those the model sees in use."""
    from yoloslim.data.datasets import LoadImages
    images = LoadImages(folder, img_size)
    for k, (_, img, _) in enumerate(images):
        if k == limit:
            break
        yield img.numpy()[None]


def head_convs(onnx_path):
    """Names of the Conv nodes that produce the raw head outputs (``head*``), found by walking
    back from each output through the nodes between it and its conv."""
    import onnx
    graph = onnx.load(onnx_path).graph
    producer = {o: n for n in graph.node for o in n.output}
    found = []
    for out in graph.output:
        if not out.name.startswith("head"):
            continue
        node = producer.get(out.name)
        while node is not None and node.op_type != "Conv":
            node = producer.get(node.input[0])
        if node is not None:
            found.append(node.name)
    return found


def quantize(fp32_onnx, int8_onnx, calib_dir, img_size, limit=100, method="percentile"):
    """Write ``int8_onnx``, a static-quantized copy of ``fp32_onnx`` calibrated on ``calib_dir``."""
    require("onnxruntime")
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = calibration_batches(calib_dir, img_size, limit)

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {"images": x}

    methods = {"percentile": CalibrationMethod.Percentile, "minmax": CalibrationMethod.MinMax,
               "entropy": CalibrationMethod.Entropy}
    # the calibrators print progress and numpy warns on constant tensors: neither is for users
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        # shapes inferred and the graph simplified first, as ONNX Runtime asks before quantizing
        prepared = os.path.join(os.path.dirname(os.path.abspath(int8_onnx)), "prepared.onnx")
        quant_pre_process(str(fp32_onnx), prepared)
        quantize_static(prepared, str(int8_onnx), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method], op_types_to_quantize=["Conv"],
                        nodes_to_exclude=head_convs(prepared))
    return int8_onnx


def measure_drift(model, candidate, img_size, data=None, images=None):
    """mAP@0.5 of both with labels (``data``), else the candidate's agreement with the float model
    on ``images``; a model that finds nothing there leaves nothing to compare, which is refused."""
    if data:
        from yoloslim.eval.evaluate import evaluate
        scores = [float(evaluate(m, data, img_size=img_size, verbose=False, progress=False)["mAP50"])
                  for m in (model, candidate)]
        return Drift("mAP@0.5", *scores)
    from yoloslim.eval.agreement import REFERENCE_CONF, agreement
    found = agreement(model, candidate, images, img_size)
    if found.score != found.score:
        raise SlimError(f"{images}: the float model finds no object at conf {REFERENCE_CONF} in these "
                        f"{found.images} images, so the int8 model's drift cannot be judged; pass --data "
                        f"(labelled images) or --images with objects the model detects")
    return Drift("agreement mAP@0.5", 1.0, found.score)


def check_drift(drift, max_drop, path):
    if not drift.drop <= max_drop:
        raise SlimError(f"{path}: the int8 model drifts too far from the float one ({drift.line()}, more than "
                        f"--max-drop {max_drop:g}); nothing was written; calibrate on more images like those "
                        f"it will see (--calib, --calib-images), try --calib-method, or raise --max-drop")
