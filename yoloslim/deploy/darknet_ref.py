"""The original Darknet (pjreddie) as a reference for .cfg/.weights pairs, through ctypes.

Debian packages the 2018 Darknet that defines yolov3, yolov3-spp and yolov3-tiny
(``apt-get install darknet``: ``/usr/lib/darknet/libdarknet.so``). Its command line waits on a
window after ``detector test``, so the library is driven directly: ``load_network``,
``network_predict``, then every ``[yolo]`` layer's ``output`` array, ``get_network_boxes`` and
``do_nms_sort``.

Darknet calls ``exit()`` on a cfg it cannot parse, so it always runs in a child Python
process (this file run as a script, importing only numpy): a bad file ends that process,
never the caller's, and its last words become one ``SlimError`` line.

What Darknet computes, and how it differs from our model:

- BN divides by ``sqrt(var) + 1e-6`` (OpenCV and our model: ``sqrt(var + 1e-6)``). A file
  written with ``reader="pjreddie"`` holds statistics that make this Darknet compute the model
  itself, and one whose header says pjreddie (revision 0) is loaded that way
  (yoloslim/darknet/bn_readers.py), so the comparison below is with the model as it is, never adjusted.
- A ``[yolo]`` layer's output is the head conv's output with logistic applied in place to x, y,
  objectness and every class score (w and h stay raw); a ``[region]`` (YOLOv2) applies the
  logistic to x, y and objectness and a softmax over the classes. ``darknet_layout`` puts our raw
  maps in that form, through each head's ``darknet_output``.
- Convolutions pad with zeros, like our model by default.
"""
import ctypes
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import numpy as np

LIB_PATH = os.environ.get("DARKNET_LIB", "/usr/lib/darknet/libdarknet.so")
INSTALL_HINT = "install it with: sudo apt-get install darknet (Debian/Ubuntu)"
REGION, YOLO = 22, 23  # LAYER_TYPE enum values of the two heads in darknet.h


def darknet_missing():
    """None when the Darknet library can be used, else one line saying why not and how to fix it."""
    if not os.path.isfile(LIB_PATH):
        return f"Darknet is not installed ({LIB_PATH} not found); {INSTALL_HINT}"
    return None


@dataclass
class DarknetRun:
    """What Darknet computed for one input.

    ``yolo``: per [yolo] layer, its output array (na*(5+nc), ny, nx) after Darknet's in-place
    logistic on x, y, objectness and class scores. ``boxes``: (n, 4) x, y, w, h relative to the
    input size; ``objectness`` (n,); ``probs`` (n, nc) objectness*class, zeroed by Darknet under
    its threshold and by NMS. Candidates are those with objectness above ``thresh``.
    """
    yolo: list
    boxes: np.ndarray
    objectness: np.ndarray
    probs: np.ndarray

    def detections(self, thresh=0.25):
        """(class, prob, x, y, w, h) for every class score above ``thresh`` after NMS."""
        rows, cols = np.nonzero(self.probs > thresh)
        return [(int(c), float(self.probs[r, c]), *map(float, self.boxes[r])) for r, c in zip(rows, cols)]


def run_darknet(cfg, weights, x, thresh=0.005, nms=0.45, timeout=600):
    """Run a cfg/weights pair in Darknet on one input ``x`` (CHW or 1xCHW float32, already resized)."""
    x = np.asarray(x, dtype=np.float32)
    return run_darknet_many(cfg, weights, x.reshape(1, *x.shape[-3:]), thresh, nms, timeout)[0]


