"""Built-in attribution methods; importing this package registers them (one family per module)."""

from . import attention, discrete, gradient, lrp, perturbation, reagent, token_head, value_zeroing  # noqa: F401
