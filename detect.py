"""Run a Darknet model on images and save annotated copies plus the detections.

    python detect.py --cfg weights/coco-tiny/yolov3-tiny.cfg --weights weights/coco-tiny/yolov3-tiny.weights \\
        --names weights/coco-tiny/coco.names --source photos/ --out runs/detect
    python detect.py --weights pruned.pt --source 'photos/*.jpg'            # cfg travels inside our .pt
    python detect.py --cfg X.cfg --weights X.weights --source img.jpg --backend opencv

For every image the output folder gets the annotated image (same file name) and
``<name>.json`` with its detections; ``detections.txt`` lists all of them, one per line:
``image<TAB>class<TAB>name<TAB>confidence<TAB>x1<TAB>y1<TAB>x2<TAB>y2`` in original-image pixels.
Inputs are never overwritten: an --out that holds any input image is refused.
"""
if __name__ == "__main__":   # first, before torch loads: a Ctrl-C while importing is one line, exit 130
    from yoloslim.interrupt import exit_quietly_on_ctrl_c
    exit_quietly_on_ctrl_c()
import json
import os
import sys

import cv2
import numpy as np
import torch

from yoloslim.darknet.load import load_any, net_width
from yoloslim.data.datasets import LoadImages, check_image_file, letterbox, make_divisible, read_image, to_tensor
from yoloslim.errors import SlimError, WeightsError, cli_main
from yoloslim.cli import checks
from yoloslim.io import atomic_write, is_torch_file, refuse_overwrite
from yoloslim.owned import check_claimable, has_any
from yoloslim.eval.metrics import non_max_suppression, scale_coords


# ----------------------------------------------------------------------------- inference
def load_detector(cfg, weights, img_size=416, backend="torch"):
    """An eval-mode Darknet model (torch backend) or a cv2.dnn net (opencv backend)."""
    if backend == "opencv":
        if not cfg or is_torch_file(weights):
            raise SlimError(f"{weights}: the opencv backend needs a Darknet --cfg and .weights pair; "
                            f"write one with convert.py")
        from yoloslim.deploy.opencv_dnn import read_net
        return read_net(cfg, weights)
    return load_any(cfg, weights, img_size).eval()


def predict(model_or_net, img):
    """(1, N, 5+nc) decoded outputs for one letterboxed BGR image: xywh pixels, sigmoid obj/cls."""
    x = to_tensor(img)[None]
    if isinstance(model_or_net, torch.nn.Module):
        with torch.inference_mode():
            return model_or_net(x)[0]
    return opencv_predict(model_or_net, x.numpy(), img.shape[:2])


def opencv_predict(net, blob, hw):
    """OpenCV's yolo rows (xywh normalized, obj, obj*cls) turned into our decoded layout."""
    from yoloslim.deploy.opencv_dnn import opencv_forward
    rows = np.concatenate(opencv_forward(net, blob), 0).astype(np.float32)
    h, w = hw
    rows[:, [0, 2]] *= w
    rows[:, [1, 3]] *= h
    obj = rows[:, 4:5]
    # OpenCV reports obj*cls; NMS multiplies by obj again, so divide it back out
    rows[:, 5:] = np.divide(rows[:, 5:], obj, out=np.zeros_like(rows[:, 5:]), where=obj > 0)
    return torch.from_numpy(rows)[None]


def detect_image(model_or_net, img_bgr, img_size=416, conf_thres=0.25, iou_thres=0.45, non_finite=None):
    """Detections in one BGR image: a list of (cls, conf, x1, y1, x2, y2) in original pixels,
    highest confidence first. When the outputs hold NaN/Inf and ``non_finite`` is a list, the
    image's shape is appended to it (NMS silently drops such rows, so the caller must warn)."""
    img, ratio, pad = letterbox(img_bgr, img_size)
    pred = predict(model_or_net, img)
    if non_finite is not None and not bool(torch.isfinite(pred).all()):
        non_finite.append(img_bgr.shape)
    det = non_max_suppression(pred, conf_thres, iou_thres)[0].clone()
    if len(det):
        det[:, :4] = scale_coords(img.shape, det[:, :4], img_bgr.shape, (ratio, pad))
    return [(int(c), float(conf), float(x1), float(y1), float(x2), float(y2))
            for x1, y1, x2, y2, conf, c in det.tolist()]


# ----------------------------------------------------------------------------- output
def class_name(names, cls):
    return names[cls] if names and 0 <= cls < len(names) else str(cls)


def class_color(cls):
    """A fixed, well-spread BGR colour per class, so a class looks the same in every image."""
    hue = (cls * 47) % 180
    hsv = np.uint8([[[hue, 200, 255]]])
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def draw_detections(img, detections, names):
    """A copy of ``img`` with a labelled box per detection."""
    out = img.copy()
    thickness = max(1, round(sum(img.shape[:2]) / 600))
    for cls, conf, x1, y1, x2, y2 in detections:
        color = class_color(cls)
        p1, p2 = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
        cv2.rectangle(out, p1, p2, color, thickness, cv2.LINE_AA)
        label = f"{class_name(names, cls)} {conf:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, thickness / 3, max(1, thickness - 1))
        top = p1[1] - th - base if p1[1] - th - base >= 0 else p1[1]  # keep the label inside the image
        cv2.rectangle(out, (p1[0], top), (p1[0] + tw, top + th + base), color, -1)
        cv2.putText(out, label, (p1[0], top + th), cv2.FONT_HERSHEY_SIMPLEX, thickness / 3, (0, 0, 0),
                    max(1, thickness - 1), cv2.LINE_AA)
    return out