def run_darknet_many(cfg, weights, xs, thresh=0.005, nms=0.45, timeout=600):
    """One DarknetRun per input of ``xs`` (N, 3, H, W), from a single load of the network.

    The cfg is copied with batch=1 and the inputs' width/height, so any input size runs.
    ``thresh`` is Darknet's objectness threshold for candidate boxes, ``nms`` its NMS IoU
    (0 = no NMS). Raises SlimError with one line when Darknet is missing or refuses the files.
    """
    from yoloslim.errors import SlimError
    missing = darknet_missing()
    if missing:
        raise SlimError(missing)
    xs = np.ascontiguousarray(xs, dtype=np.float32)
    if xs.ndim != 4 or xs.shape[1] != 3:
        raise SlimError(f"Darknet reference: expected (N, 3, H, W) image tensors, got shape {xs.shape}")
    with tempfile.TemporaryDirectory(prefix="darknet-") as tmp:
        np.save(os.path.join(tmp, "input.npy"), xs)
        cmd = [sys.executable, os.path.abspath(__file__), os.fspath(cfg), os.fspath(weights), tmp, repr(thresh), repr(nms)]
        env = dict(os.environ, DARKNET_LIB=LIB_PATH)
        try:
            # errors="replace": Darknet's error() can print stray bytes after its message
            proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise SlimError(f"{cfg}: Darknet did not finish within {timeout} s") from None
        results = [os.path.join(tmp, f"result{k}.npz") for k in range(len(xs))]
        if proc.returncode != 0 or not all(map(os.path.isfile, results)):
            why = _last_words(proc.stderr + proc.stdout) or f"exit status {proc.returncode}"
            raise SlimError(f"{cfg}: Darknet cannot run this pair ({why})")
        runs = []
        for path in results:
            with np.load(path) as z:
                yolo = [z[f"yolo{k}"] for k in range(int(z["n_yolo"]))]
                runs.append(DarknetRun(yolo, z["boxes"], z["objectness"], z["probs"]))
        return runs


