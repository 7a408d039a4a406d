"""Write the ultralytics yolov5 v6.0 topology (n/s/m/l/x) as a Darknet .cfg.

    python scripts/yolov5_cfg.py --model s --out cfg/yolov5s.cfg

The layer table below is the one in yolov5's ``models/yolov5*.yaml`` (v6.0: a 6x6
stride-2 stem instead of Focus, C3 blocks, SPPF). Each yolov5 module becomes Darknet
sections:

- Conv      -> [convolutional] with batch_normalize=1, activation=swish (SiLU)
- C3        -> cv1 1x1; n x (1x1, 3x3 [, shortcut from=-3]); [route] back to the C3
               input; cv2 1x1; [route] bottleneck output, cv2; cv3 1x1
- SPPF      -> 1x1; three chained 5x5 stride-1 [maxpool]; [route] of the four; 1x1
- Upsample  -> [upsample] stride=2 (nearest)
- Concat    -> [route]
- Detect    -> per level a 1x1 conv with bias and activation=logistic, then [yolo] with
               scale_x_y=2.0 new_coords=1: xy = 2*sig - 0.5 + cell, wh = (2*sig)^2 * anchor,
               which is yolov5's decode

Widths are ``ceil(c * width_multiple / 8) * 8`` and repeats ``max(round(n * depth), 1)``,
as yolov5's model parser computes them.
"""
import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.errors import SlimError, cli_main  # noqa: E402
from utils.io import atomic_write  # noqa: E402

# (from, repeats, module, args) of yolov5 v6.0 models/yolov5{n,s,m,l,x}.yaml, backbone then head
YOLOV5_V6 = [
    (-1, 1, "Conv", (64, 6, 2, 2)),     # 0  P1/2
    (-1, 1, "Conv", (128, 3, 2)),       # 1  P2/4
    (-1, 3, "C3", (128,)),              # 2
    (-1, 1, "Conv", (256, 3, 2)),       # 3  P3/8
    (-1, 6, "C3", (256,)),              # 4
    (-1, 1, "Conv", (512, 3, 2)),       # 5  P4/16
    (-1, 9, "C3", (512,)),              # 6
    (-1, 1, "Conv", (1024, 3, 2)),      # 7  P5/32
    (-1, 3, "C3", (1024,)),             # 8
    (-1, 1, "SPPF", (1024, 5)),         # 9
    (-1, 1, "Conv", (512, 1, 1)),       # 10
    (-1, 1, "Upsample", ()),            # 11
    ((-1, 6), 1, "Concat", ()),         # 12 cat backbone P4
    (-1, 3, "C3", (512, False)),        # 13
    (-1, 1, "Conv", (256, 1, 1)),       # 14
    (-1, 1, "Upsample", ()),            # 15
    ((-1, 4), 1, "Concat", ()),         # 16 cat backbone P3
    (-1, 3, "C3", (256, False)),        # 17 (P3/8-small)
    (-1, 1, "Conv", (256, 3, 2)),       # 18
    ((-1, 14), 1, "Concat", ()),        # 19 cat head P4
    (-1, 3, "C3", (512, False)),        # 20 (P4/16-medium)
    (-1, 1, "Conv", (512, 3, 2)),       # 21
    ((-1, 10), 1, "Concat", ()),        # 22 cat head P5
    (-1, 3, "C3", (1024, False)),       # 23 (P5/32-large)
    ((17, 20, 23), 1, "Detect", ()),    # 24 Detect(P3, P4, P5)
]
ANCHORS = [(10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326)]
MODELS = {"n": (0.33, 0.25), "s": (0.33, 0.50), "m": (0.67, 0.75), "l": (1.0, 1.0), "x": (1.33, 1.25)}

HEADER = """\
# yolov5{name} (ultralytics yolov5 v6.0, models/yolov5{name}.yaml: depth_multiple {depth}, width_multiple {width})
# written as a Darknet cfg by this project (scripts/yolov5_cfg.py); not an ultralytics file.
# Conv = conv + BN + SiLU (activation=swish); C3 = cv1, bottlenecks (shortcut in the backbone only),
# route to the C3 input, cv2, route [bottlenecks, cv2], cv3; SPPF = 1x1, three chained 5x5 stride-1
# maxpools, route of the four, 1x1. Detect = 1x1 conv + logistic, [yolo] scale_x_y=2.0 new_coords=1,
# which decodes as yolov5 does: xy = (2*sig - 0.5 + cell) * stride, wh = (2*sig)^2 * anchor.
# Differences from yolov5: BN eps is the reader's (Darknet 1e-5, OpenCV 1e-6) instead of yolov5's 1e-3,
# which matters only when yolov5-trained weights are converted; the Detect convs come right after the
# C3 they read, with a [route] back, so layer indices differ from the yaml's (comments give the yaml's).
"""


def make_divisible(x, divisor=8):
    return math.ceil(x / divisor) * divisor


