"""The old import path of ``compose run``'s code: ``execute`` is now ``compose.cli.run.execute`` (the application
layer). Kept for experiments/recipe.py; new code imports ``compose.cli.run``."""

from compose.cli.run import execute

__all__ = ["execute"]
