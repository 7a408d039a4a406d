"""OpenCV DNN speed-up of one Darknet pair over another, robust to a machine shared with other jobs.

    python benchmarks/opencv_speedup.py --a runs/slim/train/model.cfg runs/slim/train/last.weights \\
        --b runs/slim/final/tiny-finetuned.cfg runs/slim/final/tiny-finetuned.weights --img-size 160

The two nets run alternately, one forward each per round, so a change in the machine's load
hits both alike; prints the median (and 25th percentile) batch-1 latency of each and their ratio.
"""
import argparse
import os
import statistics

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from yoloslim.deploy.opencv_dnn import read_net  # noqa: E402
from yoloslim.deploy.measure import interleaved_ms, opencv_forward  # noqa: E402


def main():
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", nargs=2, required=True, metavar=("CFG", "WEIGHTS"), help="the reference pair")
    p.add_argument("--b", nargs=2, required=True, metavar=("CFG", "WEIGHTS"), help="the pair to compare")
    p.add_argument("--img-size", type=int, default=416)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="OpenCV threads")
    args = p.parse_args()
    import cv2
    cv2.setNumThreads(args.threads)
    nets = [read_net(*args.a), read_net(*args.b)]
    a, b = interleaved_ms([opencv_forward(net, args.img_size) for net in nets], args.warmup, args.runs)
    for name, t in (("a", a), ("b", b)):
        print(f"{name}: median {statistics.median(t):.2f} ms, p25 {np.percentile(t, 25):.2f} ms")
    print(f"speed-up b over a: median x{statistics.median(a) / statistics.median(b):.2f}, "
          f"p25 x{np.percentile(a, 25) / np.percentile(b, 25):.2f} ({args.runs} interleaved runs, "
          f"{args.threads} thread(s), batch 1, {args.img_size} px)")


if __name__ == "__main__":
    main()
