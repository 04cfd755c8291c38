"""Region Mutual Information loss (Zhao et al., NeurIPS 2019, the paper's ref. [42]; section 5.1: "RMI as
the primary loss function under default settings").

Per class, every position of a (downsampled) map contributes the vector of its R×R neighbourhood
(R = 3, d = R² = 9) of one-hot labels Y and of sigmoid probabilities P. With the centred scatter
matrices S_Y, S_P, S_YP over those positions, the lower bound of I(Y; P) is maximised by minimising
    ½ log det(S_Y|P + εI),   S_Y|P = S_Y − S_YP (S_P + εI)⁻¹ S_YPᵀ.
The total is λ·BCE + (1 − λ)·RMI with λ = 0.5.

What the references do, point by point. "ZJU" is the RMI authors' code, github.com/ZJULearning/RMI
(``losses/rmi/rmi.py``, ``losses/rmi/rmi_utils.py``, defaults in ``parser_params.py`` and
``script/train.sh``); "NVIDIA" is the HMSA authors' copy, github.com/NVIDIA/semantic-segmentation
(``loss/rmi.py``, ``loss/rmi_utils.py``, built in ``loss/utils.py::get_loss`` with only ``num_classes``
and ``ignore_index``, so its constructor defaults are the ones HMSA trained with).

1. BCE part. Both: sigmoid BCE against the one-hot labels, each element weighted by the pixel's
   validity mask (label < number of classes), summed over pixels *and* classes, divided by
   (number of valid pixels + 1). Ours: the same (the ``+ 1`` also keeps an all-ignored batch at 0).
2. Normalisation. Both subtract the mean over positions but do not divide the scatter matrices by
   the number of positions (a comment says this avoids underflow); ε is therefore tiny next to
   the matrices' entries. log det(c·A) = d·log c + log det A, so normalising only shifts the loss by
   a constant, apart from how ε enters. Ours: unnormalised, as the references.
3. Pooling before RMI (applied to both the one-hot labels and the probabilities). NVIDIA: average
   pooling, size = stride = 4, padding = size // 2 = 2 (zero padding counted in the average, PyTorch's
   default). ZJU: ``script/train.sh`` trains with the same (avg, 4, 4); ``parser_params.py`` defaults to
   avg with size 2 and the class signature to max with size 3 — both unused by the published runs.
   ZJU/NVIDIA also offer max pooling and interpolation (nearest for labels, bilinear with aligned
   corners for probabilities, to H // s × W // s). Ours: ``pool=4``, ``pool_way="avg"`` with the same
   padding; "max" and "interpolate" are available.
4. The rest.
   - ε (``_POS_ALPHA``) = 5e-4, added twice: to S_P before its inverse, and to S_Y|P before the log det.
     Ours: the same (``EPS``).
   - Probabilities: sigmoid, multiplied by the validity mask, then ``+ _CLIP_MIN`` (1e-6) — added,
     not clamped (``forward_sigmoid``, the path ``forward`` takes; the unused softmax variant clamps).
     Labels: one-hot, zeroed at invalid pixels. Ours: the same (``PROB_CLIP``).
   - Reduction: ½ log det per (sample, class), mean over the batch, divided by half_d = R², summed over
     classes (``_IS_SUM = 1``). Ours: the same.
   - λ: ``loss_weight_lambda = 0.5`` and ``lambda_way = 1``: λ·BCE + (1 − λ)·RMI; ``lambda_way = 0``
     gives BCE + λ·RMI. Ours: ``weight_lambda = 0.5``, ``convex=True`` / ``False`` for the two ways.
   - Radius 3; neighbourhoods are the (H − R + 1)·(W − R + 1) "valid" windows (no padding).
   - A map too small for one neighbourhood: the references do not check; their window slicing then
     yields no positions or tensors of mismatched shape (an error). Ours: the RMI term is taken as 0
     (no neighbourhood, no information), so the loss is the BCE part alone, λ-weighted as usual.

Deliberate deviations, numerically equivalent or only relevant where the references fail:
   - (S_P + εI)⁻¹ S_YPᵀ by a Cholesky solve instead of an explicit ``torch.inverse``.
   - The log det by Cholesky as in the references, but without their ``+ 1e-8`` on the Cholesky
     diagonal before the log: that diagonal is ≥ √ε ≈ 0.022, so the term changes the loss by < 1e-6
     relative; leaving it out makes ours an exact log det, testable against ``numpy.linalg.slogdet``.
   - S_Y|P is symmetrised before the factorisation and, should round-off still leave it not positive
     definite (only for very large maps), the diagonal term is raised by factors of 10 until it
     factorises, where the references would raise.
   - Validity is ``0 <= label < C`` and ``label != ignore_index`` (the references test ``label < C``
     only; the same for the usual ignore value 255).
   - Covariances are float64 as in the references; pooling happens in the logits' dtype (float32 in
     the references as well).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 5e-4  # ε, the references' _POS_ALPHA
PROB_CLIP = 1e-6  # the references' _CLIP_MIN, added to the masked probabilities
POOL_WAYS = ("avg", "max", "interpolate")


def _neighbourhoods(x: torch.Tensor, radius: int) -> torch.Tensor:
    """N×C×H×W -> N×C×d×L: each column one position's radius×radius window (d = radius²)."""
    n, c = x.shape[:2]
    cols = F.unfold(x, kernel_size=radius)  # N×(C·d)×L
    return cols.view(n, c, radius * radius, -1)


