"""Accuracy without labels: how well a pruned model agrees with the model it was pruned from.

The reference (unpruned) model's detections on a folder of images, at a deployment
confidence threshold, are taken as ground-truth boxes; the candidate's mAP@0.5 against them
is the agreement score. A model agrees with itself at exactly 1.0 (its detections above the
threshold are ranked first and match the reference boxes one to one), and the score falls as
the candidate's boxes move, change class or disappear. It says nothing about how good the
reference is: it measures what pruning changed, which is what a user without labels needs.
"""
from dataclasses import dataclass

import torch

from yoloslim.data.datasets import LoadImages
from yoloslim.eval.metrics import IOU_THRESHOLDS, match_predictions, non_max_suppression, summarize_detections

REFERENCE_CONF = 0.25   # a usual deployment threshold: boxes the reference would actually report
EVAL_CONF = 0.001       # the candidate is ranked over all its boxes, as for mAP against labels
NMS_IOU = 0.5


@dataclass
class Agreement:
    score: float             # mAP@0.5 of the candidate against the reference's boxes (nan: none)
    images: int
    reference_boxes: int     # reference detections at REFERENCE_CONF
    candidate_boxes: int     # candidate detections at the same threshold

    def line(self):
        score = "n/a (the reference found no objects)" if self.score != self.score else f"{self.score:.4f}"
        return (f"agreement mAP@0.5 {score} on {self.images} images: reference {self.reference_boxes} boxes, "
                f"candidate {self.candidate_boxes} boxes at conf {REFERENCE_CONF}")


def image_batches(folder, img_size, batch_size=16):
    """Letterboxed image tensors of a folder (or file, or glob), in batches."""
    batch = []
    for _, img, _ in LoadImages(folder, img_size):
        batch.append(img)
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


@torch.no_grad()
def detect(model, imgs, conf_thres):
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        io, _ = model(imgs.to(device))
    finally:
        model.train(was_training)
    return [d.cpu() for d in non_max_suppression(io.float(), conf_thres=conf_thres, iou_thres=NMS_IOU)]


def agreement(reference, candidate, folder, img_size, batch_size=16):
    """Agreement of ``candidate`` with ``reference`` on the images in ``folder``."""
    return agreement_on_batches(reference, candidate, image_batches(folder, img_size, batch_size))


def agreement_on_batches(reference, candidate, batches):
    """Agreement on image tensors already loaded (a prune ratio search scores many candidates)."""
    if reference.nc != candidate.nc:
        raise ValueError(f"the reference has {reference.nc} classes and the candidate {candidate.nc}")
    stats, n_img, n_ref, n_cand = [], 0, 0, 0
    for imgs in batches:
        refs = detect(reference, imgs, REFERENCE_CONF)
        cands = detect(candidate, imgs, EVAL_CONF)
        for ref, cand in zip(refs, cands):
            n_img += 1
            n_ref += len(ref)
            n_cand += int((cand[:, 4] > REFERENCE_CONF).sum())
            if len(ref) == 0 and len(cand) == 0:
                continue
            correct = match_predictions(cand[:, :4], cand[:, 5], ref[:, :4], ref[:, 5], IOU_THRESHOLDS)
            stats.append((correct, cand[:, 4], cand[:, 5], ref[:, 5]))
    score = float(summarize_detections(stats, candidate.nc)["mAP50"]) if n_ref else float("nan")
    return Agreement(score, n_img, n_ref, n_cand)
