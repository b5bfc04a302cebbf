"""Anomaly-detection metrics as anomalib 2.x computes them, in numpy: image AUROC, pixel AUROC and AUPRO.

- AUROC: the area under the ROC curve with a threshold at every distinct score (torchmetrics' binary_roc, as
  anomalib's AUROC uses it; sklearn's roc_auc_score gives the same number). Pixel AUROC pools every pixel of
  every image, normal images' too.
- AUPRO (anomalib.metrics.AUPRO, fpr_limit 0.3): the ground-truth masks' connected components (8-connected,
  as OpenCV's connectedComponents labels them, each image's apart) are the regions. Pixels are sorted by
  score, descending; at each distinct score, FPR = the share of all background pixels (every image's) at or
  above it, and PRO = the mean over regions of the share of the region's pixels at or above it. The curve
  starts at (0, 0), is cut at FPR = 0.3 (the PRO there linearly interpolated), integrated by trapezoids and
  divided by its last FPR (0.3).
bench/peers/anomalib_draem.py cross-checks `aupro` against anomalib's own AUPRO on a fixture in its venv.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score, roc_curve

FPR_LIMIT = 0.3


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC of image scores (N,) against 0/1 labels (N,)."""
    return float(roc_auc_score(np.asarray(labels, bool), np.asarray(scores, np.float64)))


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """AUROC over every pixel of maps (N, H, W) against ground-truth masks (N, H, W)."""
    return float(roc_auc_score(np.asarray(masks, bool).ravel(), np.asarray(maps, np.float64).ravel()))


def roc(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of the ROC curve, for plots."""
    fpr, tpr, _ = roc_curve(np.asarray(labels, bool).ravel(), np.asarray(scores, np.float64).ravel())
    return fpr, tpr


def regions(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) int labels of the masks' 8-connected components, numbered across images from 1 (0: none)."""
    out = np.zeros(masks.shape, np.int64)
    offset = 0
    for i, m in enumerate(np.asarray(masks, bool)):
        lab, n = ndimage.label(m, structure=np.ones((3, 3), bool))
        out[i] = np.where(lab > 0, lab + offset, 0)
        offset += n
    return out


def pro_curve(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = FPR_LIMIT
              ) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro), cut at fpr_limit: see the module docstring."""
    labels = regions(masks).ravel()
    preds = np.asarray(maps, np.float64).ravel()
    background = labels == 0
    n_bg = int(background.sum())
    n_regions = int(labels.max())
    if n_bg == 0 or n_regions == 0:
        return np.array([0.0, fpr_limit]), np.array([0.0, 0.0])
    sizes = np.bincount(labels, minlength=n_regions + 1).astype(np.float64)
    pro_step = np.where(background, 0.0, 1.0 / sizes[labels])
    order = np.argsort(-preds, kind="stable")
    p = preds[order]
    fpr = np.minimum(np.cumsum(background[order]) / n_bg, 1.0)
    pro = np.minimum(np.cumsum(pro_step[order]) / n_regions, 1.0)
    keep = np.ones(len(p), bool)
    keep[:-1] = p[:-1] != p[1:]  # one point per distinct score: after all its pixels
    fpr, pro = np.concatenate([[0.0], fpr[keep]]), np.concatenate([[0.0], pro[keep]])
    i = int(np.nonzero(fpr <= fpr_limit)[0][-1])
    if fpr[i] < fpr_limit and i + 1 < len(fpr):
        f1, f2, p1, p2 = fpr[i], fpr[i + 1], pro[i], pro[i + 1]
        lim = p1 + (p2 - p1) * (fpr_limit - f1) / (f2 - f1)
        return np.append(fpr[:i + 1], fpr_limit), np.append(pro[:i + 1], lim)
    return fpr[:i + 1], pro[:i + 1]


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = FPR_LIMIT) -> float:
    """The area under the PRO curve up to fpr_limit, divided by it (anomalib's AUPRO)."""
    fpr, pro = pro_curve(masks, maps, fpr_limit)
    return float(np.trapezoid(pro, fpr) / fpr[-1])


def all_metrics(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray, maps: np.ndarray
                ) -> dict[str, float]:
    """image_auroc, pixel_auroc and aupro of one method on one test set."""
    return {"image_auroc": image_auroc(labels, scores), "pixel_auroc": pixel_auroc(masks, maps),
            "aupro": aupro(masks, maps)}
