"""Per-layer latency tables: what each conv of a model costs on one runtime, by its channel counts.

    tables = build_tables(model, "onnxruntime", grids, threads=2)
    tables.predict({conv: (in_channels, out_channels), ...})   # ms, whole model

Each conv (conv + BN + activation) is timed as a one-layer network at the input resolution,
stride and kernel it has in the model, at a small grid of (in, out) counts: the grid points of
one layer run interleaved, so a change in the machine's load falls on all of them alike. Between
grid points the table interpolates bilinearly (below the grid, in proportion to the count); FLOPs are bilinear in (in, out), so what remains
is the runtime's efficiency changing with the counts. Where the time grows much faster than the
FLOPs across a grid step (a change of kernel: OpenCV's 3x3 convs leave the Winograd path past
some in x out) the step is halved, up to twice, so the cliff is placed where it is.

The grids of different layers are measured at different moments, so on a shared machine their
levels need not agree. One calibration set fixes that: the whole model, every conv at its full
counts and a trivial network (the fixed cost of a call, which a one-layer network pays once per
conv and the whole model once) run interleaved, round by round. Each layer's grid is scaled to
its calibrated full-count time, and everything that is not a conv (routes, upsampling, pooling,
the heads) is one constant: the whole model's time minus the sum of its convs' times, all from
that one set.

Measurements are cached on disk per machine, runtime version and thread count (key: the CPU model
string, the runtime and its version, the threads, and each layer's shape including its input
size), under ``$XDG_CACHE_HOME/yoloslim/latency/`` (default ``~/.cache``): a second build of the
same tables measures no layer. It times the whole model once (once per process), though: a
calibration set measured while other jobs held the cores sets every level too high (yolov2 at
64 px was cached at 432 ms and ran in 25), and its grids keep their shape but not their level, so
a cached set the machine no longer agrees with (by STALE either way) is measured again.
"""
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch

from yoloslim.darknet.cfg import Section, cfg_to_text
from yoloslim.darknet.kinds import Convolutional, layer_shapes
from yoloslim.darknet.weights import header_bytes
from yoloslim.deploy import latency
from yoloslim.deploy.measure import cpu_model, forward_with_hooks
from yoloslim.io import atomic_write

TABLE_RUNS = 7          # timed calls per grid point: the median of an interleaved set
TABLE_WARMUP = 3
LOW_QUANTILE = 0.2
REFINE_ROUNDS = 2      # at most this many halvings of a grid step around a cliff
CLIFF = 2.0            # time growing this much faster than the FLOPs over a grid step marks a cliff
GRID_FRACTIONS = (1.0, 0.5, 0.25)   # of a layer's width, rounded to multiples of 8, plus the floor of 8
STALE = 1.5            # a cached calibration set is measured again when its model, alone, runs this far off
_FRESH = set()         # calibration sets measured or confirmed in this process


# ----------------------------------------------------------------------------- where, for whom
def runtime_version(runtime):
    module = latency.require(runtime)
    return str(getattr(module, "__version__", "unknown"))


def cache_root():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "yoloslim", "latency")


def _slug(text):
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


