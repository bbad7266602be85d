"""`compose run` end to end on the tiny model with the smoke preset: every strategy, resume, bad input."""

import json
import logging
import shutil

import pytest
import torch

from compose import config as config_mod
from compose import context as context_mod
from compose.artifact import patch_matrix, read_manifest, verify_patch
from compose.cli import run as run_mod
from compose.cli import main
from compose.cli.config import resolve
from compose.context import RunContext
from compose.forgetting import ForgettingMatrix
from compose.models import load_model
from risks import get_risk
from strategies import STRATEGIES

BIAS_REVISION = get_risk("bias").metric_revision

STRATEGY_NAMES = list(STRATEGIES)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random")


pytestmark = pytest.mark.usefixtures("shared_cache")


def run(tiny, out, risks="tox,bias", strategy="sequential-replay", **flags):
    cfg = resolve({}, risks=risks, strategy=strategy, model="tiny-random", preset="smoke", **flags)
    return run_mod.execute(cfg, out, loaded=tiny)


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_every_strategy_two_risks(tiny, tmp_path, strategy):
    results = run(tiny, tmp_path / strategy, strategy=strategy)
    m = ForgettingMatrix.load(tmp_path / strategy / "forgetting.json")
    assert m.risks == ["toxicity", "bias"]
    kinds = [r.kind for r in m.rows]
    if strategy in ("concatenated", "merged"):
        assert kinds == ["base", "specialist", "specialist", "composed"]
    elif strategy in ("joint", "modular"):
        assert kinds == ["base", "composed"]
    else:
        assert kinds == ["base", "stage", "stage"]
        assert results["summary"]["bwt"]["value"] is not None
    for row in m.rows:
        assert all(0.0 <= row.scores[r] <= 1.0 for r in m.risks)
    manifest = verify_patch(tmp_path / strategy / "patch", tiny.fingerprint)
    assert {s["risk"] for s in manifest["risks"]} == {"toxicity", "bias"}
    for name in ("config.yaml", "results.json", "report.md", "forgetting.png"):
        assert (tmp_path / strategy / name).is_file(), name
    assert (tmp_path / strategy / "forgetting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cached_specialist_is_evaluated_on_the_new_runs_other_risks(tiny, tmp_path):
    """A specialist cached by a one-risk run is reused by a two-risk run, evaluated on the risk it lacked."""
    run(tiny, tmp_path / "one", risks="tox", strategy="concatenated", tokens=5)
    run(tiny, tmp_path / "two", risks="tox,bias", strategy="concatenated", tokens=5)
    m = ForgettingMatrix.load(tmp_path / "two" / "forgetting.json")
    assert m.rows[1].trained == "toxicity" and set(m.rows[1].scores) == {"toxicity", "bias"}
    first = ForgettingMatrix.load(tmp_path / "one" / "forgetting.json")
    assert m.rows[1].scores["toxicity"] == first.rows[1].scores["toxicity"]  # reused, not retrained


@pytest.mark.parametrize("strategy", [pytest.param("sequential-replay", marks=pytest.mark.slow), "stacked",
                                      pytest.param("concatenated", marks=pytest.mark.slow)])
def test_three_risks(tiny, tmp_path, strategy):
    run(tiny, tmp_path, risks="tox,bias,harm", strategy=strategy, tokens="tox=3,bias=2,harm=4")
    m = ForgettingMatrix.load(tmp_path / "forgetting.json")
    assert len(m.rows) == 4 if strategy != "concatenated" else len(m.rows) == 5
    manifest = read_manifest(tmp_path / "patch")
    total = 9
    assert manifest["num_virtual_tokens"] == total
    if strategy == "sequential-replay":
        assert all(s == {"risk": s["risk"], "start": 0, "tokens": total} for s in manifest["risks"])
        assert (tmp_path / "replay.json").is_file()
    else:
        assert manifest["risks"] == [{"risk": "toxicity", "start": 0, "tokens": 3},
                                     {"risk": "bias", "start": 3, "tokens": 2},
                                     {"risk": "harmfulness", "start": 5, "tokens": 4}]


@pytest.mark.parametrize("dpo_reference", ["base", "sft"])
def test_stacked_freezes_earlier_blocks_and_uses_them_as_reference(tiny, tmp_path, monkeypatch, dpo_reference):
    references = []
    real = context_mod.train_dpo

    def spy(model, tok, pairs, cfg, reference=None, frozen_rows=None, desc=""):
        references.append((None if reference.prefix is None else reference.prefix.clone(), frozen_rows))
        return real(model, tok, pairs, cfg, reference=reference, frozen_rows=frozen_rows, desc=desc)

    monkeypatch.setattr(context_mod, "train_dpo", spy)
    run(tiny, tmp_path, risks="tox,bias,harm", strategy="stacked", tokens="3", train={"dpo_reference": dpo_reference})
    first, _ = patch_matrix(tmp_path / "stages" / "01-toxicity" / "patch")
    second, _ = patch_matrix(tmp_path / "stages" / "02-bias" / "patch")
    final, _ = patch_matrix(tmp_path / "patch")
    assert torch.equal(final[:3], first) and torch.equal(final[:6], second)
    assert [r[1] for r in references][1:] == [slice(0, 3), slice(0, 6)]
    if dpo_reference == "base":  # the base model plus the frozen earlier blocks
        assert references[0][0] is None
        assert torch.equal(references[1][0], first) and torch.equal(references[2][0], second)
    else:  # the whole patch as the block's SFT left it: the earlier blocks exactly, then the new block
        assert [r[0].shape[0] for r in references] == [3, 6, 9]
        assert torch.equal(references[1][0][:3], first) and torch.equal(references[2][0][:6], second)


def test_resume_redoes_nothing_finished(tiny, tmp_path, monkeypatch):
    calls = []
    real = RunContext.train

    def crash_in_stage_2(self, model, sft, pairs, **kw):
        calls.append(kw.get("desc"))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, model, sft, pairs, **kw)

    monkeypatch.setattr(RunContext, "train", crash_in_stage_2)
    with pytest.raises(KeyboardInterrupt):
        run(tiny, tmp_path, strategy="sequential")
    assert (tmp_path / "stages" / "01-toxicity" / "stage.json").is_file()
    assert not (tmp_path / "stages" / "02-bias" / "stage.json").exists()
    stage1 = (tmp_path / "stages" / "01-toxicity" / "patch" / "adapter_model.safetensors").read_bytes()
    calls.clear()
    monkeypatch.setattr(RunContext, "train", lambda self, *a, **kw: calls.append(kw["desc"]) or real(self, *a, **kw))
    run(tiny, tmp_path, strategy="sequential")
    assert len(calls) == 1 and "bias" in calls[0]
    assert (tmp_path / "stages" / "01-toxicity" / "patch" / "adapter_model.safetensors").read_bytes() == stage1
    m = ForgettingMatrix.load(tmp_path / "forgetting.json")
    assert [r.name for r in m.rows] == ["base", "toxicity", "bias"]