def _last_words(text):
    """The line saying why Darknet stopped: its last complaint ("Type not recognized: [sam]"), else its
    last line (Darknet's error() ends with a bare "<program>:" line, which says nothing)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    complaints = [ln for ln in lines if re.search(r"not recognized|[Ee]rror|[Cc]ouldn't|[Ff]ailed", ln)]
    return (complaints or lines or [""])[-1]


def darknet_layout(model, raw):
    """Our raw head maps (B, na*no, ny, nx) as Darknet's head layers leave them for batch item 0
    (``YOLOLayer.darknet_output``: the activations Darknet applies in place)."""
    return [model.module_list[i].darknet_output(r[0].detach().double().cpu()).numpy()
            for i, r in zip(model.yolo_layers, raw)]


def darknet_difference(model, run, x):
    """Largest scaled difference (yoloslim.deploy.parity) between ``model`` on ``x`` (1x3xHxW) and a DarknetRun.

    ``model`` is what Darknet should compute: the trained model when the pair was written for
    pjreddie, else the pair as pjreddie reads it (yoloslim.darknet.bn_readers.as_read_by). Every head is
    compared relative to its magnitude; w and h relative to their value as well.
    """
    import torch
    from yoloslim.deploy.parity import scaled_difference
    model = model.eval()
    dtype = next(model.parameters()).dtype   # float64 models (yoloslim.darknet.bn_readers.reader_model) too
    with torch.no_grad():
        raw = model.forward_raw(torch.as_tensor(np.asarray(x), dtype=dtype).reshape(1, 3, *np.shape(x)[-2:]))
    ours = darknet_layout(model, raw)
    if len(ours) != len(run.yolo):
        return float("inf")
    scales = [max(1.0, float(r.abs().max())) for r in raw]
    worst = 0.0
    for i, a, b, s in zip(model.yolo_layers, ours, run.yolo, scales):
        head = model.module_list[i]
        relative = np.zeros((head.na, head.no, *a.shape[1:]), bool)
        relative[:, 2:4] = True
        worst = max(worst, scaled_difference(a, b, s, relative.reshape(a.shape) if a.shape == b.shape else None))
    return worst


# ----------------------------------------------------------------------------- the child process
# ctypes mirror of darknet.h (CPU build, no GPU/CUDNN fields). Only the layer struct is laid out
# in full, because its size is the stride of the ``net->layers`` array; the fields read are checked
# against each other (outputs == out_h*out_w*out_c, out_c == n*(5+classes)) before use.
_P = ctypes.c_void_p
_LAYER_FIELDS = (
    [(n, ctypes.c_int) for n in ("type", "activation", "cost_type")]
    + [(n, _P) for n in ("forward", "backward", "update", "forward_gpu", "backward_gpu", "update_gpu")]
    + [(n, ctypes.c_int) for n in (
        "batch_normalize shortcut batch forced flipped inputs outputs nweights nbiases extra truths "
        "h w c out_h out_w out_c n max_boxes groups size side stride reverse flatten spatial pad sqrt "
        "flip index binary xnor steps hidden truth").split()]
    + [(n, ctypes.c_float) for n in
       "smooth dot angle jitter saturation exposure shift ratio learning_rate_scale clip".split()]
    + [(n, ctypes.c_int) for n in
       "noloss softmax classes coords background rescore objectness joint noadjust reorg log tanh".split()]
    + [("mask", ctypes.POINTER(ctypes.c_int)), ("total", ctypes.c_int)]
    + [(n, ctypes.c_float) for n in
       "alpha beta kappa coord_scale object_scale noobject_scale mask_scale class_scale".split()]
    + [(n, ctypes.c_int) for n in ("bias_match", "random")]
    + [(n, ctypes.c_float) for n in ("ignore_thresh", "truth_thresh", "thresh", "focus")]
    + [(n, ctypes.c_int) for n in
       "classfix absolute onlyforward stopbackward dontload dontsave dontloadscales numload".split()]
    + [(n, ctypes.c_float) for n in ("temperature", "probability", "scale")]
    + [(n, _P) for n in "cweights indexes input_layers input_sizes map counts sums".split()]
    + [(n, ctypes.POINTER(ctypes.c_float)) for n in (
        "rand cost state prev_state forgot_state forgot_delta state_delta combine_cpu combine_delta_cpu "
        "concat concat_delta binary_weights biases bias_updates scales scale_updates weights "
        "weight_updates delta output loss squared norms spatial_mean mean variance mean_delta "
        "variance_delta rolling_mean rolling_variance x x_norm m v bias_m bias_v scale_m scale_v "
        "z_cpu r_cpu h_cpu prev_state_cpu temp_cpu temp2_cpu temp3_cpu dh_cpu hh_cpu prev_cell_cpu "
        "cell_cpu f_cpu i_cpu g_cpu o_cpu c_cpu dc_cpu binary_input").split()]
    + [(n, _P) for n in (
        "input_layer self_layer output_layer reset_layer update_layer state_layer input_gate_layer "
        "state_gate_layer input_save_layer state_save_layer input_state_layer state_state_layer "
        "input_z_layer state_z_layer input_r_layer state_r_layer input_h_layer state_h_layer "
        "wz uz wr ur wh uh uo wo uf wf ui wi ug wg softmax_tree").split()]
    + [("workspace_size", ctypes.c_size_t)]
)


class _Layer(ctypes.Structure):
    _fields_ = _LAYER_FIELDS


class _NetworkHead(ctypes.Structure):
    """The first fields of ``struct network``; only ``n`` and ``layers`` are read."""
    _fields_ = [("n", ctypes.c_int), ("batch", ctypes.c_int), ("seen", _P), ("t", _P), ("epoch", ctypes.c_float),
                ("subdivisions", ctypes.c_int), ("layers", ctypes.POINTER(_Layer))]


class _Box(ctypes.Structure):
    _fields_ = [(n, ctypes.c_float) for n in "xywh"]


class _Detection(ctypes.Structure):
    _fields_ = [("bbox", _Box), ("classes", ctypes.c_int), ("prob", ctypes.POINTER(ctypes.c_float)),
                ("mask", ctypes.POINTER(ctypes.c_float)), ("objectness", ctypes.c_float), ("sort_class", ctypes.c_int)]


def _single_image_cfg(cfg, out_path, width, height):
    """Copy of ``cfg`` whose [net] section says batch=1 subdivisions=1 and the input's size.

    Darknet allocates every layer for the cfg's training batch (64 for yolov3: gigabytes)."""
    override = {"batch": 1, "subdivisions": 1, "width": width, "height": height}
    out, in_net, done = [], False, False
    with open(cfg, encoding="utf-8-sig") as f:
        for line in f:
            s = line.strip()
            if s.startswith("["):
                in_net = s.lower() in ("[net]", "[network]") and not done
                out.append(line if line.endswith("\n") else line + "\n")
                if in_net:
                    out.extend(f"{k}={v}\n" for k, v in override.items())
                    done = True
                continue
            key = s.split("=", 1)[0].strip().lower()
            if in_net and "=" in s and key in override:
                continue
            out.append(line)
    with open(out_path, "w", encoding="utf-8") as f:
        f.writelines(out)


