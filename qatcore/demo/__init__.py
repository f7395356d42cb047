"""The demos behind ``qatcore demo``: the digits MLP in numpy (:mod:`.mlp`, the default)
and in PyTorch (:mod:`.torch_mlp`, ``qatcore demo --torch``).  They use qatcore's public
API only."""

from .mlp import *  # noqa: F401,F403  (the numpy demo's functions, as before the move)
from .mlp import __all__ as __all__
