"""Region Mutual Information loss (Zhao et al. 2019, the paper's ref. [42]; section 5.1: "RMI as the
primary loss function under default settings").

Per class, every position contributes the vector of its R×R neighbourhood (R = 3, d = 9) of labels Y
and of predicted probabilities P (sigmoid). With the covariances Σ_Y, Σ_P, Σ_YP over positions, the
lower bound of the mutual information I(Y; P) is maximised by minimising
    ½ log det(Σ_Y|P),   Σ_Y|P = Σ_Y − Σ_YP (Σ_P + εI)⁻¹ Σ_YPᵀ,
computed in float64 with a small diagonal term so singular matrices (a class absent from a crop, a
constant label) never crash. Both maps are first average-pooled (3×3, stride 3) as in the original
method. The total is λ·BCE + (1−λ)·RMI with λ = 0.5; pixels labelled ``ignore_index`` take no part.
Our choices where the paper is silent: covariances are normalised by the number of positions, and the
RMI term is averaged over the batch, divided by d and summed over classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 5e-4
PROB_CLIP = 1e-6


def _neighbourhoods(x: torch.Tensor, radius: int) -> torch.Tensor:
    """N×C×H×W -> N×C×d×L: each column one position's radius×radius window (d = radius²)."""
    n, c = x.shape[:2]
    cols = F.unfold(x, kernel_size=radius)  # N×(C·d)×L
    return cols.view(n, c, radius * radius, -1)


def log_det(mat: torch.Tensor) -> torch.Tensor:
    """log det of symmetric positive-definite matrices (…×d×d) through Cholesky."""
    chol = torch.linalg.cholesky(mat)
    return 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)


def rmi_lower_bound(probs: torch.Tensor, labels: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """½ log det Σ_Y|P per (sample, class): N×C, float64."""
    y = _neighbourhoods(labels.double(), radius)
    p = _neighbourhoods(probs.double(), radius)
    y = y - y.mean(-1, keepdim=True)
    p = p - p.mean(-1, keepdim=True)
    count = max(y.shape[-1], 1)
    eye = torch.eye(y.shape[-2], dtype=torch.float64, device=y.device)
    cov_y = y @ y.transpose(-1, -2) / count
    cov_p = p @ p.transpose(-1, -2) / count + EPS * eye
    cov_yp = y @ p.transpose(-1, -2) / count
    # Σ_YP Σ_P⁻¹ Σ_YPᵀ without forming the inverse
    chol = torch.linalg.cholesky(cov_p)
    cond = cov_y - cov_yp @ torch.cholesky_solve(cov_yp.transpose(-1, -2), chol)
    cond = 0.5 * (cond + cond.transpose(-1, -2))  # symmetrise away round-off
    return 0.5 * log_det(cond + EPS * eye)


def rmi_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255, radius: int = 3,
             pool: int = 3, bce_weight: float = 0.5) -> torch.Tensor:
    """logits N×C×H×W, target N×H×W (class index or ``ignore_index``) -> scalar loss."""
    n, c, h, w = logits.shape
    valid = (target != ignore_index).unsqueeze(1)  # N×1×H×W
    onehot = F.one_hot(torch.where(valid[:, 0], target, 0).long(), c).permute(0, 3, 1, 2).to(logits.dtype)
    onehot = onehot * valid
    bce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none") * valid
    bce = bce.sum() / (valid.sum() * c).clamp(min=1)
    probs = torch.sigmoid(logits) * valid + PROB_CLIP
    if pool > 1:
        probs, onehot = F.avg_pool2d(probs, pool, pool), F.avg_pool2d(onehot, pool, pool)
    if min(probs.shape[-2:]) < radius:  # too small for one neighbourhood: BCE alone
        return bce
    rmi = rmi_lower_bound(probs, onehot, radius).mean(0) / (radius * radius)  # C
    return bce_weight * bce + (1.0 - bce_weight) * rmi.sum().to(logits.dtype)
