"""Built-in attribution methods; importing this package registers them (one family per module)."""

from . import attention, discrete, gradient, lrp, perturbation, reagent, value_zeroing  # noqa: F401
