"""Attacks from torchattacks, white-box on the whole ensemble, plus member-to-member transfer.

torchattacks works on images in [0, 1] shaped (N, C, H, W) (APGD insists on 4-D), so inputs
here are box coordinates (see `data`) reshaped to (N, 1, 1, D), and `ImageShaped` flattens them
back before the model. All attacks are untargeted L∞ within ε:
- `fgsm`: one signed-gradient step of size ε;
- `pgd`: `steps` signed steps of 2.5·ε/steps from a uniform random start (Madry et al.);
- `apgd`: APGD-CE (Croce & Hein 2020, the step-size-free PGD of AutoAttack), one restart;
- `pgd_logits`: PGD against the members' *averaged logits*, then evaluated on the real
  ensemble (averaged probabilities). A transfer from a surrogate without saturating softmaxes:
  if it beats `pgd`, the ensemble's own gradients were masking, not defending.
`worst` is the per-example worst case over every attack run at that ε.

Transfer (`transfer_matrix`): PGD examples made on member i at ε, shown to member j. Entry
(i, j) is the fraction of test examples that member j misclassifies, among those that j
classifies correctly when clean and whose adversarial version does fool member i (the
diagonal: white-box success on i, among examples i gets right). `transfer_rate` is the mean
off-diagonal entry.
"""

from __future__ import annotations

import torch
from torch import nn

from .losses import first_order_transfer, mean_pairwise_cosine, norm_correlation
from .models import Ensemble

ATTACKS = ("fgsm", "pgd", "apgd", "pgd_logits")


class ImageShaped(nn.Module):
    """Accept (N, 1, 1, D) 'images' and hand (N, D) to the wrapped model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.flatten(1))


class AveragedLogits(nn.Module):
    """Surrogate: the mean of the members' logits."""

    def __init__(self, ensemble: Ensemble) -> None:
        super().__init__()
        self.ensemble = ensemble

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.ensemble.member_logits(u).mean(dim=0)


def eps_key(eps: float) -> str:
    return f"{eps:g}"


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(dim=-1)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict(model, x) == y).float().mean())


def _torchattack(name: str, model: nn.Module, eps: float, steps: int, seed: int):
    import torchattacks

    shaped = ImageShaped(model)
    if name == "fgsm":
        return torchattacks.FGSM(shaped, eps=eps)
    if name == "pgd":
        return torchattacks.PGD(shaped, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
    if name == "apgd":
        return torchattacks.APGD(shaped, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, loss="ce")
    raise ValueError(f"unknown attack {name!r}; use one of {', '.join(ATTACKS)}")


def adversarial(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
                seed: int) -> torch.Tensor:
    """Adversarial versions of x (N, D) made by attack `name` on `model`, deterministic given seed."""
    if name == "pgd_logits":
        if not isinstance(model, Ensemble):
            raise ValueError("pgd_logits needs an Ensemble")
        model, name = AveragedLogits(model), "pgd"
    torch.manual_seed(seed)  # PGD's random start draws from the global generator
    attack = _torchattack(name, model, eps, steps, seed)
    adv = attack(x.view(x.shape[0], 1, 1, -1), y)
    return adv.flatten(1).detach()


def robust_accuracy(ensemble: Ensemble, x: torch.Tensor, y: torch.Tensor, attacks: list[str], eps_list: list[float],
                    steps: int, seed: int) -> dict[str, dict[str, float]]:
    """{attack: {eps: accuracy}} for the ensemble under white-box attacks, plus `worst`."""
    out: dict[str, dict[str, float]] = {a: {} for a in attacks}
    out["worst"] = {}
    for eps in eps_list:
        survived = predict(ensemble, x) == y
        for name in attacks:
            ok = predict(ensemble, adversarial(name, ensemble, x, y, eps, steps, seed)) == y
            out[name][eps_key(eps)] = float(ok.float().mean())
            survived &= ok
        out["worst"][eps_key(eps)] = float(survived.float().mean())
    return out


def transfer_matrix(ensemble: Ensemble, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
                    seed: int) -> tuple[list[list[float | None]], float | None]:
    """(M × M matrix, mean off-diagonal) of PGD transfer between members (None for one member)."""
    members = list(ensemble.members)
    m = len(members)
    if m < 2:
        return [[None]], None
    clean_ok = torch.stack([predict(mem, x) == y for mem in members])  # (M, N)
    matrix: list[list[float | None]] = [[None] * m for _ in range(m)]
    for i, src in enumerate(members):
        adv = adversarial("pgd", src, x, y, eps, steps, seed + i)
        wrong = torch.stack([predict(mem, adv) != y for mem in members])  # (M, N)
        fooled_src = wrong[i] & clean_ok[i]
        for j in range(m):
            mask = clean_ok[j] if i == j else clean_ok[j] & fooled_src
            matrix[i][j] = float(wrong[j][mask].float().mean()) if mask.any() else None
    off = [matrix[i][j] for i in range(m) for j in range(m) if i != j and matrix[i][j] is not None]
    return matrix, (sum(off) / len(off) if off else None)


def gradient_stats(ensemble: Ensemble, x: torch.Tensor, y: torch.Tensor) -> dict[str, float | None]:
    """On clean examples: mean pairwise cosine of the members' CE input gradients, the
    across-example correlation of their norms, and the first-order transfer ratio
    (`losses.first_order_transfer`, the measure the tie-in uses). None for one member."""
    from .training import member_grads

    if len(ensemble.members) < 2:
        return {"gradient_cosine": None, "gradient_norm_correlation": None, "first_order_transfer": None}
    _, grads = member_grads(ensemble.members, x, y, create_graph=False)
    return {
        "gradient_cosine": float(mean_pairwise_cosine(grads)),
        "gradient_norm_correlation": float(norm_correlation(grads)),
        "first_order_transfer": float(first_order_transfer(grads)),
    }
