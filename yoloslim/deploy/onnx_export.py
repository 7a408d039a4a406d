"""Our model as ONNX: the detections plus one raw head tensor per [yolo], checked in onnxruntime."""
import warnings

import numpy as np
import torch

from yoloslim.deploy.opencv_dnn import finite_max
from yoloslim.io import atomic_write


class Exportable(torch.nn.Module):
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
        torch.onnx.export(Exportable(model), x, f, dynamo=False, opset_version=opset,
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
        ours = Exportable(model.eval())(torch.from_numpy(x))
    return finite_max(np.abs(a.numpy() - b) / np.maximum(1.0, np.abs(b)) for a, b in zip(ours, theirs))