@dataclass
class LatencyCache:
    """Measured points of one (machine, runtime version, threads), as a JSON file."""
    runtime: str
    threads: int
    folder: str = None
    points: dict = field(default_factory=dict)     # key -> ms

    def __post_init__(self):
        self.folder = self.folder or cache_root()
        machine = f"{cpu_model()}-{self.runtime}-{runtime_version(self.runtime)}-t{self.threads}"
        self.path = os.path.join(self.folder, _slug(machine) + ".json")
        self.points = self._read()

    def _read(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            return {k: float(v) for k, v in data.get("points", {}).items()}
        except (OSError, ValueError, AttributeError):
            return {}   # a missing or damaged cache is measured again, never an error

    def save(self, new):
        """Merge ``new`` points into the file (another run may have added its own meanwhile)."""
        self.points = {**self._read(), **self.points, **new}
        with atomic_write(self.path, "w") as f:
            json.dump({"cpu": cpu_model(), "runtime": self.runtime, "threads": self.threads,
                       "points": self.points}, f, indent=0, sort_keys=True)


# ----------------------------------------------------------------------------- layer shapes
@dataclass(frozen=True)
class ConvShape:
    """One conv as the runtime sees it, less its channel counts."""
    size: int
    stride: int
    pad: int
    bn: bool
    activation: str
    in_h: int
    in_w: int
    out_h: int
    out_w: int

    def key(self, cin, cout):
        return (f"k{self.size}s{self.stride}p{self.pad}{'bn' if self.bn else ''}-{self.activation}-"
                f"{self.in_h}x{self.in_w}-{cin}x{cout}")

    def flops(self, cin, cout):
        return 2 * self.size * self.size * cin * cout * self.out_h * self.out_w

    def params(self, cin, cout):
        return self.size * self.size * cin * cout + (4 if self.bn else 1) * cout


def conv_shapes(model, img_size=None):
    """{conv layer index: (ConvShape, in_channels, out_channels)} at ``img_size`` (default the model's),
    read from one forward pass, so padding and pooling are the model's own."""
    h, w = _hw(img_size or model.img_size)
    found, handles = {}, []
    for i, (kind, mdef, module) in enumerate(zip(model.kinds, model.module_defs, model.module_list)):
        if not kind.has_weights:
            continue
        conv = kind.conv(module)
        if conv.groups != 1:
            continue            # grouped convs are frozen in the graph: their cost is in the constant

        def hook(mod, inputs, output, i=i, mdef=mdef, conv=conv):
            _, cin, ih, iw = inputs[0].shape
            found[i] = (ConvShape(conv.kernel_size[0], conv.stride[0], conv.padding[0], kind.bn(mod) is not None,
                                  str(mdef.get("activation", "logistic")), ih, iw, *output.shape[2:]),
                        int(cin), int(output.shape[1]))
        handles.append(module.register_forward_hook(hook))
    forward_with_hooks(model, handles, h, w)
    return found


def grid_counts(width, fractions=GRID_FRACTIONS, floor=8):
    """The counts a layer is timed at: its width and multiples of 8 near ``fractions`` of it, down
    to ``floor`` (counts below the grid extrapolate from its two lowest points)."""
    if width <= floor:
        return sorted({width, max(1, width // 2)})
    counts = {width, floor}
    counts.update(max(floor, floor * round(width * f / floor)) for f in fractions)
    return sorted(c for c in counts if c <= width)


# ----------------------------------------------------------------------------- one-layer networks
def conv_section(shape, cout):
    s = Section("convolutional")
    s.update(batch_normalize=int(shape.bn), filters=cout, size=shape.size, stride=shape.stride,
             pad=0, padding=shape.pad, activation=shape.activation)
    return s


def one_layer_module(shape, cin, cout):
    seq = Convolutional().build(conv_section(shape, cout), [], cin).eval()
    return seq


def _onnx_of(seq, x, path):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(seq, torch.from_numpy(x), path, dynamo=False, opset_version=13,
                          input_names=["x"], output_names=["y"])
    return path


def _darknet_pair(shape, cin, cout, seq, work):
    """The layer as a Darknet pair, so OpenCV runs it through the importer users' models take."""
    net = Section("net")
    net.update(height=shape.in_h, width=shape.in_w, channels=cin)
    cfg, weights = os.path.join(work, "layer.cfg"), os.path.join(work, "layer.weights")
    with open(cfg, "w") as f:
        f.write(cfg_to_text([net, conv_section(shape, cout)]))
    chunks = [header_bytes((0, 2, 5), 0)]
    bn = getattr(seq, "BatchNorm2d", None)
    params = [bn.bias, bn.weight, bn.running_mean, bn.running_var] if bn is not None else [seq.Conv2d.bias]
    for t in params + [seq.Conv2d.weight]:
        chunks.append(t.detach().float().numpy().astype("<f4").tobytes())
    with open(weights, "wb") as f:
        f.write(b"".join(chunks))
    return cfg, weights


def one_layer_call(runtime, shape, cin, cout, threads, work):
    """A no-argument callable running the one-layer network once on ``runtime``."""
    x = np.random.default_rng(0).random((1, cin, shape.in_h, shape.in_w), dtype=np.float32)
    seq = one_layer_module(shape, cin, cout)
    if runtime == "torch":
        tx = torch.from_numpy(x)

        def run():
            with torch.no_grad():
                seq(tx)
        return run
    if runtime == "opencv":
        from yoloslim.deploy.opencv_dnn import read_net
        net = read_net(*_darknet_pair(shape, cin, cout, seq, work))
        names = net.getUnconnectedOutLayersNames()

        def run():
            net.setInput(x)
            net.forward(names)
        return run
    path = _onnx_of(seq, x, os.path.join(work, "layer.onnx"))
    if runtime == "onnxruntime":
        session = latency.ort_session(path, threads)
        return lambda: session.run(None, {"x": x})
    request = latency.ov_compiled(path, threads).create_infer_request()
    return lambda: request.infer({0: x})


# ----------------------------------------------------------------------------- timing
# a trivial layer: what one call of a one-layer network costs beyond its arithmetic
_TRIVIAL = ConvShape(1, 1, 0, True, "linear", 8, 8, 8, 8)


@dataclass
class RuntimeTimer:
    """Times one-layer networks and whole models on one runtime, interleaved; counts its calls."""
    runtime: str
    threads: int
    runs: int = TABLE_RUNS
    warmup: int = TABLE_WARMUP
    calls: int = 0           # measurements made (tests check that a cached build makes none)
    checks: int = 0          # whole-model timings that checked a cached calibration set

    def layer(self, shape, points):
        """{(cin, cout): ms} of one conv at each of ``points``."""
        with tempfile.TemporaryDirectory(prefix="layer-latency-") as tmp:
            fns = {(cin, cout): one_layer_call(self.runtime, shape, cin, cout, self.threads, _folder(tmp, k))
                   for k, (cin, cout) in enumerate(points)}
            return self._interleaved(fns)

    def calibrate(self, model, img_size, layers):
        """{"model": ms, "overhead": ms, name: ms for each (shape, cin, cout) in ``layers``}, one set."""
        with tempfile.TemporaryDirectory(prefix="model-latency-") as tmp:
            fns = {"model": latency.LOADERS[self.runtime](latency.as_deployable(model), img_size, self.threads,
                                                          _folder(tmp, "model")),
                   "overhead": one_layer_call(self.runtime, _TRIVIAL, 8, 8, self.threads, _folder(tmp, "overhead"))}
            for k, (name, (shape, cin, cout)) in enumerate(layers.items()):
                fns[name] = one_layer_call(self.runtime, shape, cin, cout, self.threads, _folder(tmp, k))
            return self._interleaved(fns)

    def whole(self, model, img_size):
        """ms of the whole model alone (not counted in calls): stored beside each calibration set, and
        timed again to check a cached one. Alone it runs with warm caches, faster than among the
        one-layer networks of the set (yolov5n at 64 px: 1.0 ms against 1.8), so only the same kind
        of timing can tell whether the machine changed."""
        with tempfile.TemporaryDirectory(prefix="model-latency-") as tmp:
            run = latency.LOADERS[self.runtime](latency.as_deployable(model), img_size, self.threads, tmp)
            with latency.thread_count(self.runtime, self.threads):
                return _typical(latency.interleave({"model": run}, self.runs, self.warmup)["model"])

    def _interleaved(self, fns):
        self.calls += 1
        with latency.thread_count(self.runtime, self.threads):
            times = latency.interleave(fns, self.runs, self.warmup)
        return {p: _typical(ms) for p, ms in times.items()}


def _typical(ms):
    """A low quantile rather than the median: on a shared machine the slow runs are other jobs
    taking the cores, and a model with many parallel regions (each waiting for its slowest thread)
    suffers more from them than one layer does, which would bias the whole-model constant."""
    return float(np.quantile(ms, LOW_QUANTILE))


def _folder(tmp, name):
    path = os.path.join(tmp, str(name))
    os.makedirs(path, exist_ok=True)
    return path


# ----------------------------------------------------------------------------- tables
@dataclass
class LayerTable:
    """ms of one conv over a grid of (in, out) counts, made monotone (fewer channels never cost
    more: what the grid shows otherwise is noise) and interpolated bilinearly."""
    ins: list
    outs: list
    ms: list            # ms[i][j] at (ins[i], outs[j])

    def __post_init__(self):
        grid = np.maximum.accumulate(np.maximum.accumulate(np.asarray(self.ms, dtype=float), 0), 1)
        self.ms = grid.tolist()
        self._grid = grid

    def __call__(self, cin, cout):
        rows = _weights(self.ins, cin)
        cols = _weights(self.outs, cout)
        value = sum(wi * wj * self._grid[i, j] for i, wi in rows for j, wj in cols)
        return max(0.0, float(value))


def _weights(axis, x):
    """[(index, weight)] interpolating ``x`` on the sorted ``axis``. Below the grid the cost falls in
    proportion to the count (to 0 at 0); past it, it stays at the last point (counts never exceed
    the full width). Non-negative weights keep the product over two axes monotone in each."""
    if x <= axis[0]:
        return [(0, x / axis[0])]
    if x >= axis[-1]:
        return [(len(axis) - 1, 1.0)]
    k = int(np.searchsorted(axis, x)) - 1
    a, b = axis[k], axis[k + 1]
    t = (x - a) / (b - a)
    return [(k, 1 - t), (k + 1, t)]


@dataclass
class LatencyTables:
    """Predicted whole-model ms for any channel counts of one model on one runtime."""
    runtime: str
    threads: int
    img_size: tuple
    tables: dict             # conv -> LayerTable
    shapes: dict             # conv -> (ConvShape, full in, full out)
    constant_ms: float       # everything but the convs
    whole_ms: float          # the unpruned model as measured
    overhead_ms: float
    measured: int = 0        # grid points and models measured in this build (0: all from the cache)
    measured_layers: int = 0  # of them, grid points (0: every layer's grid from the cache)

    def conv_ms(self, conv, cin, cout):
        return self.tables[conv](cin, cout)

    def predict(self, widths):
        """ms of the model whose conv ``c`` has ``widths[c] = (in, out)`` (full counts where missing)."""
        total = self.constant_ms
        for conv, (_, cin, cout) in self.shapes.items():
            total += self.conv_ms(conv, *widths.get(conv, (cin, cout)))
        return total


def model_key(model, size):
    text = cfg_to_text([model.hyperparams, *model.module_defs])
    return f"model-{hashlib.sha256(text.encode()).hexdigest()[:16]}-{size[0]}x{size[1]}"


def build_tables(model, runtime, grids=None, img_size=None, threads=1, timer=None, cache=None, progress=True):
    """LatencyTables of ``model`` on ``runtime`` at ``img_size`` (default the model's own) and ``threads``.

    ``grids``: {conv: (in counts, out counts)} to time each conv at; by default grid_counts of
    both (a conv reading the image keeps its channels). ``timer``: a RuntimeTimer (tests pass
    one to count calls); ``cache``: a LatencyCache (default the machine's, under cache_root()).
    """
    size = _hw(img_size or model.img_size)
    timer = timer or RuntimeTimer(runtime, threads)
    cache = cache or LatencyCache(runtime, threads)
    shapes = conv_shapes(model, size)
    if grids is None:
        sources = layer_shapes(model.module_defs, model.in_channels)[0]
        grids = {c: ([cin] if not sources[c] else grid_counts(cin), grid_counts(cout))
                 for c, (_, cin, cout) in shapes.items()}
    new = {}
    calibrated = _calibration(timer, cache, new, model, size, shapes)
    tables = {}
    for conv in _progress(shapes, progress, f"latency tables ({runtime}, {threads} thread(s))"):
        shape, cin, cout = shapes[conv]
        ins, outs = grids.get(conv, ([cin], [cout]))
        full = calibrated[shape.key(cin, cout)] - calibrated["overhead"]
        tables[conv] = _layer_table(timer, cache, new, shape, sorted(set(ins) | {cin}), sorted(set(outs) | {cout}),
                                    (cin, cout), full)
    if new:
        cache.save(new)
    convs_ms = sum(tables[c](cin, cout) for c, (_, cin, cout) in shapes.items())
    whole = calibrated["model"]
    return LatencyTables(runtime, threads, size, tables, shapes, whole - convs_ms, whole, calibrated["overhead"],
                         len(new), sum(not k.startswith(model_key(model, size) + "/") for k in new))


def _calibration(timer, cache, new, model, size, shapes):
    """The model's calibration set (cached under its cfg and size): {"model", "overhead", shape key: ms}."""
    prefix = model_key(model, size) + "/"
    layers = {shape.key(cin, cout): (shape, cin, cout) for shape, cin, cout in shapes.values()}
    names = ["model", "overhead", *layers]
    cached = all(prefix + n in cache.points for n in names + ["alone"])
    if not cached or _stale(timer, cache, model, size, prefix):
        new.update({prefix + n: ms for n, ms in timer.calibrate(model, size, layers).items()})
        new[prefix + "alone"] = timer.whole(model, size)
    _FRESH.add((cache.path, prefix))
    return {n: new.get(prefix + n, cache.points.get(prefix + n)) for n in names}


def _stale(timer, cache, model, size, prefix):
    """Whether the machine now runs the model alone STALE times faster or slower than it did when
    the cached set was measured (checked once per process)."""
    if (cache.path, prefix) in _FRESH:
        return False
    timer.checks += 1
    then, now = cache.points[prefix + "alone"], timer.whole(model, size)
    return not then / STALE <= now <= then * STALE


def _layer_table(timer, cache, new, shape, ins, outs, full_counts, full_ms):
    """One conv's table: its grid as measured together (refined where the runtime has a cliff),
    scaled to its calibrated full-count time."""
    for refinement in range(REFINE_ROUNDS + 1):
        points = [(i, o) for i in ins for o in outs]
        missing = [p for p in points if shape.key(*p) not in cache.points and shape.key(*p) not in new]
        if missing:
            new.update({shape.key(*p): ms for p, ms in timer.layer(shape, missing).items()})
        known = {k: new.get(shape.key(*k), cache.points.get(shape.key(*k))) for k in points}
        finer_ins, finer_outs = _cliffs(ins, outs, known) if refinement < REFINE_ROUNDS else (set(), set())
        if not finer_ins and not finer_outs:
            break
        ins, outs = sorted(set(ins) | finer_ins), sorted(set(outs) | finer_outs)
    scale = max(0.0, full_ms) / known[full_counts] if known[full_counts] > 0 else 1.0
    return LayerTable(ins, outs, [[known[(i, o)] * scale for o in outs] for i in ins])


def _cliffs(ins, outs, known):
    """Midpoints (multiples of 8) of grid steps where the time grows much faster than the FLOPs: a
    change of kernel (OpenCV leaves its Winograd path once in x out passes a size), which bilinear
    interpolation across the step would smear over counts that stay below it."""
    def split(axis, value):
        found = set()
        for a, b in zip(axis, axis[1:]):
            mid = 8 * round((a + b) / 16)
            if a < mid < b and any(value(b, other) > CLIFF * (b / a) * value(a, other) for other in _other(axis)):
                found.add(mid)
        return found

    def _other(axis):
        return outs if axis is ins else ins
    return (split(ins, lambda i, o: known[(i, o)]) if len(outs) else set(),
            split(outs, lambda o, i: known[(i, o)]) if len(ins) else set())


def _progress(items, enabled, desc):
    if not enabled:
        return items
    from tqdm import tqdm
    return tqdm(items, desc=desc, unit="layer", dynamic_ncols=True, leave=False, disable=None)  # a terminal only


def _hw(size):
    return (size, size) if isinstance(size, int) else tuple(int(v) for v in size)
