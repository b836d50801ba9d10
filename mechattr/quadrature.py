"""Quadrature rules on [0, 1]: where a path integral is sampled and how the samples are weighted.

Used by integrated gradients (fixed rules), EAP-IG in :mod:`mechattr.linking.patching` and any
method that integrates a gradient along a path. The names follow Captum's
``approximation_methods`` (Kokhlikyan et al. 2020): ``riemann_left``, ``riemann_right``,
``riemann_middle``, ``riemann_trapezoid``, ``gausslegendre``.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from .errors import MethodError

RULES = ("gausslegendre", "riemann_middle", "riemann_left", "riemann_right", "riemann_trapezoid")


def rule_points(n_steps: int, rule: str) -> tuple[Float[Tensor, " n"], Float[Tensor, " n"]]:
    """Interpolation coefficients alpha in [0, 1] and their quadrature weights (sum to 1)."""
    if rule in ("gausslegendre", "gauss_legendre", "gauss-legendre"):
        import numpy as np

        x, w = np.polynomial.legendre.leggauss(n_steps)
        return torch.tensor(0.5 * (x + 1), dtype=torch.float64), torch.tensor(0.5 * w, dtype=torch.float64)
    if rule in ("riemann_trapezoid", "trapezoid"):
        if n_steps < 2:
            raise MethodError("The trapezoid rule needs n_steps >= 2.")
        a = torch.linspace(0, 1, n_steps, dtype=torch.float64)
        w = torch.full((n_steps,), 1.0 / (n_steps - 1), dtype=torch.float64)
        w[0] = w[-1] = 0.5 / (n_steps - 1)
        return a, w
    k = torch.arange(n_steps, dtype=torch.float64)
    w = torch.full((n_steps,), 1.0 / n_steps, dtype=torch.float64)
    if rule in ("riemann_left", "left"):
        return k / n_steps, w
    if rule in ("riemann_right", "right"):
        return (k + 1) / n_steps, w
    if rule in ("riemann_middle", "middle", "riemann"):
        return (k + 0.5) / n_steps, w
    raise MethodError(
        f"Unknown integration rule {rule!r}; choose gausslegendre, riemann_middle, riemann_left, "
        "riemann_right, riemann_trapezoid, or adaptive (integrated gradients only)."
    )


__all__ = ["RULES", "rule_points"]
