"""The ``qatcore`` command (``python -m qatcore`` is the same).

One module per subcommand: :mod:`.calibrate` (with :mod:`.observe`, how observers are fed
from files, and :mod:`.calibrate_dask`), :mod:`.calibrate_model`, :mod:`.inspect`,
:mod:`.export`, :mod:`.examples`; :mod:`.readers` reads tensor files as hostile input;
:mod:`._common` holds what they share; :mod:`.main` parses the command line and
dispatches (``bench`` and ``demo`` run :mod:`qatcore.bench` and :mod:`qatcore.demo`).
"""

from .main import main

__all__ = ["main"]
