"""What slim.py trains from, and why: the user's pair, the COCO yolov3-tiny, or a cfg from scratch.

The choice is made from the files, never from a layer index: the class count of the weights'
cfg against the data's decides whether the transfer stage runs, and the graph of the cfg
(shortcut layers or not, yoloslim/prune/graph.py) decides the pruning method and the sparsity mode.
Every choice is kept with its reason, for the console and the report.
"""
import os
from dataclasses import dataclass, field

from yoloslim.errors import WeightsError
from yoloslim.io import is_torch_file

# the pruning methods slim.py offers; sparsity training penalises the BNs of the same policy
METHODS = ("tiny", "shortcut", "normal", "regular-pow2", "regular-x8", "l1")


@dataclass
class StartingPoint:
    cfg: str                    # the cfg trained (derived for the data, under the run folder)
    weights: str = None         # what training starts from (None: from scratch)
    weights_cfg: str = None     # the cfg a Darknet .weights was trained with (train.py --weights-cfg)
    source_classes: int = None  # the weights' class count
    transfer: bool = True       # False: the weights already know the data's classes
    method: str = "tiny"        # the prune policy, and the one whose BNs sparsity training penalises
    choices: list = field(default_factory=list)   # "what: why" lines


def weights_cfg_text(cfg, weights):
    """(cfg path or None, parsed module_defs) describing the user's weights."""
    from yoloslim.darknet.cfg import parse_cfg_text, parse_model_cfg
    if cfg:
        return cfg, parse_model_cfg(cfg)
    if weights and is_torch_file(weights):
        from yoloslim.darknet.weights import load_checkpoint
        ckpt = load_checkpoint(weights)
        if isinstance(ckpt, dict) and isinstance(ckpt.get("cfg"), str):
            return None, parse_cfg_text(ckpt["cfg"], weights)
        raise WeightsError(f"{weights}: has no cfg inside; pass the --cfg it was trained with")
    raise WeightsError(f"{weights}: a Darknet .weights file needs the --cfg it was trained with")


def choose_method(defs, override=None):
    """(method, reason): shortcut pruning where the graph has shortcut layers, tiny otherwise."""
    if override:
        return override, "--method"
    from yoloslim.prune.graph import analyze
    groups = analyze(defs[1:]).shortcut_groups()
    if groups:
        return "shortcut", f"the graph has {len(groups)} shortcut group(s): convs meeting there share one mask"
    return "tiny", "the graph has no shortcut layers (routes, maxpools and upsamples only)"


def write_base_cfg(defs, out):
    """The user's cfg as text under the run folder (a .pt carries it inside): derive_for_data reads a path."""
    from yoloslim.darknet.cfg import write_model_cfg
    path = os.path.join(out, "your-model.cfg")
    write_model_cfg(defs, path)
    return path


def base_model(args, out):
    """(base cfg, origin text, cfg the .weights were trained with): what the data's cfg is derived from."""
    if args.weights:
        cfg_path, defs = weights_cfg_text(args.cfg, args.weights)
        return cfg_path or write_base_cfg(defs, out), f"your pair ({args.weights})", cfg_path
    if args.cfg or args.model == "narrow":
        return args.cfg or "cfg/yolov3-narrow.cfg", "from scratch", None
    from yoloslim.zoo.coco_tiny import fetch_tiny
    coco = fetch_tiny()
    args.weights = coco["weights"]
    return coco["cfg"], "the real COCO yolov3-tiny", coco["cfg"]


def derive_cfg_for(args, spec, out, base, same):
    """(cfg path, DerivedCfg, why the anchors): the demo's own cfg as is, else one derived for the data."""
    from yoloslim.darknet.load import check_cfg
    from yoloslim.pipeline.derive import derive_for_data
    from yoloslim.darknet.cfg import write_model_cfg
    if not args.data and not args.weights and (args.cfg or args.model == "narrow"):
        width = check_cfg(base)[0].get("width", 416)    # the built-in demo trains its cfg as it always did
        return base, derive_for_data(base, spec, width, keep_anchors=True), "the cfg's own"
    derived = derive_for_data(base, spec, args.img_size, keep_anchors=same)
    path = os.path.join(out, f"{os.path.splitext(os.path.basename(base))[0]}-{spec.nc}cls.cfg")
    write_model_cfg(derived.defs, path)
    why = ("the base cfg's, scaled to the input size (the heads were trained with them)" if same
           else "k-means (1 - IoU) on the training boxes")
    return path, derived, why


def choose_start(args, spec, out):
    """The StartingPoint for slim.py's arguments and the DataSet ``spec`` (writes cfgs into ``out`` only)."""
    from yoloslim.darknet.load import check_cfg
    from yoloslim.data.files import cfg_classes
    from yoloslim.pipeline.derive import anchors_text
    os.makedirs(out, exist_ok=True)
    base, origin, trained_cfg = base_model(args, out)
    source_classes = cfg_classes(check_cfg(base))
    same = args.weights is not None and source_classes == spec.nc
    path, derived, anchors_why = derive_cfg_for(args, spec, out, base, same)
    method, why = choose_method(derived.defs, getattr(args, "method_choice", None))
    start = StartingPoint(path, args.weights, None, source_classes, not same and args.weights is not None,
                          method)
    if args.weights and not is_torch_file(args.weights):
        start.weights_cfg = trained_cfg or base
    start.choices.append(f"starting point: {origin}" + (f", {source_classes} classes" if args.weights else ""))
    if args.weights is None:
        start.choices.append("transfer: none (no weights; trained from scratch)")
    elif same:
        start.choices.append(f"transfer: skipped, the weights were trained on {spec.nc} classes like the data; "
                             f"straight to sparsity training")
    else:
        start.choices.append(f"transfer: classes {source_classes} -> {spec.nc} (backbone loaded, "
                             f"[yolo]-feeding convs re-initialised)")
    start.choices.append(f"cfg: {path} (classes={spec.nc}, input {args.img_size}, anchors "
                         f"{anchors_text(derived.anchors)}: {anchors_why})")
    start.choices.append(f"method: {method} ({why}); sparsity on the BNs it prunes (--prune {method})")
    return start
