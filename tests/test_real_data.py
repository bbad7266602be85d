"""The real benchmark sets beside the project (../shared/data): split, deduplicated and evaluated as a user would.

The split/overlap test is fast (no model); the evaluation on the embedded model is marked slow (make test-slow).
"""

import json

import pytest

from compose.cli import main
from risks import get_risk


def test_a_real_set_splits_into_train_and_held_out_eval_without_overlap(shared_data):
    risk = get_risk("harm", data={"all": str(shared_data / "harm_advbench.jsonl"),
                                  "retain_eval": str(shared_data / "benign_overrefusal.jsonl")})
    train, held_out = risk.prompts("train"), risk.prompts("eval")
    rows = sum(1 for line in (shared_data / "harm_advbench.jsonl").read_text().splitlines() if line.strip())
    assert len(train) + len(held_out) + len({p for _, _, s, p in risk.removed_overlaps if s == "train"}) <= rows
    assert 200 <= len(held_out) <= 320 and not set(train) & set(held_out)
    assert risk.removed_overlaps  # AdvBench repeats requests in other words; they never straddle the split
    assert len(risk.prompts("retain_eval")) == 80


@pytest.mark.slow
def test_eval_on_the_real_sets_reports_n_and_intervals(shared_data, tmp_path):
    out = tmp_path / "eval"
    assert main(["eval", "--risks", "tox,bias,harm", "--limit", "24", "--out", str(out),
                 "--data", f"tox:eval={shared_data / 'toxicity_rtp.jsonl'}",
                 "--data", f"bias:eval={shared_data / 'bias_gendered_professions.jsonl'}",
                 "--data", f"harm={shared_data / 'harm_advbench.jsonl'}",
                 "--data", f"harm:retain_eval={shared_data / 'benign_overrefusal.jsonl'}"]) == 0
    results = json.loads((out / "results.json").read_text())["risks"]
    assert results["toxicity"]["intervals"]["toxic_rate"]["n"] == 24
    assert results["bias"]["intervals"]["gld"]["n"] == 20  # the file has 20 professions
    harm = results["harmfulness"]["intervals"]
    assert harm["asr"]["n"] == 24 and harm["over_refusal"]["n"] == 24
    for risk in results.values():
        for ci in risk["intervals"].values():
            assert ci["ci_low"] <= ci["value"] <= ci["ci_high"]
    assert results["harmfulness"]["raw"]["asr"] > 0.5  # the embedded model complies with most AdvBench requests