def _pooled_size(size: int, pool: int, way: str) -> int:
    if pool <= 1:
        return size
    if way == "interpolate":
        return size // pool
    return (size + 2 * (pool // 2) - pool) // pool + 1


def _downsample(labels: torch.Tensor, probs: torch.Tensor, pool: int,
                way: str) -> tuple[torch.Tensor, torch.Tensor]:
    if pool <= 1:
        return labels, probs
    if way == "avg":
        return (F.avg_pool2d(labels, pool, pool, pool // 2), F.avg_pool2d(probs, pool, pool, pool // 2))
    if way == "max":
        return (F.max_pool2d(labels, pool, pool, pool // 2), F.max_pool2d(probs, pool, pool, pool // 2))
    size = (labels.shape[-2] // pool, labels.shape[-1] // pool)
    return (F.interpolate(labels, size=size, mode="nearest"),
            F.interpolate(probs, size=size, mode="bilinear", align_corners=True))


def log_det(mat: torch.Tensor) -> torch.Tensor:
    """log det of symmetric positive-definite matrices (…×d×d) through Cholesky."""
    chol = torch.linalg.cholesky(mat)
    return 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)


def _log_det_floored(mat: torch.Tensor, eps: float) -> torch.Tensor:
    """log det(mat + eps·I); eps grows tenfold (up to 6 times) only if round-off defeats Cholesky."""
    eye = torch.eye(mat.shape[-1], dtype=mat.dtype, device=mat.device)
    for _ in range(7):
        if not torch.linalg.cholesky_ex(mat.detach() + eps * eye).info.any():
            break
        eps *= 10.0
    return log_det(mat + eps * eye)


def rmi_lower_bound(probs: torch.Tensor, labels: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """½ log det(S_Y|P + εI) per (sample, class), unnormalised scatter matrices: N×C, float64."""
    y = _neighbourhoods(labels.double(), radius)
    p = _neighbourhoods(probs.double(), radius)
    y = y - y.mean(-1, keepdim=True)
    p = p - p.mean(-1, keepdim=True)
    eye = torch.eye(y.shape[-2], dtype=torch.float64, device=y.device)
    s_y = y @ y.transpose(-1, -2)
    s_p = p @ p.transpose(-1, -2) + EPS * eye
    s_yp = y @ p.transpose(-1, -2)
    # S_YP (S_P + εI)⁻¹ S_YPᵀ without forming the inverse
    chol = torch.linalg.cholesky(s_p)
    cond = s_y - s_yp @ torch.cholesky_solve(s_yp.transpose(-1, -2), chol)
    cond = 0.5 * (cond + cond.transpose(-1, -2))  # symmetrise away round-off
    return 0.5 * _log_det_floored(cond, EPS)


def rmi_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255, radius: int = 3,
             pool: int = 4, pool_way: str = "avg", weight_lambda: float = 0.5,
             convex: bool = True) -> torch.Tensor:
    """logits N×C×H×W, target N×H×W (class index or ``ignore_index``) -> scalar loss.

    ``convex``: λ·BCE + (1 − λ)·RMI (the references' default ``lambda_way = 1``), else BCE + λ·RMI.
    """
    if pool_way not in POOL_WAYS:
        raise ValueError(f"rmi_loss: pool_way must be one of {POOL_WAYS}, not {pool_way!r}")
    c = logits.shape[1]
    valid = (target != ignore_index) & (target >= 0) & (target < c)  # N×H×W
    mask = valid.unsqueeze(1).to(logits.dtype)  # N×1×H×W
    onehot = F.one_hot(torch.where(valid, target, 0).long(), c).permute(0, 3, 1, 2).to(logits.dtype)
    onehot = onehot * mask
    bce = F.binary_cross_entropy_with_logits(logits, onehot, weight=mask.expand_as(logits), reduction="sum")
    bce = bce / (valid.sum() + 1.0)
    bce_part = weight_lambda * bce if convex else bce
    rmi_weight = 1.0 - weight_lambda if convex else weight_lambda

    h, w = (_pooled_size(s, pool, pool_way) for s in logits.shape[-2:])
    if min(h, w) < radius:  # no neighbourhood fits: no RMI term
        return bce_part
    probs = torch.sigmoid(logits) * mask + PROB_CLIP
    onehot, probs = _downsample(onehot, probs, pool, pool_way)
    rmi = rmi_lower_bound(probs, onehot, radius).mean(0) / (radius * radius)  # C
    return bce_part + rmi_weight * rmi.sum().to(logits.dtype)
