"""Cross entropy plus J-regularization (Guerrero-Pena et al., "J regularization improves imbalanced
multiclass segmentation", ISBI 2020): a per-image term rewarding high mean probability on each class's own
pixels together with low mean probability on every other class's pixels."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from celltune.data_prep.common import UserInputError
from celltune.trainables.losses.base import LossOutput
from celltune.trainables.losses.loss_registry import register_loss
from celltune.trainables.losses.weighted_ce import DEFAULT_CLASS_WEIGHTS, WeightedCrossEntropy, class_weighted_ce


def j_regularization_per_image(
    probs: Tensor, target: Tensor, lambdas: Tensor, valid: Tensor | None = None, eps: float = 1e-7
) -> Tensor:
    """Per-image J-regularization L_J.

    With Omega_i the (valid) pixels of class i: alpha_i = mean of p_i over Omega_i, beta_ik = mean of (1 - p_i)
    over Omega_k, and L_J = -sum over i, k != i of lambda_ik * log(max((alpha_i + beta_ik) / 2, eps)). Pairs
    with a class absent from the image are skipped. A perfect prediction gives exactly 0, the minimum.

    Args:
        probs: softmax probabilities ``(B, C, H, W)``.
        target: class ids ``(B, H, W)``.
        lambdas: scalar or ``(C, C)`` pair weights lambda_ik (the diagonal is ignored).
        valid: optional ``(B, H, W)`` float mask of the pixels that count.
        eps: floor inside the log, so a confidently wrong image gives a large finite value, not inf.

    Returns:
        ``(B,)`` L_J of each image.
    """
    batch, classes = probs.shape[:2]
    p = probs.flatten(2)  # (B, C, N)
    members = F.one_hot(target.long().flatten(1), classes).transpose(1, 2).to(p.dtype)  # (B, C, N)
    if valid is not None:
        members = members * valid.flatten(1).unsqueeze(1)
    counts = members.sum(-1)  # (B, C)
    sums = p @ members.transpose(1, 2)  # (B, i, k): sum of p_i over Omega_k
    safe = counts.clamp_min(1.0)
    alpha = sums.diagonal(dim1=1, dim2=2) / safe  # (B, C)
    beta = 1.0 - sums / safe.unsqueeze(1)  # (B, i, k)
    present = counts > 0
    off_diagonal = ~torch.eye(classes, dtype=torch.bool, device=p.device)
    pairs = present.unsqueeze(2) & present.unsqueeze(1) & off_diagonal
    log_terms = torch.log(((alpha.unsqueeze(2) + beta) / 2).clamp_min(eps))
    return -(lambdas.to(p.device) * pairs * log_terms).sum(dim=(1, 2))


@register_loss("ce_j", target_kind="tertiary")
class CrossEntropyJ(WeightedCrossEntropy):
    """Class-weighted cross entropy + ``j_weight`` * J-regularization.

    Normalization: the J term is the mean over the images of the batch of each image's L_J, so with the
    defaults (lambda 0.5, j_weight 0.05) total = CE + 0.05 * sum_b L_J / B, the one public setting, and the
    scale does not change with batch size. The CE part is the ``"ce"`` loss (class-weighted mean).

    Args:
        class_weights: CE weight per class, default (1, 10, 5) for (background, boundary, cell).
        j_weight: w_J, factor of the J term in the total (>= 0).
        j_lambda: lambda_ik, one number for every pair or a C x C nested sequence (diagonal ignored).
        eps: floor inside the J term's log.
        margin: pixels cropped off each side before the loss.

    Inputs: logits ``(B, C, H, W)``, target ``(B, H, W)`` integer class ids.
    Terms: ``{"ce": ..., "j": ...}`` (j unweighted).
    """

    def __init__(
        self,
        *,
        class_weights: Sequence[float] = DEFAULT_CLASS_WEIGHTS,
        j_weight: float = 0.05,
        j_lambda: float | Sequence[Sequence[float]] = 0.5,
        eps: float = 1e-7,
        margin: int = 0,
    ) -> None:
        super().__init__(class_weights=class_weights, margin=margin)
        if not _finite_non_negative(j_weight):
            raise UserInputError(f"loss {self.name!r}: j_weight={j_weight!r} must be a finite number >= 0")
        if not _finite_non_negative(eps) or not 0.0 < eps < 1.0:
            raise UserInputError(f"loss {self.name!r}: eps={eps!r} must be in (0, 1)")
        self.j_weight = float(j_weight)
        self.eps = float(eps)
        self.register_buffer("j_lambda", self._lambda_tensor(j_lambda), persistent=False)

    def _lambda_tensor(self, j_lambda: object) -> Tensor:
        classes = self.class_weights.numel()
        if isinstance(j_lambda, int | float) and not isinstance(j_lambda, bool):
            if not _finite_non_negative(j_lambda):
                raise UserInputError(f"loss {self.name!r}: j_lambda={j_lambda!r} must be a finite number >= 0")
            return torch.tensor(float(j_lambda))
        try:
            matrix = torch.tensor(j_lambda, dtype=torch.float32)
        except (TypeError, ValueError):
            matrix = None
        if matrix is None or tuple(matrix.shape) != (classes, classes):
            raise UserInputError(
                f"loss {self.name!r}: j_lambda={j_lambda!r} must be a number or a {classes}x{classes} matrix"
            )
        if not bool(torch.isfinite(matrix).all()) or bool((matrix < 0).any()):
            raise UserInputError(f"loss {self.name!r}: j_lambda={j_lambda!r} must be finite and >= 0")
        return matrix

    def _compute(
        self, logits: Tensor, target: Tensor, weight: Tensor | None, valid: Tensor | None, epoch: float | None
    ) -> LossOutput:
        self._check(logits, target)
        ce = class_weighted_ce(logits, target, self.class_weights, valid)
        j = j_regularization_per_image(logits.softmax(dim=1), target, self.j_lambda, valid, self.eps).mean()
        return LossOutput(total=ce + self.j_weight * j, terms={"ce": ce, "j": j})

    def extra_repr(self) -> str:
        lam = self.j_lambda.tolist()
        return f"{super().extra_repr()}, j_weight={self.j_weight}, j_lambda={lam}, eps={self.eps}"


def _finite_non_negative(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