class CfgWriter:
    """Appends Darknet sections and tracks the index of the last layer written."""

    def __init__(self):
        self.lines, self.n = [], 0

    def section(self, kind, comment=None, **keys):
        if comment:
            self.lines.append(f"# {comment}")
        self.lines.append(f"[{kind}]")
        self.lines += [f"{k}={v}" for k, v in keys.items()]
        self.lines.append("")
        self.n += 1
        return self.n - 1

    def conv(self, filters, size=1, stride=1, padding=None, comment=None):
        pad = {"pad": 1} if padding is None else {"padding": padding}
        return self.section("convolutional", comment, batch_normalize=1, filters=filters, size=size,
                            stride=stride, **pad, activation="swish")

    def route(self, *layers, comment=None):
        """A [route]; layers given as absolute indices, written relative (negative) when close by."""
        here = self.n
        text = ",".join(str(j - here) if here - j <= 8 else str(j) for j in layers)
        return self.section("route", comment, layers=text)

    def read(self, src):
        """Make ``src`` the current input of the next layer (a [route] when it is not the last one)."""
        if src != self.n - 1:
            self.route(src)


def write_c3(w, src, c2, n, shortcut, comment):
    """cv3(cat(m(cv1(x)), cv2(x))) with m = n bottlenecks of 1x1 -> 3x3 (+ input when shortcut)."""
    c_ = int(c2 * 0.5)
    w.read(src)
    w.conv(c_, comment=comment + " cv1")
    for _ in range(n):
        w.conv(c_, 1)
        last = w.conv(c_, 3)
        if shortcut:
            last = w.section("shortcut", **{"from": -3}, activation="linear")
    w.route(src, comment="C3 cv2 reads the C3 input")
    cv2 = w.conv(c_)
    w.route(last, cv2)
    return w.conv(c2, comment="C3 cv3")


def write_sppf(w, src, c1, c2, k, comment):
    c_ = c1 // 2
    w.read(src)
    first = w.conv(c_, comment=comment + " cv1")
    pools = [w.section("maxpool", size=k, stride=1) for _ in range(3)]
    w.route(first, *pools)
    return w.conv(c2, comment="SPPF cv2")


def write_head(w, src, mask, nc):
    w.read(src)
    w.section("convolutional", f"Detect level {mask[0] // 3}: 1x1 conv with bias, sigmoid on every output",
              size=1, stride=1, pad=1, filters=len(mask) * (nc + 5), activation="logistic")
    anchors = ", ".join(f"{a},{b}" for a, b in ANCHORS)
    w.section("yolo", mask=",".join(map(str, mask)), anchors=anchors, classes=nc, num=len(ANCHORS),
              scale_x_y="2.0", new_coords=1)


def yolov5_cfg_text(name, nc=80, size=640):
    """The Darknet cfg text of yolov5{name} (one of n, s, m, l, x)."""
    depth, width = MODELS[name]
    w = CfgWriter()
    out, channels = [], [3]    # darknet index and channels of each yolov5 layer's output
    detect_levels = {j: k for k, j in enumerate(YOLOV5_V6[-1][0])}
    for i, (frm, n, module, args) in enumerate(YOLOV5_V6[:-1]):
        n = max(round(n * depth), 1) if n > 1 else n
        src = out[-1] if frm == -1 and out else None
        c1 = channels[-1]
        tag = f"{i}: {module}"
        if module == "Conv":
            c2, k, s = make_divisible(args[0] * width), args[1], args[2]
            if src is not None:
                w.read(src)
            idx = w.conv(c2, k, s, args[3] if len(args) > 3 else None, comment=tag)
        elif module == "C3":
            c2 = make_divisible(args[0] * width)
            idx = write_c3(w, src, c2, n, args[1] if len(args) > 1 else True, f"{tag} x{n}")
        elif module == "SPPF":
            c2 = make_divisible(args[0] * width)
            idx = write_sppf(w, src, c1, c2, args[1], tag)
        elif module == "Upsample":
            w.read(src)
            c2, idx = c1, w.section("upsample", tag, stride=2)
        elif module == "Concat":
            srcs = [out[-1] if j == -1 else out[j] for j in frm]
            c2 = sum(channels[1:][j] if j != -1 else c1 for j in frm)
            idx = w.route(*srcs, comment=f"{tag} {list(frm)}")
        out.append(idx)
        channels.append(c2)
        if i in detect_levels:
            k = detect_levels[i]
            write_head(w, idx, [3 * k, 3 * k + 1, 3 * k + 2], nc)
    net = ["[net]", "batch=64", "subdivisions=8", f"width={size}", f"height={size}", "channels=3",
           "momentum=0.937", "decay=0.0005", "learning_rate=0.01", "burn_in=1000", "max_batches=500500",
           "policy=steps", "steps=400000,450000", "scales=.1,.1", ""]
    return HEADER.format(name=name, depth=depth, width=f"{width:.2f}") + "\n" + "\n".join(net + w.lines)


def main(argv=None):
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="s")
    p.add_argument("--classes", type=int, default=80)
    p.add_argument("--out", help="output .cfg (default: cfg/yolov5<model>.cfg)")
    args = p.parse_args(argv)
    path = args.out or os.path.join("cfg", f"yolov5{args.model}.cfg")
    if not path.endswith(".cfg") or os.path.isdir(path):
        raise SlimError(f"--out {path}: name a .cfg file; nothing else is ever written over")
    with atomic_write(path, "w") as f:
        f.write(yolov5_cfg_text(args.model, args.classes))
    print(f"wrote {path}")


if __name__ == "__main__":
    cli_main(main)
