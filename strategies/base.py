"""The interface every strategy implements."""

from __future__ import annotations

import abc


class Strategy(abc.ABC):
    """Trains and composes per-risk patches through a ``RunContext`` (``compose.run``).

    ``run`` adds one row to ``ctx.matrix`` per stage (or per specialist, then the composed patch) and returns
    the final patched model with the segments of its patch. ``layout`` says how the forgetting matrix reads:
    ``"sequential"`` (base row, then one stage per risk) or ``"composed"`` (specialists, then the composed patch).
    ``settings`` names the run settings only some strategies read (``replay``, ``merge``) that this one uses.
    """

    name = ""
    layout = "sequential"
    description = ""
    settings: tuple[str, ...] = ()

    @abc.abstractmethod
    def run(self, ctx):
        """Train and compose the patches; return ``(patched model, segments)``."""
