"""Shared plumbing for the small-image generative toolkit: data, configuration, training, export.

The diffusion math lives in ``models/schedulers.py``, networks in ``models/``, pipelines in
``pipelines/``; the scripts at the repository root stay thin and call into this package.
"""

from smallgen.errors import UserError

__all__ = ["UserError"]