def test_an_evaluation_of_an_older_metric_is_redone_without_retraining(tiny, tmp_path, monkeypatch):
    """A finished stage (and the cached base model's evaluation) holding a risk's figures from before its metric
    changed (``metric_revision``) is evaluated again on that risk alone when the run resumes; nothing is retrained
    and the other risks' figures are kept."""
    cache = tmp_path / "cache"  # its own: the shared one's base evaluation is edited below
    monkeypatch.setenv("COMPOSE_CACHE", str(cache))
    out = tmp_path / "run"
    run(tiny, out, strategy="sequential")
    stages = sorted((out / "stages").glob("*/eval.json"))
    patches = [(s.parent / "patch" / "adapter_model.safetensors").read_bytes() for s in stages]
    assert len(stages) == 2 and len(list(cache.glob("evals/*.json"))) == 1
    for path in stages + list(cache.glob("evals/*.json")):
        evals = json.loads(path.read_text())
        evals["bias"]["revision"] = 1  # as written before the bias metric's untold
        del evals["bias"]["items"]["untold"], evals["bias"]["raw"]["untold"]
        evals["toxicity"]["raw"]["marker"] = 7.0  # must survive: toxicity's metric did not change
        path.write_text(json.dumps(evals))
    (out / "results.json").unlink()
    evaluated = []
    real = RunContext.evaluate
    monkeypatch.setattr(RunContext, "evaluate", lambda self, model, desc="", risks=None:
                        evaluated.append(list(risks or self.order)) or real(self, model, desc, risks))
    monkeypatch.setattr(RunContext, "train", lambda *a, **kw: pytest.fail("a finished stage was trained again"))
    run(tiny, out, strategy="sequential")
    assert evaluated == [["bias"], ["bias"]]  # the two stages; the base model's through its cache, below
    for path, patch in zip(stages, patches):
        evals = json.loads(path.read_text())
        assert evals["bias"]["revision"] == BIAS_REVISION and "untold" in evals["bias"]["items"]
        assert evals["toxicity"]["raw"]["marker"] == 7.0
        assert (path.parent / "patch" / "adapter_model.safetensors").read_bytes() == patch
    base = json.loads((out / "stages" / "00-base.json").read_text())
    assert base["bias"]["revision"] == BIAS_REVISION and base["toxicity"]["raw"]["marker"] == 7.0


