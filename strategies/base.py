"""The interface every strategy implements: ``compose.strategy.Strategy`` (the stage loop and its hooks)."""

from compose.strategy import Composition, NoOptions, StagePlan, Strategy

__all__ = ["Composition", "NoOptions", "StagePlan", "Strategy"]
