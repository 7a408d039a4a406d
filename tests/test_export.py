"""ONNX export of an unpruned and a pruned model: onnxruntime and OpenCV agree with PyTorch."""
import numpy as np
import torch

from conftest import cfg_path
from yoloslim.deploy.onnx_export import export_onnx, onnx_max_difference
from yoloslim.darknet.model import Darknet
from yoloslim.prune.engine import POLICIES, prune
from yoloslim.deploy.measure import randomize_weights


def test_onnx_matches_pytorch_before_and_after_pruning(tmp_path):
    import cv2
    model = randomize_weights(Darknet(cfg_path("yolov3-narrow")), seed=2).eval()
    pruned, _ = prune(model, POLICIES["shortcut"], percent=0.5)
    for name, m in (("full", model), ("pruned", pruned)):
        path = tmp_path / f"{name}.onnx"
        export_onnx(m, path, 160)
        assert onnx_max_difference(m, path, 160) < 1e-4
        net = cv2.dnn.readNetFromONNX(str(path))
        x = np.random.default_rng(1).random((1, 3, 160, 160), dtype=np.float32)
        net.setInput(x)
        theirs = net.forward("detections")
        with torch.no_grad():
            ours = m(torch.from_numpy(x))[0].numpy()
        scale = np.maximum(1.0, np.abs(ours))  # w, h are exp() outputs: compare relative to size
        assert float((np.abs(ours - theirs) / scale).max()) < 1e-3
