"""How far each reader's output is from the trained model, before and after writing for it.

Before: the file written as every version up to this one wrote it, the model's statistics as
they are (what ``--reader opencv`` still writes). After: the file written for the reader that
runs it (``--reader alexeyab`` / ``pjreddie``). Each reader is measured as directly as this
machine allows: OpenCV DNN itself; pjreddie Darknet itself (Debian's libdarknet, when installed)
and its BN arithmetic in float64 (yoloslim.darknet.bn_readers.reader_model); AlexeyAB's arithmetic in float64
only (its library is not available here). Numbers are the largest difference of the raw head
maps divided by the head's magnitude (yoloslim/deploy/parity.py), on one random input.

The model is yolov3 with random weights (yoloslim.deploy.measure.randomize_weights, BN statistics
calibrated), once as it is (variances about 1) and once with realistic small variances
(yoloslim.darknet.bn_readers.with_small_variances: each BN layer's input scaled so that its variances span
1e-3..1e1 times their size, as in trained Darknet files).

    python benchmarks/bn_readers.py                 # yolov3 at 256 px
Writes benchmarks/results/bn_readers.{json,md}.
"""
import argparse
import json
import os
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from yoloslim.darknet.model import Darknet  # noqa: E402
from yoloslim.darknet.bn_readers import READERS  # noqa: E402
from yoloslim.deploy.reader_checks import reader_difference, with_small_variances  # noqa: E402
from yoloslim.deploy.darknet_ref import darknet_difference, darknet_missing, run_darknet  # noqa: E402
from yoloslim.io import atomic_write  # noqa: E402
from yoloslim.deploy.opencv_dnn import max_raw_difference, random_input  # noqa: E402
from yoloslim.darknet.cfg import parse_model_cfg, write_model_cfg  # noqa: E402
from yoloslim.pipeline.stages import machine_line, markdown_table  # noqa: E402
from yoloslim.deploy.measure import randomize_weights  # noqa: E402


def sized_cfg(name, size, folder):
    defs = parse_model_cfg(os.path.join(ROOT, "cfg", f"{name}.cfg"))
    defs[0]["width"] = defs[0]["height"] = size
    path = os.path.join(folder, f"{name}-{size}.cfg")
    write_model_cfg(defs, path)
    return path


def measure_reader(model, cfg, weights, reader, size):
    """{how: difference} for one file in one reader."""
    x = random_input(size)
    found = {"float64 arithmetic": reader_difference(model, cfg, weights, reader, x)}
    if reader == "opencv":
        found["OpenCV DNN"] = max_raw_difference(model, cfg, weights, size)
    if reader == "pjreddie" and not darknet_missing():
        found["libdarknet"] = darknet_difference(model, run_darknet(cfg, weights, x[0]), x[0])
    return found


def measure_model(label, model, cfg, size, folder):
    rows = []
    before = os.path.join(folder, "before.weights")
    model.save_darknet_weights(before, reader="opencv")      # the statistics as they are
    for reader in READERS:
        after = os.path.join(folder, f"{reader}.weights")
        model.save_darknet_weights(after, reader=reader)
        old, new = measure_reader(model, cfg, before, reader, size), measure_reader(model, cfg, after, reader, size)
        for how in old:
            rows.append({"model": label, "reader": reader, "measured by": how, "before": old[how], "after": new[how]})
            print(f"{label:28s} {reader:9s} {how:20s} before {old[how]:.2e} after {new[how]:.2e}", flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cfg", default="yolov3")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "bn_readers"))
    args = p.parse_args()
    t0 = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        cfg = sized_cfg(args.cfg, args.size, folder)
        model = randomize_weights(Darknet(cfg), seed=args.seed).eval()
        rows += measure_model(f"{args.cfg}, variances ~1", model, cfg, args.size, folder)
        with_small_variances(model, seed=args.seed)
        rows += measure_model(f"{args.cfg}, small variances", model, cfg, args.size, folder)
    note = (f"`python benchmarks/bn_readers.py --cfg {args.cfg} --size {args.size} --seed {args.seed}`, "
            f"{time.time() - t0:.0f} s on {machine_line()}. Largest raw-map difference from the trained "
            f"model / head magnitude; before = statistics written as they are, after = written for the reader.")
    table = markdown_table(["model", "reader", "measured by", "before", "after"],
                           [[r["model"], r["reader"], r["measured by"], f"{r['before']:.2e}", f"{r['after']:.2e}"]
                            for r in rows])
    with atomic_write(args.out + ".json", "w") as f:
        json.dump({"rows": rows, "note": note}, f, indent=2)
    with atomic_write(args.out + ".md", "w") as f:
        f.write(f"# BN arithmetic per reader, before and after writing for it\n\n{note}\n\n{table}\n")
    print(note)


if __name__ == "__main__":
    main()