def detections_record(path, img, detections, names):
    return {"image": path, "width": int(img.shape[1]), "height": int(img.shape[0]),
            "detections": [{"class": cls, "name": class_name(names, cls), "confidence": round(conf, 5),
                            "box": [round(v, 2) for v in box]} for cls, conf, *box in detections]}


def write_image(path, img):
    ok, buf = cv2.imencode(os.path.splitext(path)[1] or ".jpg", img)
    if not ok:
        raise SlimError(f"{path}: OpenCV cannot encode this image format; use .jpg or .png inputs")
    with atomic_write(path, "wb") as f:
        f.write(buf.tobytes())


def output_names(files):
    """A distinct output base name per input (a glob may hold equal names from different folders)."""
    used, names = set(), []
    for f in files:
        stem, ext = os.path.splitext(os.path.basename(f))
        name, k = stem, 1
        while name.lower() in used:
            name, k = f"{stem}_{k}", k + 1
        used.add(name.lower())
        names.append((name, ext))
    return names


def check_out_folder(out, files):
    """Refuse an output folder that holds an input image: annotated copies would replace them."""
    real_out = os.path.realpath(out)
    for f in files:
        if os.path.dirname(os.path.realpath(f)) == real_out:
            raise SlimError(f"{out}: holds the input image {f}; choose another --out so inputs are never overwritten")


# ----------------------------------------------------------------------------- command line
def validate_inputs(args, img_size):
    """Every input checked before a model is built or a file written; returns (names, images)."""
    names = checks.check_names(args.names) if args.names else None
    if args.cfg:
        defs = checks.check_cfg(args.cfg)
        if names is not None:   # both backends: OpenCV would label with the wrong names silently
            checks.check_classes(checks.cfg_classes(defs), None, None, names, args.names)
    elif not is_torch_file(args.weights):
        raise WeightsError(f"{args.weights}: a Darknet weights file needs its --cfg (only our checkpoints carry one)")
    if args.backend == "opencv" and (not args.cfg or is_torch_file(args.weights)):
        raise SlimError(f"{args.weights}: the opencv backend needs a Darknet --cfg and .weights pair; "
                        f"write one with convert.py")
    images = LoadImages(args.source, img_size)
    for f in images.files:   # an unreadable image found half-way would leave half the outputs written
        check_image_file(f, args.source)
    check_out_folder(args.out, images.files)
    check_claimable(args.out, "--out", legacy=has_any("detections.txt"))   # ours: an earlier detect.py's
    return names, images


def run(args):
    img_size = make_divisible(args.img_size) if args.img_size else net_width(args.cfg, args.weights)
    names, images = validate_inputs(args, img_size)
    detector = load_detector(args.cfg, args.weights, img_size, args.backend)
    if names and isinstance(detector, torch.nn.Module) and len(names) != detector.nc:
        raise SlimError(f"{args.names}: {len(names)} names but the model has {detector.nc} classes; pass its .names")
    from tqdm import tqdm
    lines, total, non_finite = [], 0, []
    for path, (stem, ext) in tqdm(list(zip(images.files, output_names(images.files))), desc="detect", unit="img"):
        img = read_image(path)
        dets = detect_image(detector, img, img_size, args.conf_thres, args.iou_thres, non_finite)
        out_img = os.path.join(args.out, stem + ext)
        out_json = os.path.join(args.out, stem + ".json")
        refuse_overwrite(out_img, path)
        write_image(out_img, draw_detections(img, dets, names))
        with atomic_write(out_json, "w") as f:
            json.dump(detections_record(path, img, dets, names), f, indent=1)
        for cls, conf, x1, y1, x2, y2 in dets:
            lines.append("\t".join([path, str(cls), class_name(names, cls), f"{conf:.5f}",
                                    *(f"{v:.2f}" for v in (x1, y1, x2, y2))]))
        total += len(dets)
    with atomic_write(os.path.join(args.out, "detections.txt"), "w") as f:
        f.write("".join(line + "\n" for line in lines))
    if non_finite:
        print(f"warning: the model's outputs hold NaN or Inf on {len(non_finite)} of {len(images.files)} images "
              f"(first: {non_finite[0]}); its detections there are missing or wrong: check the weights",
              file=sys.stderr)
    print(f"{total} detections in {len(images.files)} images -> {args.out}")
    return lines


def parse_args(argv=None):
    p = checks.parser("Detect objects with a Darknet model; save annotated images "
                      "and detections (.json per image, detections.txt for all).", prog="detect.py",
                      show_defaults=False)
    p.add_argument("--cfg", default=None, type=checks.input_file,
                   help="Darknet .cfg (optional with our checkpoint, which carries its cfg)")
    p.add_argument("--weights", required=True, type=checks.input_file, help="Darknet .weights or our checkpoint")
    p.add_argument("--source", required=True, help="an image, a folder of images or a glob pattern")
    p.add_argument("--names", default=None, type=checks.input_file,
                   help=".names file for class labels (default: class numbers)")
    checks.add_img_size(p)
    p.add_argument("--conf-thres", type=checks.fraction, default=0.25,
                   help="minimum obj*class confidence, in [0, 1] (default 0.25)")
    p.add_argument("--iou-thres", type=checks.fraction, default=0.45, help="NMS IoU threshold, in [0, 1] (default 0.45)")
    p.add_argument("--out", default=os.path.join("runs", "detect"), type=checks.output_dir,
                   help="output folder (default runs/detect)")
    p.add_argument("--backend", choices=("torch", "opencv"), default="torch",
                   help="torch (our model) or opencv (cv2.dnn's Darknet importer, .weights only)")
    return p.parse_args(argv)


def main(argv=None):
    return run(parse_args(argv))


if __name__ == "__main__":
    cli_main(main)