def _load_library():
    lib = ctypes.CDLL(LIB_PATH)
    net_p = ctypes.POINTER(_NetworkHead)
    lib.load_network.restype = net_p
    lib.load_network.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
    lib.network_predict.restype = ctypes.POINTER(ctypes.c_float)
    lib.network_predict.argtypes = [net_p, ctypes.POINTER(ctypes.c_float)]
    lib.get_network_boxes.restype = ctypes.POINTER(_Detection)
    lib.get_network_boxes.argtypes = [net_p, ctypes.c_int, ctypes.c_int, ctypes.c_float, ctypes.c_float,
                                      ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.do_nms_sort.argtypes = [ctypes.POINTER(_Detection), ctypes.c_int, ctypes.c_int, ctypes.c_float]
    lib.free_detections.argtypes = [ctypes.POINTER(_Detection), ctypes.c_int]
    return lib


def _yolo_outputs(net):
    """Copies of every [yolo] and [region] layer's output (out_c, out_h, out_w), and the class count."""
    outs, classes = [], 0
    for i in range(net.contents.n):
        layer = net.contents.layers[i]
        if layer.type not in (YOLO, REGION):
            continue
        shape = (layer.out_c, layer.out_h, layer.out_w)
        if layer.outputs != int(np.prod(shape)) or layer.out_c != layer.n * (layer.classes + 5):
            sys.exit(f"layer {i}: the head fields read do not fit together ({layer.outputs} outputs, shape "
                     f"{shape}, n={layer.n}, classes={layer.classes}); darknet.h does not match this libdarknet")
        outs.append(np.ctypeslib.as_array(layer.output, shape=(layer.outputs,)).reshape(shape).copy())
        classes = layer.classes
    return outs, classes


def _detections(lib, net, w, h, classes, thresh, nms):
    """Darknet's candidate boxes (objectness > thresh), after do_nms_sort when nms > 0."""
    num = ctypes.c_int(0)
    dets = lib.get_network_boxes(net, w, h, thresh, 0.5, None, 1, ctypes.byref(num))
    if nms > 0:
        lib.do_nms_sort(dets, num.value, classes, nms)
    boxes = np.zeros((num.value, 4), np.float32)
    obj = np.zeros(num.value, np.float32)
    probs = np.zeros((num.value, classes), np.float32)
    for k in range(num.value):
        d = dets[k]
        boxes[k] = (d.bbox.x, d.bbox.y, d.bbox.w, d.bbox.h)
        obj[k] = d.objectness
        probs[k] = np.ctypeslib.as_array(d.prob, shape=(classes,))
    lib.free_detections(dets, num.value)
    return boxes, obj, probs


def _child(cfg, weights, folder, thresh, nms):
    xs = np.load(os.path.join(folder, "input.npy"))
    _, _, h, w = xs.shape
    cfg_copy = os.path.join(folder, "net.cfg")
    _single_image_cfg(cfg, cfg_copy, w, h)
    lib = _load_library()
    net = lib.load_network(cfg_copy.encode(), os.fspath(weights).encode(), 0)
    for k, x in enumerate(xs):
        x = np.ascontiguousarray(x)
        lib.network_predict(net, x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        outs, classes = _yolo_outputs(net)
        boxes, obj, probs = _detections(lib, net, w, h, classes, thresh, nms)
        np.savez(os.path.join(folder, f"result{k}.npz"), n_yolo=len(outs), boxes=boxes, objectness=obj, probs=probs,
                 **{f"yolo{j}": o for j, o in enumerate(outs)})


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
