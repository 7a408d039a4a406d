"""How exact is a pruned model at the image border, with Darknet's zero padding?

Compensation folds a pruned channel's constant output act(beta) into the layers that read
it. Inside the image that is exact: the pruned model equals the original with the pruned
gammas set to zero. Where a padded convolution's window reaches past the border, the
original sees zeros in place of act(beta) at the padded taps, but the folded constant
counts them anyway, and the error spreads one cell per padded layer inward.

This script measures it as it is: the pruned model against the zeroed original, both with
zero padding (as Darknet pads) and in float64 (so float rounding plays no part), per output
cell of every [yolo] head, split by the cell's distance to the nearest border. It reports the
margin (how many cells in from the border every cell agrees to 1e-5), the share of cells
inside that band, and the largest differences inside and outside it, both raw (Darknet's
[yolo] layout: logistic x, y, objectness, classes; raw w, h) and decoded (box size in pixels,
objectness*class score).

    python benchmarks/border_exactness.py                      # real tiny at 416, yolov3 at 416
    python benchmarks/border_exactness.py --yolov3-size 256    # quicker

Writes benchmarks/results/border_exactness.{json,md}.
"""
import argparse
import copy
import glob
import json
import os
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from yoloslim.darknet.model import Darknet  # noqa: E402
from yoloslim.darknet.load import load_model  # noqa: E402
from yoloslim.deploy.darknet_ref import darknet_layout  # noqa: E402
from yoloslim.data.datasets import letterbox, read_image, to_tensor  # noqa: E402
from yoloslim.io import atomic_write  # noqa: E402
from yoloslim.pipeline.stages import machine_line, markdown_table  # noqa: E402
from yoloslim.prune.engine import POLICIES, prune, zeroed_reference  # noqa: E402
from yoloslim.deploy.measure import randomize_weights  # noqa: E402

EXACT = 1e-5
PHOTOS = "/usr/share/darknet/data/*.jpg"


def heads_fp64(model, x):
    """Raw maps (Darknet layout) and decoded rows (na, ny, nx, no) of every head, in float64."""
    m = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        raw = m.forward_raw(torch.as_tensor(x, dtype=torch.float64))
    decoded = []
    for i, r in zip(m.yolo_layers, raw):
        head = m.module_list[i]
        p = head.reshape(r)
        decoded.append(head.decode(p, x.shape[-2:]).view(p.shape)[0].numpy())
    return darknet_layout(m, raw), decoded


def distance_to_border(ny, nx):
    yy, xx = np.mgrid[0:ny, 0:nx]
    return np.minimum(np.minimum(yy, ny - 1 - yy), np.minimum(xx, nx - 1 - xx))


def compare(pruned, reference, inputs):
    """Per head: cell-wise max differences over every input, and the summary figures."""
    rows = []
    per_head = None
    for x in inputs:
        (raw_p, dec_p), (raw_r, dec_r) = heads_fp64(pruned, x[None]), heads_fp64(reference, x[None])
        cells = []
        for a, b, da, db in zip(raw_p, raw_r, dec_p, dec_r):
            raw_cell = np.abs(a - b).max(0)                                           # (ny, nx)
            box_px = np.abs(da[..., 2:4] - db[..., 2:4]).max(axis=(0, 3))               # w, h in pixels
            score = np.abs(da[..., 4:5] * da[..., 5:] - db[..., 4:5] * db[..., 5:]).max(axis=(0, 3))
            cells.append(np.stack([raw_cell, box_px, score]))
        per_head = cells if per_head is None else [np.maximum(p, c) for p, c in zip(per_head, cells)]
    for k, c in enumerate(per_head):
        _, ny, nx = c.shape
        dist = distance_to_border(ny, nx)
        bad = dist[c[0] > EXACT]
        margin = int(bad.max()) + 1 if bad.size else 0      # cells with dist >= margin are exact
        band = dist < margin
        inner = ~band
        rows.append({
            "head": k, "grid": f"{ny}x{nx}", "margin_cells": margin,
            "band_share": float(band.mean()),
            "max_raw_interior": float(c[0][inner].max()) if inner.any() else None,
            "max_raw_band": float(c[0][band].max()) if band.any() else 0.0,
            "max_raw_outer_ring": float(c[0][dist == 0].max()),
            "max_box_px_band": float(c[1][band].max()) if band.any() else 0.0,
            "max_score_band": float(c[2][band].max()) if band.any() else 0.0,
            "max_raw_by_distance": [float(c[0][dist == d].max()) for d in range(int(dist.max()) + 1)],
        })
    return rows


def photo_inputs(size):
    files = sorted(glob.glob(PHOTOS))
    if not files:
        raise SystemExit(f"error: no photos at {PHOTOS}; install Darknet (apt-get install darknet) for its test photos")
    return [to_tensor(letterbox(read_image(f), size)[0]).numpy() for f in files], len(files)


