"""Risk plugins: each risk owns its prompts, its reference teacher and its metric (docs/architecture.md, "Adding a
risk").

    from risks import get_risk, list_risks, load_plugin, register_risk

    tox = get_risk("tox", samples=2)                     # by name or alias, with options
    harm = get_risk("harm", data={"eval": "../shared/data/harm_advbench.jsonl"})
    result = harm.evaluate(model, tokenizer, limit=16)   # MetricResult: safety in [0, 1] + raw figures

A new risk is a ``Risk`` subclass registered with ``register_risk`` (or loaded with ``load_plugin`` /
``compose --plugin my_risk.py``, or declared by a package in the ``compose.risks`` entry point group);
see experiments/examples/my_risk.py.
"""

from risks.base import SPLITS, MetricResult, Risk, Teacher, TeacherOutput
from risks.bias import GenderBias
from risks.harm import Harmfulness
from risks.registry import (canonical_name, get_risk, list_risks, load_entry_points, load_plugin, register_risk,
                            risk_class)
from risks.toxicity import Toxicity

# The built-in risks: one line each.
register_risk(Toxicity)
register_risk(GenderBias)
register_risk(Harmfulness)

__all__ = ["SPLITS", "GenderBias", "Harmfulness", "MetricResult", "Risk", "Teacher", "TeacherOutput", "Toxicity",
           "canonical_name", "get_risk", "list_risks", "load_entry_points", "load_plugin", "register_risk", "risk_class"]
