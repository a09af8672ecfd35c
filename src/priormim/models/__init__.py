"""Networks: MAE and VP-MIM autoencoders, the method zoo, segmentors, fine-tuning heads.

Importing any ``priormim.models.*`` module runs this file, which imports :mod:`priormim.models.run`
so that :meth:`priormim.models.mae.MaskedAutoencoder.from_run` (defined there, because rebuilding a
run needs VP-MIM and the zoo, which are built on ``mae``) is always attached.
"""

from priormim.models import run as _run  # noqa: F401  (attaches MaskedAutoencoder.from_run)
