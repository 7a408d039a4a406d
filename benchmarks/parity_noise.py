"""How far float32 implementations of one deep model drift apart: the numbers behind yoloslim/deploy/parity.py.

For a random-weight model (yoloslim.deploy.measure.randomize_weights) and one random input, each head's raw
map (what the head conv feeds [yolo]) is computed three ways: our PyTorch model in float32, the same
in float64 (the reference), and OpenCV DNN reading the written .cfg/.weights (Winograd off, as the
read-back gate runs it). Printed per (cfg, size, seed), each as max |difference| / head magnitude:

  ours32  ours float32 vs float64        (what read_back_tolerance measures)
  cv      OpenCV vs float64              (OpenCV's own float32 error)
  gate    OpenCV vs ours32, decoded      (what the read-back gate compares)
  gate/ours32, cv/ours32, the decode gain (yoloslim.deploy.parity.decode_gain) and the read-back tolerance
  (read_back_tolerance x decode gain, what yoloslim.deploy.opencv_dnn.opencv_read_back gates with)

    python benchmarks/parity_noise.py --cfg cfg/yolov4-csp.cfg --sizes 608 896 --seeds 7 8
"""
import argparse
import copy
import os
import tempfile
import time

import numpy as np
import torch


from yoloslim.darknet.model import Darknet  # noqa: E402
from yoloslim.deploy.opencv_dnn import max_difference_from_opencv, opencv_head_maps, random_input, read_net  # noqa: E402
from yoloslim.deploy.parity import decode_gain, float32_error, read_back_tolerance, scaled_difference  # noqa: E402
from yoloslim.deploy.measure import randomize_weights  # noqa: E402


def measure(cfg, size, seed, work):
    model = randomize_weights(Darknet(cfg, size), seed=seed).eval()
    weights = os.path.join(work, "m.weights")
    model.save_darknet_weights(weights)
    x = random_input(size)
    with torch.no_grad():
        raw64 = copy.deepcopy(model).double().forward_raw(torch.from_numpy(x).double())
    cv = opencv_head_maps(read_net(cfg, weights, exact=True), x, model.yolo_layers)
    cv_err = max(scaled_difference(a, b.numpy(), max(1.0, float(b.abs().max()))) for a, b in zip(cv, raw64))
    ours = float32_error(model, x)
    gate = max_difference_from_opencv(model, cfg, weights, size)
    gain = decode_gain(model, size)
    return ours, cv_err, gate, gain, read_back_tolerance(model, x) * gain


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfg", nargs="+", default=["cfg/yolov4-csp.cfg"])
    p.add_argument("--sizes", nargs="+", type=int, default=[608])
    p.add_argument("--seeds", nargs="+", type=int, default=[7])
    args = p.parse_args()
    torch.set_num_threads(1)
    print("| cfg | size | seed | ours32 | cv | gate | gate/ours32 | cv/ours32 | decode gain | tolerance | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for cfg in args.cfg:
            for size in args.sizes:
                for seed in args.seeds:
                    t0 = time.time()
                    ours, cv, gate, gain, tol = measure(cfg, size, seed, work)
                    print(f"| {os.path.basename(cfg)} | {size} | {seed} | {ours:.2e} | {cv:.2e} | {gate:.2e} | "
                          f"{gate / ours:.2f} | {cv / ours:.2f} | {gain:.2f} | {tol:.2e} | {time.time() - t0:.0f} |",
                          flush=True)


if __name__ == "__main__":
    main()
