"""The run machinery: what the four scripts and ``register.py`` drive.

Config resolution (:mod:`engine.config`, :mod:`engine.train_config`), experiment folders
(:mod:`engine.experiment`), checkpoints (:mod:`engine.checkpoint`), device-resident batches
(:mod:`engine.batches`), the trainer (:mod:`engine.training`, :mod:`engine.train_loop`), the
evaluator (:mod:`engine.evaluation`, :mod:`engine.scoring`, :mod:`engine.reports`), the NIfTI
registration pipeline (:mod:`engine.registration_io`), metrics and plots.

Imports point down: the entry scripts import only ``engine``; ``engine`` imports ``models``,
``data``, ``losses`` and ``utils``; those import only ``utils`` (``tests/test_layout.py`` checks it).
:func:`run_cli` is the error boundary of ``utils.cli``, offered here so that a script needs
nothing but this package.
"""

from utils.cli import run_cli

__all__ = ["run_cli"]