def random_inputs(size, n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((3, size, size), dtype=np.float32) for _ in range(n)]


def case(name, model, policy, percent, inputs, what_inputs):
    t0 = time.perf_counter()
    compact, plans = prune(model, POLICIES[policy], percent)
    reference = zeroed_reference(model, plans[-1])
    rows = compare(compact, reference, inputs)
    removed = plans[-1].pruned_channels() / sum(m.numel() for m in plans[-1].masks.values())
    print(f"{name}: {policy} at {percent:g} ({removed:.1%} of prunable channels), {what_inputs}: "
          f"{time.perf_counter() - t0:.0f} s")
    for r in rows:
        print(f"  head {r['head']} {r['grid']}: exact (<= {EXACT:g}) from {r['margin_cells']} cells in; "
              f"band {r['band_share']:.0%} of cells; max raw diff band {r['max_raw_band']:.3g}, "
              f"box {r['max_box_px_band']:.3g} px, score {r['max_score_band']:.3g}")
    return {"model": name, "policy": policy, "percent": percent, "removed_share": removed,
            "inputs": what_inputs, "heads": rows}


def merged_with_earlier(path, results):
    """Rows of an earlier run for cases this run did not measure are kept (--sections runs one part)."""
    if not os.path.isfile(path):
        return results
    with open(path) as f:
        earlier = json.load(f)["results"]
    key = lambda r: (r["model"], r["policy"])  # noqa: E731
    fresh = {key(r) for r in results}
    return [r for r in earlier if key(r) not in fresh] + results


def report(results, args):
    header = ["model", "pruned", "inputs", "head", "exact from (cells in)", "cells in band",
              "max raw diff, band", "max raw diff, interior", "max box size diff, band (px)", "max score diff, band"]
    rows = []
    for res in results:
        for h in res["heads"]:
            interior = "no interior" if h["max_raw_interior"] is None else f"{h['max_raw_interior']:.1e}"
            rows.append([res["model"], f"{res['policy']} {res['percent']:g} ({res['removed_share']:.0%})",
                         res["inputs"], h["grid"], h["margin_cells"], f"{h['band_share']:.0%}",
                         f"{h['max_raw_band']:.3g}", interior, f"{h['max_box_px_band']:.3g}",
                         f"{h['max_score_band']:.3g}"])
    return "\n".join([
        "# Border exactness under zero padding",
        "",
        "Written by `python benchmarks/border_exactness.py"
        + (f" --yolov3-size {args.yolov3_size}" if args.yolov3_size != 416 else "") + "`.",
        f"Measured on {machine_line()}, float64, batch 1.",
        "",
        "The pruned model against the original with the pruned gammas set to zero, both with zero padding",
        f"(Darknet's). \"Exact from N cells in\": every cell at distance >= N from the nearest border agrees to "
        f"{EXACT:g}",
        "(raw [yolo] maps: logistic x, y, objectness, classes; raw w, h). The band is the cells closer than N.",
        "Box size in input pixels (anchor * exp(w)), score = objectness * class probability.",
        "",
        markdown_table(header, rows),
        "",
    ])


def main(argv=None):
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    p.add_argument("--tiny-cfg", default=os.path.join(ROOT, "weights", "coco-tiny", "yolov3-tiny.cfg"))
    p.add_argument("--tiny-weights", default=os.path.join(ROOT, "weights", "coco-tiny", "yolov3-tiny.weights"))
    p.add_argument("--tiny-percent", type=float, default=0.3)
    p.add_argument("--yolov3-size", type=int, default=416)
    p.add_argument("--yolov3-percent", type=float, default=0.5)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "border_exactness"))
    p.add_argument("--sections", default="tiny,yolov3", help="comma list of tiny, yolov3")
    args = p.parse_args(argv)
    sections = set(args.sections.split(","))

    results = []
    if "tiny" in sections:
        tiny = load_model(args.tiny_cfg, args.tiny_weights).eval()
        photos, n = photo_inputs(416)
        results.append(case("COCO yolov3-tiny (real weights)", tiny, "tiny", args.tiny_percent, photos,
                            f"{n} Debian Darknet photos, 416"))
    if "yolov3" in sections:
        big = randomize_weights(Darknet(os.path.join(ROOT, "cfg", "yolov3.cfg")), seed=0).eval()
        for policy in ("normal", "shortcut"):
            results.append(case("yolov3 (random weights)", big, policy, args.yolov3_percent,
                                random_inputs(args.yolov3_size, 1), f"1 random image, {args.yolov3_size}"))
    results = merged_with_earlier(args.out + ".json", results)
    with atomic_write(args.out + ".json", "w") as f:
        json.dump({"machine": machine_line(), "exact": EXACT, "results": results}, f, indent=2)
    with atomic_write(args.out + ".md", "w") as f:
        f.write(report(results, args))
    print(f"wrote {args.out}.json and {args.out}.md")


if __name__ == "__main__":
    main()