def test_finished_run_keeps_its_results(tiny, tmp_path, monkeypatch):
    """Re-running a finished run folder loads nothing, trains nothing and keeps results.json (its wall time)."""
    first = run(tiny, tmp_path, strategy="joint")
    saved = (tmp_path / "results.json").read_bytes()
    monkeypatch.setattr(run_mod, "load_model", lambda *a, **kw: pytest.fail("a finished run loaded the model"))
    monkeypatch.setattr(RunContext, "train", lambda *a, **kw: pytest.fail("a finished run trained"))
    again = run_mod.execute(resolve({}, risks="tox,bias", strategy="joint", model="tiny-random",
                                               preset="smoke"), tmp_path)
    assert again["wall_seconds"] == first["wall_seconds"]
    assert (tmp_path / "results.json").read_bytes() == saved


def test_resume_refuses_other_settings(tiny, tmp_path):
    run(tiny, tmp_path, strategy="joint")
    with pytest.raises(Exception, match="other settings"):
        run(tiny, tmp_path, strategy="sequential")


def test_resume_accepts_a_run_from_before_a_setting_was_added(tiny, tmp_path, monkeypatch):
    """A setting added later (absent from an older run's config.yaml) takes its default: the run still resumes."""
    import yaml

    run(tiny, tmp_path, strategy="joint")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del saved["train"]["retain_objective"], saved["margin"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    calls = []
    monkeypatch.setattr(RunContext, "train", lambda *a, **k: calls.append(a))
    run(tiny, tmp_path, strategy="joint")
    assert not calls  # resumed: nothing trained again
    with pytest.raises(Exception, match=r"other settings \(train differ"):
        run(tiny, tmp_path, strategy="joint", train={"retain_objective": "kl"})


@pytest.mark.parametrize("args, message", [
    (["--strategy", "sequentail"], "unknown strategy 'sequentail' (did you mean 'sequential'?)"),
    (["--risks", "tox,biass"], "unknown risk"),
    (["--risks", "tox,toxicity"], "named twice"),
    (["--tokens", "harm=3"], "not in this run"),
    (["--tokens", "tox=0"], "positive integer"),
    (["--tokens", "tox=-2"], "positive integer"),
    (["--replay", "1.5"], "replay share must be in [0, 1)"),
    (["--preset", "huge"], "unknown preset"),
    (["--data", "harm-eval.jsonl"], "bad --data"),
    (["--opt", "harm:judge=refusal"], "--opt names risk 'harm', which is not in this run"),
    (["--opt", "bias:samples=3"], "which every risk takes from the run"),
    (["--opt", "bias:teacher_score=gender"], "unknown teacher_score 'gender' of risk 'bias'; valid: words, story"),
    (["--opt", "bias:teacher_n=many"], "field 'teacher_n' is 'many'; expected an integer"),
    (["--opt", "bias=story"], "bad --opt"),
])
def test_bad_input_exits_2(tmp_path, capsys, args, message):
    base = ["run", "--model", "tiny-random", "--preset", "smoke", "--out", str(tmp_path / "r")]
    if "--risks" not in args:
        base += ["--risks", "tox,bias"]
    assert main(base + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "r").exists()  # nothing written for a refused run


def test_cli_run_and_report(tmp_path, capsys):
    out = tmp_path / "cli-run"
    assert main(["run", "--model", "tiny-random", "--preset", "smoke", "--risks", "tox,bias",
                 "--strategy", "sequential", "--train", "sft_lr=0.02", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "final average safety" in text and "toxicity" in text
    results = json.loads((out / "results.json").read_text())
    speed = results["matmul_tflops"]  # the wall time's yardstick, in the dtype the run computed in
    assert speed["start"] > 0 and speed["end"] > 0 and speed["dtype"] == results["compute_dtype"]
    assert results["compute_dtype"] in ("bfloat16", "float32")
    assert f"{speed['dtype']} matmul" in text and "matmul_tflops" in (out / "report.md").read_text()
    saved = config_mod.load_config_file(out / "config.yaml")
    assert saved["strategy"] == "sequential" and saved["tokens"] == {"toxicity": 4, "bias": 4}
    assert saved["train"]["sft_lr"] == 0.02 and saved["train"]["sft_epochs"] == 1  # --train over the preset's
    # the old spelling of --out still works, with a warning; everything finished: nothing retrained
    assert main(["run", "--resume", "--output-dir", str(out), "--output-dir", str(out)]) == 0
    assert capsys.readouterr().err.count("--output-dir is deprecated; use --out") == 1
    other = tmp_path / "cli-joint"
    assert main(["run", "--model", "tiny-random", "--preset", "smoke", "--risks", "tox,bias",
                 "--strategy", "joint", "--out", str(other)]) == 0
    assert main(["report", str(out), str(other), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "comparison.png").is_file()
    assert "sequential" in (tmp_path / "cmp" / "comparison.md").read_text()
    shutil.copytree(out, tmp_path / "reverse")  # two runs of one strategy: named by their folders
    assert main(["report", str(out), str(tmp_path / "reverse"), "--out", str(tmp_path / "orders")]) == 0
    table = (tmp_path / "orders" / "comparison.md").read_text()
    assert "| cli-run | sequential |" in table and "| reverse | sequential |" in table
    assert json.loads((out / "results.json").read_text())["strategy"] == "sequential"


def test_the_speed_line_reads_runs_from_before_the_dtype_was_recorded():
    from compose.cli.run import _speed

    old = {"bf16_matmul_tflops": {"start": 2.31, "end": 2.2}}
    assert _speed(old) == " (this machine's bfloat16 matmul 2.31 -> 2.2 TFLOP/s)"
    new = {"matmul_tflops": {"dtype": "float32", "n": 1024, "start": 0.0907, "end": 0.0911}}
    assert _speed(new) == " (this machine's float32 matmul 0.0907 -> 0.0911 TFLOP/s)"
    assert _speed({}) == ""


def test_the_run_seed_seeds_training_unless_a_training_seed_is_given():
    assert resolve(preset="smoke", risks="tox", seed=3).train.seed == 3
    assert resolve(preset="smoke", risks="tox").train.seed == 0
    assert resolve(preset="smoke", risks="tox", seed=3, train={"seed": 7}).train.seed == 7
    assert resolve({"seed": 2, "train": {"seed": 0}}, preset="smoke", risks="tox").train.seed == 0  # a saved run's


def test_seeds_run_each_seed_and_pool_them(tmp_path, capsys):
    out = tmp_path / "seeds"
    assert main(["run", "--risks", "tox,bias", "--strategy", "sequential", "--preset", "smoke", "--model",
                 "tiny-random", "--seeds", "0,1", "--out", str(out)]) == 0
    for seed in (0, 1):
        saved = config_mod.load_config_file(out / f"seed{seed}" / "config.yaml")
        assert saved["seed"] == seed and saved["train"]["seed"] == seed  # the seed reaches training too
        assert (out / f"seed{seed}" / "results.json").is_file()
        stage = json.loads((out / f"seed{seed}" / "stages" / "01-toxicity" / "stage.json").read_text())
        assert stage["training"]["settings"]["seed"] == seed
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [0, 1] and set(summary["mean"]) == {"toxicity", "bias", "A"}
    pooled = {c["figure"]: c for c in summary["pooled_vs_base"]}
    n_tox = len(ForgettingMatrix.load(out / "seed0" / "forgetting.json").rows[0].items["toxicity"]["safety"])
    assert pooled["toxicity"]["n"] == 2 * n_tox  # (seed, prompt) pairs pooled over both seeds
    assert "pooled vs base" in (out / "seeds.md").read_text()
    assert (out / "seeds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["run", "--risks", "tox", "--preset", "smoke", "--model", "tiny-random", "--seeds", "0,0"]) == 2
    assert "distinct integers" in capsys.readouterr().err


def test_every_figure_has_an_interval_and_n(tiny, tmp_path):
    run(tiny, tmp_path / "ci", strategy="sequential")
    results = json.loads((tmp_path / "ci" / "results.json").read_text())
    a = results["summary"]["final_average_safety"]
    assert a["ci_low"] <= a["value"] <= a["ci_high"] and a["n"] > 0
    evals = json.loads(next((tmp_path / "ci" / "stages").glob("*/eval.json")).read_text())
    for risk, m in evals.items():
        for figure in ["safety", *m["raw"], "perplexity"]:
            ci = m["intervals"][figure]
            assert ci["ci_low"] <= ci["ci_high"] and ci["n"] > 0, (risk, figure)
    assert "±" in (tmp_path / "ci" / "report.md").read_text()
    phases = results["phases"]  # where the wall time went, phase by phase
    assert list(phases)[:3] == ["model loaded", "training data", "base evaluation"]
    for stage in ("toxicity", "bias"):
        assert phases[f"{stage}: trained"] > 0 and phases[f"{stage}: evaluated"] > 0
    assert sum(v for k, v in phases.items() if k != "model loaded") <= results["wall_seconds"] + 0.5


def test_a_risk_trains_with_its_own_settings(tmp_path, monkeypatch):
    """risk_train: a stage learning one risk's data trains with that risk's settings; a user's --train for all
    risks wins over a preset's per-risk recipe; a joint stage keeps only what its risks share."""
    smoke = {**config_mod.PRESETS["smoke"], "risk_train": {"bias": {"sft_lr": 0.05, "max_steps": 1}}}
    monkeypatch.setitem(config_mod.PRESETS, "smoke", smoke)
    cfg = resolve(model="tiny-random", preset="smoke", risks="tox,bias", strategy="sequential")
    assert cfg.risk_train == {"bias": {"sft_lr": 0.05, "max_steps": 1}}
    assert cfg.train_for(["bias"]).sft_lr == 0.05 and cfg.train_for(["toxicity"]).sft_lr == cfg.train.sft_lr
    assert cfg.train_for(["toxicity", "bias"]) == cfg.train and cfg.train_for(None) == cfg.train
    assert resolve(preset="smoke", risks="tox,bias", train={"sft_lr": 0.01}).risk_train == {"bias": {"max_steps": 1}}
    own = resolve(preset="smoke", risks="tox,bias", train={"sft_lr": 0.01},
                  file={"risk_train": {"tox": {"sft_epochs": 2}, "bias": {"sft_lr": 0.2}}})
    assert own.risk_train == {"bias": {"max_steps": 1, "sft_lr": 0.2}, "toxicity": {"sft_epochs": 2}}

    out = tmp_path / "per-risk"
    assert main(["run", "--model", "tiny-random", "--preset", "smoke", "--risks", "tox,bias",
                 "--strategy", "sequential", "--out", str(out)]) == 0
    stages = {p.name: json.loads((p / "stage.json").read_text())["training"] for p in (out / "stages").iterdir()
              if p.is_dir()}
    tox, bias = stages["01-toxicity"], stages["02-bias"]
    assert bias["sft"]["steps"] == 1 and bias["settings"]["sft_lr"] == 0.05
    assert tox["sft"]["steps"] > 1 and tox["settings"]["sft_lr"] == config_mod.PRESETS["smoke"]["train"].get(
        "sft_lr", cfg.train.sft_lr)
    assert config_mod.load_config_file(out / "config.yaml")["risk_train"] == {"bias": {"sft_lr": 0.05, "max_steps": 1}}

    # a recipe file naming one risk, resumed with the same file: the preset's recipe for the other risk still holds
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("risk_train: {tox: {max_steps: 2}}\n")
    args = ["run", "--model", "tiny-random", "--preset", "smoke", "--risks", "tox", "--strategy", "sequential",
            "--config", str(recipe), "--out", str(tmp_path / "recipe")]
    assert main(args) == 0
    assert main([*args, "--resume"]) == 0


def test_a_prefilled_teachers_opening_is_weighted_in_sft(tmp_path, monkeypatch):
    """lead_weight in a risk's recipe: every bias answer of a prefilled teacher ("{prompt} they ...") reaches SFT with
    its opening's length in tokens, which the loss weighs; retain answers carry none."""
    from compose import context as context_mod

    seen = []

    def recording(model, tokenizer, examples, cfg, **kwargs):
        seen.append((cfg.lead_weight, examples))
        return train_sft(model, tokenizer, examples, cfg, **kwargs)

    train_sft = context_mod.train_sft
    monkeypatch.setattr(context_mod, "train_sft", recording)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text('risk_train: {bias: {lead_weight: 3.0}}\n'
                      'risk_options: {bias: {teacher_prefill: "{prompt} they"}}\n')
    assert main(["run", "--model", "tiny-random", "--preset", "smoke", "--risks", "bias", "--strategy", "sequential",
                 "--config", str(recipe), "--out", str(tmp_path / "run")]) == 0
    weight, examples = seen[0]
    risk = [e for e in examples if e.get("source") == "risk"]
    assert weight == 3.0 and risk and all(e["lead"] > 0 and " they" in e["completion"] for e in risk)
    # the opening repeats the prompt's story sentence before "they": that part is what echo_weight weighs
    assert all(0 < e["echo"] < e["lead"] for e in risk)
    assert all("lead" not in e for e in examples if e.get("source") == "retain")


def test_a_risk_runs_with_its_own_options(tiny, tmp_path):
    """risk_options (config file) and --opt (over it, option by option) reach the risk's plugin, are saved with the
    run, and key every cached result: a run that sets none keeps the keys it had before risk options existed."""
    cfg = resolve(preset="smoke", risks="tox,bias", file={"risk_options": {"gender": {"teacher_n": 3}}},
                  risk_options={"bias": {"teacher_score": "story"}})
    assert cfg.risk_options == {"bias": {"teacher_n": 3, "teacher_score": "story"}}
    risks = run_mod.run_risks(cfg)
    assert risks["bias"].options["teacher_n"] == 3 and risks["bias"].options["teacher_score"] == "story"
    assert risks["bias"].options["samples"] == cfg.samples  # the run's generation settings still apply

    plain = resolve(preset="smoke", risks="tox,bias")
    keys = [RunContext(c, tmp_path, tiny, c.risks, run_mod.run_risks(c))._cache_key("model", "seed")
            for c in (plain, cfg)]
    assert "-o" not in keys[0] and keys[1].startswith(keys[0] + "-o")

    out = tmp_path / "opt"
    assert main(["run", "--model", "tiny-random", "--preset", "smoke", "--risks", "tox,bias", "--strategy",
                 "sequential", "--opt", "bias:teacher_n=3", "--out", str(out)]) == 0
    assert config_mod.load_config_file(out / "config.yaml")["risk_options"] == {"bias": {"teacher_n": 3}}
    data = {r: json.loads((out / "data" / f"{r}.json").read_text()) for r in ("toxicity", "bias")}
    assert "best-of-3" in data["bias"]["stats"]["teacher"] and "best-of-3" not in data["toxicity"]["stats"]["teacher"]


def test_an_equalizing_weight_without_token_sets_says_it_does_nothing(tmp_path, caplog, monkeypatch):
    """balance_weight for every risk in a run with no risk naming token sets to balance: a warning, and plain SFT;
    a risk's own recipe's weight (meant for the replayed examples of the bias risk) stays silent."""
    with caplog.at_level(logging.WARNING, logger="compose.run"):
        assert main(["run", "--model", "tiny-random", "--preset", "smoke", "--risks", "tox", "--strategy",
                     "sequential", "--train", "balance_weight=5", "--out", str(tmp_path / "tox")]) == 0
    warned = [r.getMessage() for r in caplog.records if "balance_weight=5 has no effect" in r.getMessage()]
    assert len(warned) == 1 and "no risk of this run names token sets" in warned[0]

    caplog.clear()
    smoke = {**config_mod.PRESETS["smoke"], "risk_train": {"toxicity": {"balance_weight": 5.0}}}
    monkeypatch.setitem(config_mod.PRESETS, "smoke", smoke)
    with caplog.at_level(logging.WARNING, logger="compose.run"):
        assert main(["run", "--model", "tiny-random", "--preset", "smoke", "--risks", "tox", "--strategy",
                     "sequential", "--out", str(tmp_path / "preset")]) == 0
    assert not [r for r in caplog.records if "has no effect" in r.getMessage()]


def test_rounds_on_the_patchs_own_answers_balance_them_without_imitating_them(tmp_path, monkeypatch):
    """balance_own_rounds: after SFT each round trains one more epoch on the stage's examples plus the patch's own
    greedy answers to its balanced risk examples, which are not imitated; the stage records every round."""
    from compose import context

    seen = []
    answers = context.RunContext.own_answers

    def own_answers(self, model, sft, desc):
        out = answers(self, model, sft, desc)
        seen.append((sft, out, self.risk("bias").respond(model, self.loaded.tokenizer, [e["prompt"] for e in out])))
        return out

    monkeypatch.setattr(context.RunContext, "own_answers", own_answers)
    out = tmp_path / "own"
    assert main(["run", "--model", "tiny-random", "--preset", "smoke", "--risks", "bias", "--strategy", "sequential",
                 "--train", "balance_weight=5", "--train", "balance_own_rounds=2", "--train", "max_steps=2",
                 "--out", str(out)]) == 0
    training = json.loads((out / "stages" / "01-bias" / "stage.json").read_text())["training"]
    assert training["settings"]["balance_own_rounds"] == 2 and len(training["sft_own"]) == len(seen) == 2
    for (sft, own, greedy), record in zip(seen, training["sft_own"]):
        flagged = [e for e in sft if e.get("balance", -1) == 0]
        assert own and len(own) <= len(flagged) and {e["prompt"] for e in own} <= {e["prompt"] for e in flagged}
        assert all(e["imitate"] is False and e["balance"] == 0 for e in own)
        assert [e["completion"] for e in own] == greedy  # the patch's own greedy answers, as it was at that round
        assert record["examples"] == len(sft) + len(own) and record["steps"] > 0


def test_own_pairs_reject_the_patchs_own_unsafe_answers_for_the_teachers(tmp_path, monkeypatch):
    """own_pairs: before DPO the patch answers its risk examples' prompts greedily; each answer the risk scores
    unsafe is the rejected answer of one more DPO pair, chosen the teacher's answer; the stage records how many."""
    from compose import context
    from risks.toxicity import Toxicity

    def odd_is_safe(self, prompts, responses):  # after the data is built: about half the answers unsafe
        return [float(len(r) % 2) for r in responses]

    seen, given = [], []
    train, own_pairs, dpo = context.RunContext.train, context.RunContext.own_pairs, context.train_dpo

    def training(self, *a, **kw):
        monkeypatch.setattr(Toxicity, "score", odd_is_safe)
        return train(self, *a, **kw)

    def spy(self, model, sft, desc):
        greedy = self.risk("toxicity").respond(model, self.loaded.tokenizer, [e["prompt"] for e in sft
                                                                              if e["source"] == "risk"])
        seen.append(([e for e in sft if e["source"] == "risk"], greedy))
        return own_pairs(self, model, sft, desc)

    monkeypatch.setattr(context.RunContext, "train", training)
    monkeypatch.setattr(context.RunContext, "own_pairs", spy)
    monkeypatch.setattr(context, "train_dpo", lambda model, tok, pairs, cfg, **kw: given.append(pairs)
                        or dpo(model, tok, pairs, cfg, **kw))
    out = tmp_path / "own"
    assert main(["run", "--model", "tiny-random", "--preset", "smoke", "--risks", "tox", "--strategy", "sequential",
                 "--train", "own_pairs=true", "--out", str(out)]) == 0
    (examples, greedy), = seen
    expected = [{"prompt": e["prompt"], "chosen": e["completion"], "rejected": g, "source": "own"}
                for e, g in zip(examples, greedy) if len(g) % 2 == 0 and g.strip() and g.strip() != e["completion"]]
    own = [p for p in given[0] if p["source"] == "own"]
    assert own and own == expected and len(own) < len(examples)  # only the unsafe answers, as the patch gave them
    training = json.loads((out / "stages" / "01-toxicity" / "stage.json").read_text())["training"]
    assert training["own_pairs"] == len(own) and training["dpo"]["examples"] == len(given[0])


def test_own_pairs_rounds_run_dpo_again_against_what_the_patch_still_gets_wrong(tmp_path, monkeypatch):
    """own_pairs_rounds: after DPO the patch answers again; its answers still scored unsafe become the rejected
    answers of one more DPO round over the stage's pairs, with the patch as that round began as the reference."""
    from compose import context
    from compose.patch import get_prompt
    from risks.toxicity import Toxicity

    def odd_is_safe(self, prompts, responses):
        return [float(len(r) % 2) for r in responses]

    seen, given, references = [], [], []
    train, own_pairs, dpo = context.RunContext.train, context.RunContext.own_pairs, context.train_dpo

    def training(self, *a, **kw):
        monkeypatch.setattr(Toxicity, "score", odd_is_safe)
        return train(self, *a, **kw)

    def spy(self, model, sft, desc):
        out = own_pairs(self, model, sft, desc)
        seen.append((get_prompt(model), out))
        return out

    def dpo_spy(model, tok, pairs, cfg, reference=None, **kw):
        given.append(pairs)
        references.append(reference.prefix.detach().clone())
        return dpo(model, tok, pairs, cfg, reference=reference, **kw)

    monkeypatch.setattr(context.RunContext, "train", training)
    monkeypatch.setattr(context.RunContext, "own_pairs", spy)
    monkeypatch.setattr(context, "train_dpo", dpo_spy)
    out = tmp_path / "own"
    assert main(["run", "--model", "tiny-random", "--preset", "smoke", "--risks", "tox", "--strategy", "sequential",
                 "--train", "own_pairs=true", "--train", "own_pairs_rounds=3", "--train", "dpo_lr=0.1",
                 "--out", str(out)]) == 0
    training = json.loads((out / "stages" / "01-toxicity" / "stage.json").read_text())["training"]
    assert len(seen) == 1 + len(training["own_pairs_later"]) and 2 <= len(seen) <= 3
    assert training["own_pairs"] == len(seen[0][1]) and training["own_pairs_later"] == [len(o) for _, o in seen[1:]]
    assert len(training["dpo_own"]) == len(given) - 1 == sum(1 for _, o in seen[1:] if o)
    stage_pairs = [p for p in given[0] if p["source"] != "own"]
    for (prompt, own), pairs, reference in zip(seen[1:], given[1:], references[1:]):
        assert pairs == stage_pairs + own  # the stage's pairs plus what this round's patch still gets wrong
        assert torch.equal(reference, prompt)  # DPO refines the patch as this round began
    assert not torch.equal(seen[0][0], seen[1][0])  # the round's answers come from the patch after DPO


def test_a_risk_learns_from_its_own_number_of_prompts(tmp_path, monkeypatch):
    """risk_train's train_limit / retain_limit size one risk's data; the other risks keep the run's; a user's
    train_limit for all risks wins over the preset's per-risk one; a training setting stays out of the data."""
    smoke = {**config_mod.PRESETS["smoke"], "risk_train": {"bias": {"train_limit": 3, "retain_limit": 0}}}
    monkeypatch.setitem(config_mod.PRESETS, "smoke", smoke)
    cfg = resolve(model="tiny-random", preset="smoke", risks="tox,bias", strategy="sequential")
    assert cfg.limits_for("bias") == {"train_limit": 3, "retain_limit": 0}
    assert cfg.limits_for("toxicity") == {"train_limit": smoke["train_limit"], "retain_limit": smoke["retain_limit"]}
    assert cfg.train_for(["bias"]) == cfg.train  # data sizes are not training settings
    assert resolve(preset="smoke", risks="tox,bias", train_limit=5).risk_train == {"bias": {"retain_limit": 0}}
    assert resolve(preset="smoke", risks="tox,bias", file={"retain_limit": 1}).risk_train == {"bias": {"train_limit": 3}}

    out = tmp_path / "sizes"
    assert main(["run", "--model", "tiny-random", "--preset", "smoke", "--risks", "tox,bias",
                 "--strategy", "sequential", "--out", str(out)]) == 0
    data = {r: json.loads((out / "data" / f"{r}.json").read_text()) for r in ("toxicity", "bias")}
    assert data["bias"]["stats"]["prompts"] == 3 and data["bias"]["stats"]["retain_prompts"] == 0
    assert data["toxicity"]["stats"]["prompts"] == smoke["train_limit"]
    assert data["toxicity"]["stats"]["retain_prompts"] == smoke["retain_limit"]


@pytest.mark.parametrize("risk_train, message", [
    ({"bias": {"train_limit": 0}}, "risk_train.bias"),
    ({"bias": {"sft_rate": 0.1}}, "unknown setting 'sft_rate' in risk_train.bias"),
    ({"bias": 0.1}, "risk_train.bias must be a mapping"),
    ({"nonsense": {"sft_lr": 0.1}}, "unknown risk 'nonsense'"),
])
def test_bad_risk_train_is_one_line_exit_2(tmp_path, capsys, risk_train, message):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"risk_train": risk_train}))
    assert main(["run", "--model", "tiny-random", "--preset", "smoke", "--risks", "tox,bias", "--config", str(path),
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
