"""Batch-1 CPU latency on the runtimes users deploy with, several models interleaved run by run.

    compare({"original": (cfg, weights), "pruned": compact_model}, "onnxruntime", threads=2)
    -> {"original": Timing(median=..., p10=..., p90=..., runs=20), "pruned": Timing(...)}

Timing two models one after the other on a machine shared with other jobs measures the load as
much as the models. Here every model runs once per round, in an order that rotates from round
to round, so a change in load (and whatever one model leaves in the caches for the next) falls on
all of them alike and their ratio holds. Each runtime gets its thread count set explicitly, and
the input size is the model's own ([net] height/width, or the ONNX/IR input) unless one is given.

A model is a ``Darknet`` instance, a ``(cfg, weights)`` pair, an ``.onnx`` or OpenVINO ``.xml``
path, or a ``Deployable`` holding several of these: each runtime takes what it reads natively
(OpenCV the Darknet pair, ONNX Runtime the ONNX file, OpenVINO the IR or ONNX) and builds the
rest in a temporary folder (ONNX from the PyTorch model, a Darknet pair from it).
"""
import argparse
import contextlib
import importlib
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from yoloslim.errors import SlimError

# runtime -> (module it imports, what to pip install)
PACKAGES = {"torch": ("torch", "torch"), "opencv": ("cv2", "opencv-python-headless<5"),
            "onnxruntime": ("onnxruntime", "onnxruntime"), "openvino": ("openvino", "openvino")}
RUNTIMES = tuple(PACKAGES)
# the prune scripts' default: each of these costs a second or two per model to set up
CHEAP = ("torch", "opencv", "onnxruntime")


class RuntimeMissing(SlimError):
    """A runtime was asked for whose Python package is not installed."""


@dataclass
class Timing:
    """Batch-1 wall time of one model in milliseconds, over ``runs`` timed calls."""
    median: float
    p10: float
    p90: float
    runs: int

    @classmethod
    def of(cls, ms):
        return cls(statistics.median(ms), float(np.percentile(ms, 10)), float(np.percentile(ms, 90)), len(ms))


@dataclass
class Deployable:
    """One model in whichever forms are at hand; missing forms are derived when a runtime needs them."""
    model: Any = None        # a models.Darknet
    cfg: str = None
    weights: str = None
    onnx: str = None
    xml: str = None          # OpenVINO IR (its .bin beside it)


# ----------------------------------------------------------------------------- which runtimes
def missing_text(runtime):
    module, pip = PACKAGES[runtime]
    return f"runtime {runtime} needs the {module} package, which is not installed; pip install '{pip}' or leave {runtime} out"


def installed(runtime):
    try:
        importlib.import_module(PACKAGES[runtime][0])
    except ImportError:
        return False
    return True


def require(runtime):
    """The runtime's module, or one clear line saying what to install."""
    if runtime not in PACKAGES:
        raise SlimError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    try:
        return importlib.import_module(PACKAGES[runtime][0])
    except ImportError:
        raise RuntimeMissing(missing_text(runtime)) from None


def default_runtimes():
    return [r for r in CHEAP if installed(r)]


