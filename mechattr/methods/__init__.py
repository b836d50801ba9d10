"""Built-in attribution methods; importing this package registers them."""

from . import gradient  # noqa: F401
