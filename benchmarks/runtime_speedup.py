"""Speed-up of a pruned Darknet pair over its original on every installed deployment runtime.

    python benchmarks/runtime_speedup.py --original yolov3-tiny.cfg yolov3-tiny.weights \\
        --pruned runs/prune/yolov3-tiny-tiny-0.3/yolov3-tiny-tiny.cfg runs/prune/yolov3-tiny-tiny-0.3/yolov3-tiny-tiny.weights \\
        --img-size 416 --threads 1,2 --calib /usr/share/darknet/data

Each runtime times the models interleaved run by run (yoloslim/deploy/latency.py), at each thread count.
With --calib, both models are also quantized to int8 (export.py's recipe) and timed beside the
float ones in ONNX Runtime and OpenVINO. Writes a markdown table (median ms, p10-p90, speed-up
over the float original, and the speed-up as a share of the FLOP cut).
"""
import os
import platform
import shlex
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from yoloslim.darknet.load import load_model  # noqa: E402
from yoloslim.cli import checks  # noqa: E402
from yoloslim.errors import cli_main  # noqa: E402
from yoloslim.io import atomic_write  # noqa: E402
from yoloslim.deploy.latency import RUNTIMES, Deployable, compare, installed  # noqa: E402
from yoloslim.pipeline.stages import markdown_table  # noqa: E402
from yoloslim.deploy.measure import count_flops  # noqa: E402

INT8_RUNTIMES = ("onnxruntime", "openvino")   # the ones that run ONNX Runtime's QDQ int8 model


def thread_counts(text):
    return [checks.positive_int(t) for t in text.split(",")]


def parse_args(argv=None):
    p = checks.parser(__doc__.split("\n\n")[0], prog="runtime_speedup.py")
    p.add_argument("--original", nargs=2, required=True, metavar=("CFG", "WEIGHTS"), type=checks.input_file)
    p.add_argument("--pruned", nargs=2, required=True, metavar=("CFG", "WEIGHTS"), type=checks.input_file,
                   action="append", help="a pruned pair; repeat for several (each named by its cfg)")
    p.add_argument("--img-size", type=checks.img_size, default=None, help="default: the original cfg's [net] size")
    p.add_argument("--threads", type=thread_counts, default=[1], help="comma-separated thread counts, e.g. 1,2")
    p.add_argument("--runs", type=checks.number(int, lo=1, hi=10000), default=100, help="timed runs per model")
    p.add_argument("--warmup", type=checks.count, default=10)
    p.add_argument("--calib", type=checks.image_source, help="images to calibrate int8 copies of both models on")
    p.add_argument("--note", default="", help="a sentence for the table's header (e.g. how busy the machine was)")
    p.add_argument("--out", type=checks.output_file,
                   default=os.path.join(ROOT, "benchmarks", "results", "runtime_speedup.md"))
    return p.parse_args(argv)


def int8_copies(models, size, calib, work):
    """ONNX fp32 and int8 of each model, as export.py --int8 makes them."""
    from yoloslim.deploy.onnx_export import export_onnx
    from yoloslim.deploy.int8 import quantize
    out = {}
    for name, model in models.items():
        folder = os.path.join(work, name)
        os.makedirs(folder)
        fp32 = os.path.join(folder, "fp32.onnx")
        export_onnx(model, fp32, size)
        out[f"{name} int8"] = quantize(fp32, os.path.join(folder, "int8.onnx"), calib, size)
    return out


def pruned_name(pair, pairs):
    """'pruned' for one pruned pair; 'pruned <cfg stem>' to tell several apart."""
    return "pruned" if len(pairs) == 1 else f"pruned {os.path.splitext(os.path.basename(pair[0]))[0]}"


def rows_for(runtime, threads, models, args, flop_cuts):
    timed = compare(models, runtime, args.img_size, threads, args.runs, args.warmup)
    base = timed["original"].median
    rows = []
    for name, t in timed.items():
        speed = base / t.median
        share = f"{speed / flop_cuts[name]:.2f}" if name in flop_cuts and name != "original" else "-"
        rows.append([runtime, threads, name, f"{t.median:.2f}", f"{t.p10:.2f}-{t.p90:.2f}", f"x{speed:.2f}", share])
        print(" | ".join(map(str, rows[-1])), flush=True)
    return rows


def without_note(argv):
    """The command line as given, less --note's text (the header prints it once)."""
    argv = list(map(str, argv))
    if "--note" in argv:
        k = argv.index("--note")
        argv[k:k + 2] = ["--note", "..."]
    return argv


def machine():
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores visible"


def versions(runtimes):
    import importlib
    names = {"torch": "torch", "opencv": "cv2", "onnxruntime": "onnxruntime", "openvino": "openvino"}
    return ", ".join(f"{r} {importlib.import_module(names[r]).__version__}" for r in runtimes)


def main(argv=None):
    args = parse_args(argv)
    original = load_model(*args.original, args.img_size).eval()
    args.img_size = args.img_size or original.img_size[0]
    named = {"original": args.original, **{pruned_name(pair, args.pruned): pair for pair in args.pruned}}
    models = {name: load_model(*pair, args.img_size).eval() for name, pair in named.items()}
    flops = {name: count_flops(m, args.img_size) for name, m in models.items()}
    flop_cuts = {name: flops["original"] / f for name, f in flops.items()}
    runtimes = [r for r in RUNTIMES if installed(r)]
    load = [os.getloadavg()[0]]
    t0 = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        quantized = int8_copies(models, args.img_size, args.calib, work) if args.calib else {}
        for runtime in runtimes:
            for threads in args.threads:
                timed = {name: Deployable(models[name], *pair) for name, pair in named.items()}
                if runtime in INT8_RUNTIMES:
                    timed.update(quantized)
                rows += rows_for(runtime, threads, timed, args, flop_cuts)
                load.append(os.getloadavg()[0])
    header = ["runtime", "threads", "model", "median ms", "p10-p90 ms", "speed-up over the float original",
              "speed-up / FLOP cut"]
    command = shlex.join(["python", "benchmarks/runtime_speedup.py", *without_note(sys.argv[1:] if argv is None else argv)])
    text = (f"# Speed-up of a pruned model on the deployment runtimes\n\nCommand: `{command}`\n\n"
            f"Original {args.original[0]}; "
            + "; ".join(f"{name} {named[name][0]}: {flops[name] / 1e9:.3f} GFLOPs, FLOP cut x{flop_cuts[name]:.2f}"
                        for name in named if name != "original")
            + f" (at {args.img_size} px). "
            f"Batch 1, median of {args.runs} runs after {args.warmup} warm-up per model, the models of a runtime "
            f"interleaved run by run (yoloslim/deploy/latency.py); threads set explicitly in each runtime. "
            + ("int8: ONNX Runtime static quantization of the convolutions (export.py --int8 recipe) calibrated "
               f"on {args.calib}, run in ONNX Runtime and in OpenVINO. " if args.calib else "")
            + f"\n\nMachine: {machine()}; {versions(runtimes)}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
            f"{time.time() - t0:.0f} s. 1-minute load average during the run: "
            f"{min(load):.1f} to {max(load):.1f}. {args.note}\n\n"
            + markdown_table(header, rows) + "\n")
    with atomic_write(args.out, "w") as f:
        f.write(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    cli_main(main)