def runtime_list(text):
    """argparse type for --runtime: comma-separated names, each known and installed (checked before any work)."""
    names = [n.strip().lower() for n in str(text).split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names no runtime; choose from {', '.join(RUNTIMES)}")
    for name in names:
        if name not in PACKAGES:
            raise argparse.ArgumentTypeError(f"unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}")
        if not installed(name):
            raise argparse.ArgumentTypeError(missing_text(name))
    return list(dict.fromkeys(names))


# ----------------------------------------------------------------------------- timing
def interleave(fns, runs, warmup=5, clock=time.perf_counter):
    """{name: [ms per timed call]} for callables run once each per round, ``warmup`` untimed
    rounds first. The order rotates by one every round, so no model always follows the same one."""
    names = list(fns)
    times = {n: [] for n in names}
    for r in range(warmup + runs):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = clock()
            fns[name]()
            if r >= warmup:
                times[name].append((clock() - t0) * 1000)
    return times


def compare(models, runtime, img_size=None, threads=1, runs=20, warmup=5):
    """{name: Timing} of every model in ``models`` ({name: model or files}) on one runtime,
    interleaved. ``img_size``: an int or (h, w); default each model's own size."""
    if runs < 1:
        raise SlimError(f"runs={runs}: time at least one run")
    require(runtime)
    with tempfile.TemporaryDirectory(prefix="latency-") as tmp, thread_count(runtime, threads):
        fns = {}
        for k, (name, spec) in enumerate(models.items()):
            work = os.path.join(tmp, str(k))
            os.mkdir(work)
            fns[name] = LOADERS[runtime](as_deployable(spec), img_size, threads, work)
        return {name: Timing.of(ms) for name, ms in interleave(fns, runs, warmup).items()}


def latency_columns(models, runtimes, img_size=None, threads=1, runs=20, warmup=5):
    """{name: {"<runtime>_ms": median}} over several runtimes, for report tables."""
    rows = {name: {} for name in models}
    for runtime in runtimes:
        for name, t in compare(models, runtime, img_size, threads, runs, warmup).items():
            rows[name][f"{runtime}_ms"] = t.median
    return rows


def _process_threads(runtime):
    """(get, set) of a runtime whose thread count is process-wide, or None when it is per session."""
    if runtime == "torch":
        import torch
        return torch.get_num_threads, torch.set_num_threads
    if runtime == "opencv":
        import cv2
        return cv2.getNumThreads, cv2.setNumThreads
    return None


@contextlib.contextmanager
def thread_count(runtime, threads):
    """PyTorch and OpenCV keep their thread count process-wide: set it for the timing, then put it back.
    ONNX Runtime and OpenVINO take it per session (see the loaders)."""
    process_wide = _process_threads(runtime)
    if process_wide is None:
        yield
        return
    get, set_to = process_wide
    before = get()
    set_to(threads)
    try:
        yield
    finally:
        set_to(before)


# ----------------------------------------------------------------------------- models in each form
def as_deployable(spec):
    if isinstance(spec, Deployable):
        return spec
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return Deployable(cfg=os.fspath(spec[0]), weights=os.fspath(spec[1]))
    if isinstance(spec, (str, os.PathLike)):
        path = os.fspath(spec)
        if path.endswith(".onnx"):
            return Deployable(onnx=path)
        if path.endswith(".xml"):
            return Deployable(xml=path)
        raise SlimError(f"{path}: a model to time is a Darknet model, a (cfg, weights) pair, an .onnx or an OpenVINO .xml")
    if hasattr(spec, "module_defs"):
        return Deployable(model=spec)
    raise SlimError(f"cannot time a {type(spec).__name__}: pass a Darknet model, a (cfg, weights) pair, an .onnx or an .xml")


def torch_model(d):
    if d.model is None:
        if not d.cfg:
            raise SlimError(f"{d.onnx or d.xml}: PyTorch times our Darknet model; pass its cfg and weights")
        from yoloslim.darknet.load import load_model
        d.model = load_model(d.cfg, d.weights)
    return d.model.eval()


def native_hw(d):
    """The model's own input (h, w): the Darknet model's size, its [net] section, or the file's fixed input."""
    if d.model is not None:
        h, w = d.model.img_size if not isinstance(d.model.img_size, int) else (d.model.img_size,) * 2
        return int(h), int(w)
    if d.cfg:
        from yoloslim.darknet.cfg import parse_model_cfg
        net = parse_model_cfg(d.cfg)[0]
        return int(net.get("height", 416)), int(net.get("width", 416))
    return tuple(file_input_shape(d)[2:])


def in_channels(d):
    if d.model is not None:
        return d.model.in_channels
    if d.cfg:
        from yoloslim.darknet.cfg import parse_model_cfg
        return int(parse_model_cfg(d.cfg)[0].get("channels", 3))
    return int(file_input_shape(d)[1])


def file_input_shape(d):
    if d.onnx:
        import onnx
        dims = onnx.load(d.onnx, load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        return [int(x.dim_value) for x in dims]
    ov = require("openvino")
    return [int(x) for x in ov.Core().read_model(d.xml).inputs[0].get_shape()]


def input_for(d, img_size):
    """The fixed random batch-1 input every call of one model gets (its size and channel count)."""
    hw = native_hw(d) if img_size is None else (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if (d.onnx or d.xml) and d.model is None and d.cfg is None and tuple(hw) != tuple(native_hw(d)):
        raise SlimError(f"{d.onnx or d.xml}: its input is fixed at {native_hw(d)[0]}x{native_hw(d)[1]}; "
                        f"time it at that size or export it again at {hw[0]}x{hw[1]}")
    return np.random.default_rng(0).random((1, in_channels(d), *hw), dtype=np.float32)


def onnx_file(d, hw, work):
    """An ONNX file of the model at input size ``hw``: the given one, or exported into ``work``."""
    if d.onnx and (d.model is None and d.cfg is None or tuple(native_hw(Deployable(onnx=d.onnx))) == tuple(hw)):
        return d.onnx
    if d.model is None and d.cfg is None:
        raise SlimError(f"{d.xml}: ONNX Runtime reads ONNX, not OpenVINO IR; pass the .onnx")
    from yoloslim.deploy.onnx_export import export_onnx
    path = os.path.join(work, "model.onnx")
    export_onnx(torch_model(d), path, tuple(hw))
    return path


def darknet_pair(d, work):
    if d.cfg and d.weights:
        return d.cfg, d.weights
    if d.model is None:
        raise SlimError(f"{d.onnx or d.xml}: OpenCV DNN times the Darknet pair here; pass the cfg and weights")
    from yoloslim.darknet.cfg import write_model_cfg
    cfg, weights = os.path.join(work, "model.cfg"), os.path.join(work, "model.weights")
    write_model_cfg(d.model.all_defs, cfg)
    d.model.save_darknet_weights(weights)
    return cfg, weights


# ----------------------------------------------------------------------------- one forward call per runtime
def load_torch(d, img_size, threads, work):
    import torch
    model, x = torch_model(d), torch.from_numpy(input_for(d, img_size))

    def run():
        with torch.no_grad():
            model(x)
    return run


def load_opencv(d, img_size, threads, work):
    from yoloslim.deploy.opencv_dnn import read_net
    x = input_for(d, img_size)
    net = read_net(*darknet_pair(d, work))   # default (Winograd) path: what users run
    names = net.getUnconnectedOutLayersNames()

    def run():
        net.setInput(x)
        net.forward(names)
    return run


def ort_session(path, threads):
    """An ONNX Runtime CPU session on exactly ``threads`` intra-op threads."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # idle workers would otherwise spin for a while after each call, stealing the cores from the
    # model timed next and from the other jobs on a shared machine
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_onnxruntime(d, img_size, threads, work):
    x = input_for(d, img_size)
    session = ort_session(onnx_file(d, x.shape[2:], work), threads)
    feed = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feed)


def ov_compiled(path, threads, exact=False):
    """An OpenVINO CPU model compiled for batch-1 latency on exactly ``threads`` threads.
    ``exact`` holds it to float32 where the CPU would otherwise be free to run bf16 (output checks)."""
    ov = require("openvino")
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    if exact:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    return core.compile_model(core.read_model(str(path)), "CPU", config)


def load_openvino(d, img_size, threads, work):
    x = input_for(d, img_size)
    path = d.xml if d.xml and d.model is None and d.cfg is None else onnx_file(d, x.shape[2:], work)
    request = ov_compiled(path, threads).create_infer_request()
    return lambda: request.infer({0: x})


LOADERS: dict[str, Callable] = {"torch": load_torch, "opencv": load_opencv,
                                "onnxruntime": load_onnxruntime, "openvino": load_openvino}


def describe(runtimes, img_size, threads, runs, warmup):
    """The line every latency table carries: what was timed and how."""
    hw = f"{img_size} px" if isinstance(img_size, int) else "each model's own size" if img_size is None \
        else f"{img_size[0]}x{img_size[1]} px"
    return (f"latency: batch 1 at {hw}, median ms of {runs} runs after {warmup} warm-up, the models interleaved "
            f"run by run, {threads} thread(s) set in each runtime ({', '.join(runtimes)})")
