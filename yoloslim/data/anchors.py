"""Anchors for a data set: k-means on the labelled box sizes, with 1 - IoU as the distance (Darknet's calc_anchors)."""
import numpy as np


def kmeans_anchors(wh, k, iters=100, seed=0):
    """``k`` anchors (w, h) sorted by area; centres move to the median of their boxes."""
    if len(wh) < k:
        raise ValueError(f"{len(wh)} boxes are too few for {k} anchors")
    rng = np.random.default_rng(seed)
    centres = wh[rng.choice(len(wh), k, replace=False)].astype(np.float64)
    for _ in range(iters):
        inter = np.minimum(wh[:, None], centres[None]).prod(2)
        iou = inter / (wh.prod(1)[:, None] + centres.prod(1)[None] - inter)
        nearest = iou.argmax(1)
        new = np.array([np.median(wh[nearest == j], 0) if (nearest == j).any() else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return centres[np.argsort(centres.prod(1))]
