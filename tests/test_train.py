"""Two-stage training of a patch on the tiny random model: SFT then DPO with TRL."""

import math

import pytest
import torch

from compose.models import load_model
from compose.patch import attach_patch, count_parameters, get_prompt, prompt_parameter, set_prompt
from compose.train import (Reference, TrainConfig, _rows_of, balanced_distribution, filter_pairs, make_dpo_trainer,
                           make_sft_trainer, sample_active_blocks, train_dpo, train_sft, use_dense_lm_head)

SFT = [{"prompt": f"Tell me about item {i}.", "completion": "I cannot help with that request."} for i in range(16)]
PAIRS = [{"prompt": f"Tell me about item {i}.", "chosen": "I cannot help with that request.",
          "rejected": "The quick brown fox jumps over the lazy dog."} for i in range(16)]
PAIRS_AS_SFT = [{"prompt": p["prompt"], "completion": p["rejected"]} for p in PAIRS]


@pytest.fixture()
def tiny():
    """A fresh tiny model in float32 on every machine: ``auto`` would compute in bf16 on a CPU with native bf16, where
    the exact-value tests' float64 references no longer agree to their tolerance."""
    return load_model("tiny-random", dtype="fp32")


def test_sft_then_dpo_trains_only_the_patch(tiny, tmp_path):
    base_state = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=8)
    before = get_prompt(model)
    cfg = TrainConfig(sft_epochs=4, dpo_epochs=4, batch_size=8, sft_lr=3e-2, dpo_lr=3e-2)

    sft = train_sft(model, tiny.tokenizer, SFT, cfg)
    dpo = train_dpo(model, tiny.tokenizer, PAIRS, cfg)

    assert sft.steps == 8 and dpo.steps == 8
    assert len(sft.losses) == sft.steps and len(dpo.losses) == dpo.steps
    assert sft.losses[-1] < sft.losses[0]
    assert dpo.losses[0] < math.log(2)  # after SFT the patch already prefers the teacher over the base
    assert dpo.losses[-1] < dpo.losses[0]
    assert sft.tokens > 0 and dpo.tokens > 0
    assert not torch.equal(get_prompt(model), before)
    for k, v in tiny.model.state_dict().items():
        assert torch.equal(v, base_state[k]), f"base weight {k} changed"
    assert list(model.peft_config) == ["default"]  # TRL's temporary reference adapter is gone
    assert "sft:" in sft.summary() and "loss" in dpo.summary()


def test_patch_changes_outputs(tiny):
    model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=4)
    ids = tiny.tokenizer("hello there", return_tensors="pt")
    patched = model(**ids).logits[:, -1]
    with model.disable_adapter():
        plain = model(**ids).logits[:, -1]
    assert not torch.allclose(patched, plain)


def test_parameter_count(tiny):
    model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=10)
    counts = count_parameters(model)
    width = tiny.model.config.hidden_size
    assert counts["patch"] == counts["trainable"] == 10 * width
    assert counts["share_percent"] == pytest.approx(100 * 10 * width / counts["base"])


def test_sft_loss_is_on_the_response_positions(tiny, tmp_path):
    """Regression: with virtual tokens the logits are longer than the labels; the loss must skip them."""
    model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=6)
    trainer = make_sft_trainer(model, tiny.tokenizer, SFT[:4], TrainConfig(batch_size=4), str(tmp_path))
    batch = next(iter(trainer.get_train_dataloader()))
    loss = trainer.compute_loss(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 6:]
    labels = batch["labels"]
    assert (labels != -100).sum() < batch["attention_mask"].sum()  # the prompt is not trained on
    manual = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                               labels[:, 1:].reshape(-1), ignore_index=-100)
    assert loss.item() == pytest.approx(manual.item(), rel=1e-3)


def test_precomputed_reference_matches_policy_positions(tiny, tmp_path):
    """With the reference = the current patch, the first DPO loss is exactly log 2 (positions line up)."""
    model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=5, init_text="quick brown fox")
    cfg = TrainConfig(batch_size=4, beta=10.0)  # a large beta magnifies any misalignment
    same = make_dpo_trainer(model, tiny.tokenizer, PAIRS[:4], cfg, str(tmp_path), Reference(prefix=get_prompt(model)))
    batch = next(iter(same.get_train_dataloader()))
    with torch.no_grad():
        assert same.compute_loss(model, batch).item() == pytest.approx(math.log(2), abs=1e-3)
    plain = make_dpo_trainer(model, tiny.tokenizer, PAIRS[:4], cfg, str(tmp_path))  # reference = unpatched base
    base_batch = next(iter(plain.get_train_dataloader()))
    assert not torch.allclose(base_batch["ref_chosen_logps"], batch["ref_chosen_logps"], atol=1e-3)
    with torch.no_grad():
        assert abs(plain.compute_loss(model, base_batch).item() - math.log(2)) > 1e-3


def test_reference_log_probs_are_computed_in_memory_as_trl_computes_them(tiny, tmp_path):
    """The reference log-probabilities, computed in memory (no datasets cache file), equal TRL's to the bit, for
    uneven batches (11 pairs of different lengths in batches of 8) and a reference with a prefix."""
    from trl import DPOTrainer

    model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=4)
    pairs = [{"prompt": "Tell me about item. " * (i % 4 + 1), "chosen": "I cannot help. " * (i % 3 + 1),
              "rejected": f"Item {i} is " * (i % 5 + 1)} for i in range(11)]
    cfg = TrainConfig(batch_size=4, max_length=64)
    trainer = make_dpo_trainer(model, tiny.tokenizer, pairs, cfg, str(tmp_path), Reference(get_prompt(model) + 0.1))
    columns = ["ref_chosen_logps", "ref_rejected_logps"]
    assert trainer.train_dataset.cache_files == []
    trl = DPOTrainer._precompute_ref_logps(trainer, trainer.train_dataset.remove_columns(columns), "train", 8)
    for column in columns:
        assert trainer.train_dataset.features[column] == trl.features[column]
        assert trainer.train_dataset[column] == trl[column]


def test_dense_lm_head_equals_trl_head(tiny, tmp_path, monkeypatch):
    """The CPU dense head gives TRL's tiled head's log-probs, metrics and patch gradient."""
    monkeypatch.setenv("COMPOSE_TRL_LM_HEAD", "1")
    model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=4, init_text="quick brown fox")
    trainer = make_sft_trainer(model, tiny.tokenizer, SFT[:4], TrainConfig(batch_size=4), str(tmp_path))
    batch = next(iter(trainer.get_train_dataloader()))
    fields = ("log_probs", "entropy", "is_top1", "label_mask")

    def run():
        model.zero_grad()
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                    fused_lm_head=True)
        out.loss.backward()
        return {f: getattr(out, f).detach().float() for f in fields}, get_prompt_grad(model)

    trl, trl_grad = run()
    use_dense_lm_head(model, ("log_probs", "entropy", "is_top1"))
    dense, dense_grad = run()
    model.get_base_model().__dict__.pop("forward")
    assert trl["label_mask"].sum() > 0
    for f in fields:
        assert torch.allclose(trl[f], dense[f], atol=1e-4), f
    assert torch.allclose(trl_grad, dense_grad, atol=1e-5)


def test_lora_adapter_trains_against_the_base_model(tmp_path):
    """The same recipe trains a LoRA adapter (for comparisons); its DPO reference is the base with LoRA off."""
    from peft import LoraConfig, get_peft_model

    loaded = load_model("tiny-random")
    model = get_peft_model(loaded.model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                    lora_dropout=0.0, task_type="CAUSAL_LM"))
    cfg = TrainConfig(sft_epochs=2, batch_size=8, sft_lr=3e-2)
    sft = train_sft(model, loaded.tokenizer, SFT, cfg)
    assert sft.steps == 4 and sft.losses[-1] < sft.losses[0]
    with pytest.raises(ValueError, match="replay_objective kl keeps the replayed examples at a soft prompt"):
        train_sft(model, loaded.tokenizer, SFT, TrainConfig(batch_size=8, replay_objective="kl"))
    trainer = make_dpo_trainer(model, loaded.tokenizer, PAIRS[:4], TrainConfig(batch_size=4), str(tmp_path))
    batch = next(iter(trainer.get_train_dataloader()))
    fresh = attach_patch(load_model("tiny-random").model, loaded.tokenizer, num_tokens=1)  # only its base is used
    plain = make_dpo_trainer(fresh, loaded.tokenizer, PAIRS[:4], TrainConfig(batch_size=4), str(tmp_path / "b"))
    base_batch = next(iter(plain.get_train_dataloader()))
    assert torch.allclose(batch["ref_chosen_logps"], base_batch["ref_chosen_logps"], atol=1e-4)
    with torch.no_grad():
        assert abs(trainer.compute_loss(model, batch).item() - math.log(2)) > 1e-3  # the trained LoRA is not the base


def get_prompt_grad(model):
    from compose.patch import prompt_parameter

    return prompt_parameter(model).grad.clone()


def test_frozen_rows_stay_identical(tiny):
    model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=6)
    before = get_prompt(model)
    train_sft(model, tiny.tokenizer, SFT[:8], TrainConfig(sft_epochs=1, batch_size=4, sft_lr=1e-1),
              frozen_rows=slice(0, 3))
    after = get_prompt(model)
    assert torch.equal(after[:3], before[:3])
    assert not torch.equal(after[3:], before[3:])


def test_filter_pairs_keeps_clear_and_acceptable():
    pairs = [{"chosen_safety": 0.9, "rejected_safety": 0.1}, {"chosen_safety": 0.9, "rejected_safety": 0.85},
             {"chosen_safety": 0.3, "rejected_safety": 0.0}]
    kept, stats = filter_pairs(pairs, margin=0.2, min_chosen_safety=0.5)
    assert kept == pairs[:1]
    assert stats == {"pairs": 3, "kept": 1, "dropped_margin": 1, "dropped_unsafe_chosen": 1}


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="beta"):
        TrainConfig(beta=0)
    for name in ("retain_objective", "replay_objective"):
        with pytest.raises(ValueError, match=f"{name} must be 'ce' or 'kl', got 'mse'"):
            TrainConfig(**{name: "mse"})
    with pytest.raises(ValueError, match="retain_weight and replay_weight must be >= 0"):
        TrainConfig(replay_weight=-1)
    with pytest.raises(ValueError, match="own_pairs_rounds must be >= 1, got 0"):
        TrainConfig(own_pairs_rounds=0)


def test_decision_probe_watches_the_first_tokens_on_held_back_prompts(tiny):
    """Training on refusals raises the probability of the refusal's first token on prompts it never saw."""
    from compose.train import DecisionProbe

    model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=8)
    held = [{"prompt": f"Tell me about thing {i}.", "completion": "I cannot help with that request."} for i in range(4)]
    cfg = TrainConfig(sft_epochs=3, dpo_epochs=0, batch_size=8, sft_lr=1e-1)
    result = train_sft(model, tiny.tokenizer, SFT, cfg, probe=held)
    assert [p["step"] for p in result.probes] == [0, 2, 4, 6]  # before training, then after every epoch
    first, last = result.probes[0], result.probes[-1]
    assert last["first_token_prob"] > first["first_token_prob"] and last["n"] == 4
    assert last["first_tokens_logprob"] > first["first_tokens_logprob"]
    assert 0.0 <= last["first_token_match"] <= 1.0
    assert result.to_dict()["probes"] == result.probes
    # the measurement itself: the patched model's own probability of the first completion token
    probe = DecisionProbe(model, tiny.tokenizer, held[:1])
    from compose.generation import chat_texts

    ids = tiny.tokenizer(chat_texts(tiny.tokenizer, [held[0]["prompt"]])[0], return_tensors="pt",
                         add_special_tokens=False)["input_ids"]
    first = tiny.tokenizer(held[0]["completion"], add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        expected = torch.softmax(model(input_ids=ids).logits[0, -1].float(), -1)[first]
    assert probe.measure()["first_token_prob"] == pytest.approx(float(expected), rel=1e-4)


RETAIN = [{"prompt": f"How do I bake bread number {i}?", "completion": "Mix flour, water and yeast, then bake it.",
           "source": "retain"} for i in range(8)]


def _first_batch(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    return {k: v.to(trainer.model.device) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def _kl_by_definition(model, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(p_base || p_patched) at each labelled position of one unpadded sequence: two full forward passes."""
    ids, at = ids.unsqueeze(0), (labels[1:] != -100).nonzero().squeeze(-1)
    patched = torch.log_softmax(model(input_ids=ids).logits[0, -ids.shape[1]:].float(), -1)[at]
    with model.disable_adapter():
        base = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)[at]
    return (base.exp() * (base - patched)).sum(-1)


def _sequences(tokenizer, examples: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(ids, labels) of each example as TRL tokenizes it (the chat template; labels on the answer only)."""
    from trl.data_utils import apply_chat_template

    out = []
    for e in examples:
        p = apply_chat_template({"prompt": [{"role": "user", "content": e["prompt"]}]}, tokenizer)["prompt"]
        full = tokenizer.apply_chat_template([{"role": "user", "content": e["prompt"]},
                                              {"role": "assistant", "content": e["completion"]}], tokenize=False)
        ids = tokenizer(full, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        n = len(tokenizer(p, add_special_tokens=False)["input_ids"])
        out.append((ids, torch.cat([torch.full((n,), -100), ids[n:]])))
    return out


def test_retain_objectives(tiny, tmp_path):
    """ce at weight 1 is TRL's loss; a weight scales only the retain tokens; kl is KL(base || patched) per token."""
    model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=4, init_text="quick brown fox")
    examples = SFT[:4] + RETAIN[:4]
    cfg = TrainConfig(batch_size=8)
    trainer = make_sft_trainer(model, tiny.tokenizer, examples, cfg, str(tmp_path))
    batch = _first_batch(trainer)
    retain = batch["retain"]
    assert retain.sum() == 4 and not trainer.custom_loss
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(model, dict(batch)))
    ce, scored = trainer.per_token_loss(model, batch, retain)
    assert float(ce.detach().sum() / scored.sum()) == pytest.approx(trl_loss, rel=1e-4)

    rows = torch.arange(len(retain)).unsqueeze(1).expand_as(scored)[scored]
    trainer.retain_weight = 0.5
    weighted, _ = trainer.per_token_loss(model, batch, retain)
    factor = torch.where(retain[rows], 0.5, 1.0)
    assert torch.allclose(weighted, ce * factor)

    trainer.retain_weight, trainer.retain_objective = 1.0, "kl"
    kl, _ = trainer.per_token_loss(model, batch, retain)
    assert torch.allclose(kl[~retain[rows]], ce[~retain[rows]])  # risk tokens: cross-entropy as before
    assert (kl[retain[rows]] >= -1e-5).all()
    for i in range(len(retain)):
        if retain[i]:
            real = batch["attention_mask"][i].bool()
            expected = _kl_by_definition(model, batch["input_ids"][i][real], batch["labels"][i][real])
            assert torch.allclose(kl[rows == i], expected, rtol=1e-3, atol=1e-4)


def test_kl_retain_training_pulls_the_patch_towards_the_base_model(tiny):
    model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=4, init_text="quick brown fox")
    sequences = _sequences(tiny.tokenizer, RETAIN)
    before = sum(float(_kl_by_definition(model, ids, labels).sum()) for ids, labels in sequences)
    cfg = TrainConfig(sft_epochs=4, batch_size=8, sft_lr=3e-2, retain_objective="kl", probe_examples=0)
    result = train_sft(model, tiny.tokenizer, RETAIN, cfg)
    after = sum(float(_kl_by_definition(model, ids, labels).sum()) for ids, labels in sequences)
    assert result.steps == 4 and after < 0.5 * before


def test_replayed_examples_learn_the_kl_from_the_patch_as_the_stage_began(tiny, tmp_path):
    """replay_objective kl: a replayed risk example's tokens carry KL(p_start || p_now), p_start being the patch as
    the trainer was made, computed here by two plain forward passes; other risk and retain tokens are untouched,
    and at the start (the patch is its own reference) the KL is zero."""
    model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=4, init_text="quick brown fox")
    replayed = [{**e, "replay_of": "toxicity"} for e in SFT[:3]]
    examples = replayed + SFT[3:6] + RETAIN[:2]
    cfg = TrainConfig(batch_size=8, replay_objective="kl")
    start = get_prompt(model)
    trainer = make_sft_trainer(model, tiny.tokenizer, examples, cfg, str(tmp_path), replay_reference=Reference(start))
    assert trainer.custom_loss
    batch = _first_batch(trainer)
    retain, replay = batch["retain"], batch["replay"]
    assert int(replay.sum()) == 3 and not bool((replay & retain).any())
    zero, scored = trainer.per_token_loss(model, batch, retain, None, replay)
    rows = torch.arange(len(retain)).unsqueeze(1).expand_as(scored)[scored]
    assert torch.allclose(zero[replay[rows]], torch.zeros(()), atol=1e-5)

    set_prompt(model, start + 0.5 * torch.randn_like(start))  # the patch moves away from where the stage began
    loss, _ = trainer.per_token_loss(model, batch, retain, None, replay)
    trainer.replay_weight = 3.0
    weighted, _ = trainer.per_token_loss(model, batch, retain, None, replay)
    assert torch.allclose(weighted, torch.where(replay[rows], 3 * loss, loss))
    trainer.replay_reference = None
    ce, _ = trainer.per_token_loss(model, batch, retain, None, replay)
    assert torch.allclose(loss[~replay[rows]], ce[~replay[rows]])
    trainer.replay_weight = 1.0
    plain, _ = trainer.per_token_loss(model, batch, retain, None, replay)
    assert torch.allclose(ce, torch.where(replay[rows], 3 * plain, plain))  # the weight scales ce as well
    for i in range(len(replay)):
        if replay[i]:
            real = batch["attention_mask"][i].bool()
            expected = _kl_between(model, start, batch["input_ids"][i][real], batch["labels"][i][real])
            assert float(expected.sum()) > 0
            assert torch.allclose(loss[rows == i], expected, rtol=1e-3, atol=1e-4)


@torch.no_grad()
def _kl_between(model, start: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(p_start || p_now) at each labelled position of one unpadded sequence, ``start`` being another patch
    matrix, swapped in for one forward pass."""
    ids, at = ids.unsqueeze(0), (labels[1:] != -100).nonzero().squeeze(-1)
    now = torch.log_softmax(model(input_ids=ids).logits[0, -ids.shape[1]:].float(), -1)[at]
    current = get_prompt(model)
    set_prompt(model, start)
    before = torch.log_softmax(model(input_ids=ids).logits[0, -ids.shape[1]:].float(), -1)[at]
    set_prompt(model, current)
    return (before.exp() * (before - now)).sum(-1)


def test_kl_replay_keeps_what_the_earlier_stage_taught(tiny):
    """Trained on new answers for new prompts with old prompts replayed, the kl objective keeps the patch's answers
    to the old prompts closer to where the stage began than the cross-entropy on their old answers does."""
    old = [{"prompt": f"Describe colour {i}.", "completion": "A colour is a colour, and that is all.",
            "replay_of": "earlier"} for i in range(8)]
    new = [{"prompt": f"Tell me about item {i}.", "completion": "The quick brown fox jumps over the lazy dog."}
           for i in range(16)]
    sequences = _sequences(tiny.tokenizer, old)
    drift = {}
    for objective in ("ce", "kl"):
        model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=4, init_text="quick brown fox")
        start = get_prompt(model)
        cfg = TrainConfig(sft_epochs=3, batch_size=8, sft_lr=3e-2, replay_objective=objective, probe_examples=0)
        train_sft(model, tiny.tokenizer, old + new, cfg)
        drift[objective] = sum(float(_kl_between(model, start, ids, labels).sum()) for ids, labels in sequences)
    assert drift["kl"] < 0.8 * drift["ce"]


@torch.no_grad()
def _gap_by_definition(model, ids: torch.Tensor, labels: torch.Tensor, a: list[int], b: list[int],
                       per_position: bool = False) -> float:
    """|P_a - P_b| / (P_a + P_b) of one unpadded sequence, the sets' probabilities summed over its answer; with
    ``per_position``, sum_t |p_a(t) - p_b(t)| / sum_t (p_a(t) + p_b(t))."""
    ids, at = ids.unsqueeze(0), (labels[1:] != -100).nonzero().squeeze(-1)
    probs = torch.softmax(model(input_ids=ids).logits[0, -ids.shape[1]:].float(), -1)[at]
    m_a, m_b = probs[:, a].sum(-1), probs[:, b].sum(-1)
    if per_position:
        return float((m_a - m_b).abs().sum() / (m_a + m_b).sum())
    p_a, p_b = float(m_a.sum()), float(m_b.sum())
    return abs(p_a - p_b) / (p_a + p_b)


GROUP = ([5, 17, 40], [9, 33])  # two sets of token ids of the tiny vocabulary


@pytest.mark.parametrize("balance_loss", ["answer", "position"])
def test_the_equalizing_loss_adds_each_answers_gap_to_its_tokens(tiny, tmp_path, balance_loss):
    """balance_weight w: a flagged answer's tokens each carry w x its gap, as computed from a plain forward pass
    (balance_loss position: the sum of the positions' gaps over the sum of their masses, at least the answer's
    gap and above it where positions lean different ways); answers of no group (-1) and retain answers are
    untouched."""
    model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=4, init_text="quick brown fox")
    examples = [{**e, "balance": 0} for e in SFT[:4]] + SFT[4:6] + RETAIN[:2]
    cfg = TrainConfig(batch_size=8, balance_weight=2.0, balance_loss=balance_loss)
    trainer = make_sft_trainer(model, tiny.tokenizer, examples, cfg, str(tmp_path), balance_groups=[GROUP])
    assert trainer.custom_loss
    batch = _first_batch(trainer)
    retain, balance = batch.pop("retain"), batch.pop("balance")
    assert sorted(balance.tolist()) == [-1] * 4 + [0] * 4
    trainer.balance_weight = 0.0
    ce, scored = trainer.per_token_loss(model, batch, retain, balance)
    trainer.balance_weight = 2.0
    with_gap, _ = trainer.per_token_loss(model, batch, retain, balance)
    rows = torch.arange(len(retain)).unsqueeze(1).expand_as(scored)[scored]
    above = 0
    for i in range(len(retain)):
        added = (with_gap - ce)[rows == i]
        if balance[i] < 0:
            assert torch.allclose(added, torch.zeros_like(added))
            continue
        real = batch["attention_mask"][i].bool()
        seq = batch["input_ids"][i][real], batch["labels"][i][real]
        gap = _gap_by_definition(model, *seq, *GROUP, per_position=balance_loss == "position")
        assert 0 < gap <= 1 and torch.allclose(added, torch.full_like(added, 2.0 * gap), rtol=1e-3, atol=1e-5)
        answer_gap = _gap_by_definition(model, *seq, *GROUP)
        assert gap >= answer_gap - 1e-6
        above += gap > answer_gap + 1e-4
    assert (above > 0) == (balance_loss == "position")


def test_a_balanced_distribution_moves_only_the_two_sets_mass():
    """balanced_distribution: the two sets end with equal mass, together what they had; within each set and outside
    both the proportions are kept; each row still sums to 1."""
    logq = torch.log_softmax(torch.randn(5, 64, generator=torch.Generator().manual_seed(0)) * 3, -1)
    a, b = GROUP
    out = balanced_distribution(logq, *GROUP)
    q, r = logq.exp(), out.exp()
    assert torch.allclose(r.sum(-1), torch.ones(5), atol=1e-5)
    assert torch.allclose(r[:, a].sum(-1), r[:, b].sum(-1), atol=1e-6)
    assert torch.allclose(r[:, a].sum(-1) + r[:, b].sum(-1), q[:, a].sum(-1) + q[:, b].sum(-1), atol=1e-6)
    rest = [i for i in range(64) if i not in a + b]
    assert torch.equal(out[:, rest], logq[:, rest])
    for s in (a, b):
        assert torch.allclose(r[:, s] / r[:, s].sum(-1, keepdim=True), q[:, s] / q[:, s].sum(-1, keepdim=True))


def _added_by_balance_loss(tiny, tmp_path, balance_loss: str, **settings):
    """A patch's first batch of 4 flagged answers, 2 of no group and 2 retain ones, under ``balance_loss`` at weight
    2: per flagged answer, what the loss adds to its scored tokens and the patched and unpatched next-token
    probabilities there (float64, from plain forward passes); asserts the other answers get nothing added."""
    model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=4, init_text="quick brown fox")
    examples = [{**e, "balance": 0} for e in SFT[:4]] + SFT[4:6] + RETAIN[:2]
    cfg = TrainConfig(batch_size=8, balance_weight=2.0, balance_loss=balance_loss, **settings)
    trainer = make_sft_trainer(model, tiny.tokenizer, examples, cfg, str(tmp_path), balance_groups=[GROUP])
    batch = _first_batch(trainer)
    retain, balance = batch.pop("retain"), batch.pop("balance")
    trainer.balance_weight = 0.0
    ce, scored = trainer.per_token_loss(model, batch, retain, balance)
    trainer.balance_weight = 2.0
    with_loss, _ = trainer.per_token_loss(model, batch, retain, balance)
    rows = torch.arange(len(retain)).unsqueeze(1).expand_as(scored)[scored]
    answers = []
    for i in range(len(retain)):
        added = (with_loss - ce)[rows == i]
        if balance[i] < 0:
            assert torch.allclose(added, torch.zeros_like(added))
            continue
        real = batch["attention_mask"][i].bool()
        ids, labels = batch["input_ids"][i][real].unsqueeze(0), batch["labels"][i][real]
        at = (labels[1:] != -100).nonzero().squeeze(-1)
        with torch.no_grad():
            patched = torch.log_softmax(model(input_ids=ids).logits[0, -ids.shape[1]:].double(), -1)[at]
            base = torch.log_softmax(tiny.model(input_ids=ids).logits[0].double(), -1)[at]
        answers.append((added.double(), patched, base))
    assert len(answers) == 4
    return trainer, answers


def test_an_answer_not_to_imitate_carries_its_equalizing_loss_alone(tiny, tmp_path):
    """imitate False (the patch's own answer, balance_own_rounds): no cross-entropy on its tokens, only the
    equalizing loss of the form balance_own_loss; the answers to imitate keep theirs and balance_loss's."""
    model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=4, init_text="quick brown fox")
    examples = [{**e, "balance": 0, "imitate": i % 2 == 0} for i, e in enumerate(SFT[:4])] + RETAIN[:2]
    cfg = TrainConfig(batch_size=8, balance_weight=2.0, balance_loss="mass", balance_own_loss="shift")
    trainer = make_sft_trainer(model, tiny.tokenizer, examples, cfg, str(tmp_path), balance_groups=[GROUP])
    batch = _first_batch(trainer)
    retain, balance, replay, imitate = (batch.pop(k) for k in ("retain", "balance", "replay", "imitate"))
    assert sorted(imitate.tolist()) == [False, False, True, True, True, True]

    def loss(form, weight=2.0, flags=None):
        trainer.balance_loss, trainer.balance_weight = form, weight
        return trainer.per_token_loss(model, batch, retain, balance, replay, flags)

    (mass, scored), (shift, _), (ce, _) = loss("mass"), loss("shift"), loss("mass", 0.0)
    own, _ = loss("mass", flags=imitate)
    rows = torch.arange(len(retain)).unsqueeze(1).expand_as(scored)[scored]
    for i in range(len(retain)):
        at = rows == i
        expected = mass[at] if imitate[i] else shift[at] - ce[at]
        assert bool((ce[at] > 0).all()) and torch.allclose(own[at], expected, atol=1e-5)
        if balance[i] >= 0 and not imitate[i]:
            assert bool((own[at] > 0).all()) and not torch.allclose(own[at], mass[at] - ce[at], atol=1e-4)
    trainer.balance_own_loss = "mass"
    alone, _ = loss("mass", flags=imitate)
    assert torch.allclose(alone[~imitate[rows]], (mass - ce)[~imitate[rows]], atol=1e-5)


def test_the_counterfactual_equalizing_loss_adds_kl_to_the_balanced_unpatched_model(tiny, tmp_path):
    """balance_loss counterfactual, weight w: each token of a flagged answer carries w x KL(q' || p), q' the
    unpatched model's distribution there with the two sets balanced, p the patched one (both from plain forward
    passes); answers of no group and retain answers are untouched."""
    _, answers = _added_by_balance_loss(tiny, tmp_path, "counterfactual")
    for added, patched, base in answers:
        target = balanced_distribution(base, *GROUP)
        expected = (target.exp() * (target - patched)).sum(-1)
        assert bool((expected > 0).all())
        assert torch.allclose(added, 2.0 * expected, rtol=1e-3, atol=1e-5)


def test_the_shift_equalizing_loss_is_kl_to_the_patch_itself_balanced(tiny, tmp_path):
    """balance_loss shift, weight w: each token of a flagged answer carries w x KL(p' || p) / m, p' the patched
    distribution there with the two sets balanced, m the answer's mean mass on the two sets; its gradient moves mass
    between the two sets only (every other token's probability is kept to first order); answers of no group and
    retain answers are untouched."""
    trainer, answers = _added_by_balance_loss(tiny, tmp_path, "shift")
    a, b = GROUP
    for added, patched, _ in answers:
        target = balanced_distribution(patched, *GROUP)
        mass = patched[:, a + b].exp().sum(-1).mean()
        expected = (target.exp() * (target - patched)).sum(-1) / mass
        assert bool((expected > 0).all())
        assert torch.allclose(added, 2.0 * expected, rtol=1e-3, atol=1e-5)
    # the gradient on the logits of one position: p - p', zero outside the two sets
    logits = torch.randn(1, 64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    logp = torch.log_softmax(logits, -1)
    kl = trainer.balanced_kl(logp.detach(), logp, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    (grad,) = torch.autograd.grad(kl.sum(), [logits])
    p = logp.detach().exp()
    assert torch.allclose(grad, p - balanced_distribution(logp.detach(), *GROUP).exp(), atol=1e-6)
    rest = [t for t in range(64) if t not in a + b]
    assert torch.allclose(grad[:, rest], torch.zeros(1, len(rest)), atol=1e-7)
    heavy, light = (a, b) if p[0, a].sum() > p[0, b].sum() else (b, a)
    assert bool((grad[0, heavy] > 0).all()) and bool((grad[0, light] < 0).all())


def test_the_lead_weight_scales_the_cross_entropy_of_an_answers_opening_and_nothing_else(tiny, tmp_path):
    """lead_weight w: the first ``lead`` scored tokens of an example's answer (its teacher's own opening) carry w
    times their cross-entropy; every other token, and every token of an answer without a lead, keeps its own. With
    lead_tokens k only the opening's last k tokens carry it."""
    model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=4, init_text="quick brown fox")
    examples = [{**e, "lead": 3} for e in SFT[:3]] + SFT[3:6] + RETAIN[:2]
    trainer = make_sft_trainer(model, tiny.tokenizer, examples, TrainConfig(batch_size=8, lead_weight=4.0),
                               str(tmp_path))
    assert trainer.custom_loss
    batch = _first_batch(trainer)
    retain, balance, lead = batch.pop("retain"), batch.pop("balance"), batch["lead"]
    assert sorted(lead.tolist()) == [0] * 5 + [3] * 3
    weighted, scored = trainer.per_token_loss(model, batch, retain, balance)
    plain, _ = trainer.per_token_loss(model, {k: v for k, v in batch.items() if k != "lead"}, retain, balance)
    rank = (scored.cumsum(1) - 1)[scored]  # each scored token's place in its answer
    rows = torch.arange(len(retain)).unsqueeze(1).expand_as(scored)[scored]
    opening = rank < lead[rows]
    assert int(opening.sum()) == 9
    assert torch.allclose(weighted[opening], 4.0 * plain[opening]) and torch.equal(weighted[~opening], plain[~opening])
    trainer.lead_tokens = 1  # only the opening's last token (the decision, "they" of "{prompt} they")
    last, _ = trainer.per_token_loss(model, batch, retain, balance)
    decision = rank == lead[rows] - 1
    assert int(decision.sum()) == 3
    assert torch.allclose(last[decision], 4.0 * plain[decision]) and torch.equal(last[~decision], plain[~decision])
    trainer.lead_rest_weight = 0.0  # the rest of the opening (the echoed story sentence) leaves the loss
    echo, _ = trainer.per_token_loss(model, batch, retain, balance)
    before = opening & ~decision
    assert int(before.sum()) == 6 and bool((echo[before] == 0).all())
    assert torch.allclose(echo[decision], 4.0 * plain[decision]) and torch.equal(echo[~opening], plain[~opening])
    with pytest.raises(ValueError, match="lead_rest_weight must be >= 0"):
        TrainConfig(lead_rest_weight=-0.5)
    trainer.lead_rest_weight, trainer.echo_weight = 1.0, 0.0  # the echo alone: the first 2 tokens of each opening
    echoed = {**batch, "echo": torch.tensor([2 if n else 0 for n in lead.tolist()])}
    quiet, _ = trainer.per_token_loss(model, echoed, retain, balance)
    repeats = rank < 2 * (lead[rows] > 0)
    assert int(repeats.sum()) == 6 and bool((quiet[repeats] == 0).all())
    middle = opening & ~repeats & ~decision
    assert torch.equal(quiet[middle], plain[middle]) and torch.allclose(quiet[decision], 4.0 * plain[decision])
    assert torch.equal(quiet[~opening], plain[~opening])
    trainer.lead_rest_weight, trainer.echo_weight = 3.0, 0.5  # both: the echo takes echo_weight alone
    both, _ = trainer.per_token_loss(model, echoed, retain, balance)
    assert torch.allclose(both[repeats], 0.5 * plain[repeats]) and torch.allclose(both[middle], 3.0 * plain[middle])
    with pytest.raises(ValueError, match="echo_weight must be >= 0"):
        TrainConfig(echo_weight=-1.0)
    with pytest.raises(ValueError, match="lead_weight must be >= 0"):
        TrainConfig(lead_weight=-1.0)
    with pytest.raises(ValueError, match="lead_tokens must be >= 0"):
        TrainConfig(lead_tokens=-1)


@pytest.mark.parametrize("scale", [1.0, 0.4])
def test_the_mass_equalizing_loss_is_a_three_outcome_kl_to_the_balanced_unpatched_mass(tiny, tmp_path, scale):
    """balance_loss mass, weight w: each token of a flagged answer carries w x KL((h, h, 1 - 2h) || (p_a, p_b,
    1 - p_a - p_b)) / m, h half the unpatched model's mass on the two sets there times balance_mass_scale, m the
    answer's mean mass on the two sets under the unpatched model; answers of no group and retain answers are
    untouched."""
    _, answers = _added_by_balance_loss(tiny, tmp_path, "mass", balance_mass_scale=scale)
    a, b = GROUP
    for added, patched, base in answers:
        p, q = patched.exp(), base.exp()
        h = scale * q[:, a + b].sum(-1) / 2
        p_a, p_b = p[:, a].sum(-1), p[:, b].sum(-1)
        expected = (h * torch.log(h / p_a) + h * torch.log(h / p_b)
                    + (1 - 2 * h) * torch.log((1 - 2 * h) / (1 - p_a - p_b))) / q[:, a + b].sum(-1).mean()
        assert torch.allclose(added, 2.0 * expected, rtol=1e-3, atol=1e-5)


def test_a_mass_scale_outside_zero_to_one_is_refused():
    for scale in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="balance_mass_scale must be in"):
            TrainConfig(balance_mass_scale=scale)


@pytest.mark.parametrize("balance_loss", ["answer", "position", "shift", "mass"])
def test_the_equalizing_loss_balances_the_two_sets(tiny, balance_loss):
    """Trained with it (either form), the answers' gap between the two sets shrinks; without it, on the same data,
    it does not shrink as much."""
    examples = [{**e, "balance": 0} for e in SFT[:8]]
    sequences = _sequences(tiny.tokenizer, examples)

    def gap(model):
        return sum(_gap_by_definition(model, ids, labels, *GROUP) for ids, labels in sequences) / len(sequences)

    after = {}
    for weight in (0.0, 5.0):
        model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=4, init_text="quick brown fox")
        before = gap(model)
        cfg = TrainConfig(sft_epochs=6, batch_size=8, sft_lr=3e-2, balance_weight=weight, balance_loss=balance_loss,
                          probe_examples=0)
        train_sft(model, tiny.tokenizer, examples, cfg, balance_groups=[GROUP])
        after[weight] = gap(model)
    assert after[5.0] < 0.5 * before and after[5.0] < after[0.0]


def test_the_counterfactual_equalizing_loss_balances_the_two_sets(tiny):
    """balance_loss counterfactual: trained with it, the answers' gap between two sets shrinks where the unpatched
    model puts real mass on them (its KL's pull on the balance grows with the sets' mass: the tiny model's mass on
    GROUP, ~1e-4 per position, is too little to tell, so the sets here are the tokens the unpatched model finds most
    probable along the answers, outside the answers' own tokens); without it the gap grows as the answer is learnt."""
    examples = [{**e, "balance": 0} for e in SFT[:8]]
    sequences = _sequences(tiny.tokenizer, examples)
    answer = set(sequences[0][0][sequences[0][1] != -100].tolist())
    with torch.no_grad():
        mass = sum(torch.softmax(tiny.model(input_ids=ids.unsqueeze(0)).logits[0].float(), -1)[
            (labels[1:] != -100).nonzero().squeeze(-1)].sum(0) for ids, labels in sequences)
    top = [t for t in mass.argsort(descending=True).tolist() if t not in answer][:6]
    group = (top[0::2], top[1::2])

    def gap(model):
        return sum(_gap_by_definition(model, ids, labels, *group) for ids, labels in sequences) / len(sequences)

    after = {}
    for weight in (0.0, 5.0):
        model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=4, init_text="quick brown fox")
        cfg = TrainConfig(sft_epochs=6, batch_size=8, sft_lr=3e-2, balance_weight=weight,
                          balance_loss="counterfactual", probe_examples=0)
        train_sft(model, tiny.tokenizer, examples, cfg, balance_groups=[group])
        after[weight] = gap(model)
    assert after[5.0] < 0.5 * after[0.0]


def _patch_grad(model, loss: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    return grad


def test_agem_projection_removes_only_what_would_raise_the_replayed_loss(tiny, tmp_path):
    """replay_projection agem: the step's gradient is g_new + g_replay, from the two sub-batches' plain per-token
    losses, with g_new's component along g_replay removed exactly when they conflict; its value is the whole
    batch's loss. Checked on a patch where the two conflict and on one where they do not."""
    model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=4, init_text="quick brown fox")
    replayed = [{"prompt": f"Describe colour {i}.", "completion": "The quick brown fox jumps over the lazy dog.",
                 "replay_of": "earlier"} for i in range(3)]
    examples = replayed + SFT[:3] + RETAIN[:2]
    trainer = make_sft_trainer(model, tiny.tokenizer, examples, TrainConfig(batch_size=8, replay_projection="agem"),
                               str(tmp_path))
    assert trainer.custom_loss
    batch = _first_batch(trainer)
    retain, balance, replay = batch.pop("retain"), batch.pop("balance"), batch.pop("replay")
    count = batch["labels"][:, 1:].ne(-100).sum()
    seen = set()
    for trial in range(20):
        set_prompt(model, torch.randn_like(get_prompt(model)))
        per_token, _ = trainer.per_token_loss(model, batch, retain, balance, replay)
        plain = per_token.sum() / count
        parts = []
        for rows in (~replay, replay):
            part = _rows_of(batch, rows)  # the sub-batch as the trainer runs it (without all-padding columns)
            piece, _ = trainer.per_token_loss(model, part, retain[rows], balance[rows], replay[rows])
            parts.append(_patch_grad(model, piece.sum() / count))
        g_new, g_replay = parts
        dot = (g_new * g_replay).sum()
        expected = g_new + g_replay if dot >= 0 else g_new - dot / (g_replay * g_replay).sum() * g_replay + g_replay
        before = trainer.projected_steps
        loss = trainer.projected_loss(model, batch, retain, balance, replay)
        assert torch.allclose(loss, plain, rtol=1e-4)
        got = _patch_grad(model, loss)
        assert torch.allclose(got, expected, rtol=1e-3, atol=1e-6)
        assert trainer.projected_steps == before + int(dot < 0)
        assert float(((got - g_replay) * g_replay).sum()) >= -1e-6 * float((g_replay * g_replay).sum())
        seen.add(bool(dot < 0))
        if seen == {True, False}:
            break
    assert seen == {True, False}, "no random patch gave both a conflicting and an agreeing pair of gradients"


def test_agem_trains_and_counts_its_projected_steps(tiny, monkeypatch):
    """train_sft with replay_projection agem trains the patch and reports how many steps it projected; a stage
    without replayed examples trains as without it (same patch), and several processes are refused."""
    replayed = [{**e, "replay_of": "earlier"} for e in PAIRS_AS_SFT[:4]]
    cfg = TrainConfig(sft_epochs=2, batch_size=8, sft_lr=3e-2, replay_projection="agem", probe_examples=0)
    model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=4, init_text="quick brown fox")
    result = train_sft(model, tiny.tokenizer, replayed + SFT[:12], cfg)
    assert result.steps == 4 and 0 <= result.projected_steps <= result.steps
    assert result.to_dict()["projected_steps"] == result.projected_steps and "projected" in result.summary()
    patches = []
    for projection in ("agem", "none"):
        model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=4, init_text="quick brown fox")
        train_sft(model, tiny.tokenizer, SFT, TrainConfig(sft_epochs=1, batch_size=8, sft_lr=3e-2, probe_examples=0,
                                                          replay_projection=projection))
        patches.append(get_prompt(model))
    assert torch.allclose(patches[0], patches[1], atol=1e-6)
    with pytest.raises(ValueError, match="replay_projection must be 'none' or 'agem'"):
        TrainConfig(replay_projection="pcgrad")
    monkeypatch.setattr("compose.distributed.active", lambda: True)
    with pytest.raises(ValueError, match="replay_projection agem runs in one process"):
        train_sft(model, tiny.tokenizer, replayed + SFT[:12], cfg)



def test_subsets_of_blocks_always_hold_the_examples_own_block():
    """MOSAIC's order-based sampling: the own block always, the number of active blocks uniform in 1..n (the
    whole patch one draw in n), any blocks for a retain example; the same seed draws the same subsets."""
    own = torch.tensor([0, 1, 2, -1] * 600)
    active = sample_active_blocks(own, 3, torch.Generator().manual_seed(0))
    risk = own >= 0
    assert active[torch.arange(len(own))[risk], own[risk]].all()
    sizes = active.sum(1)
    assert set(sizes.tolist()) == {1, 2, 3}
    for k in (1, 2, 3):
        assert abs(float((sizes[risk] == k).float().mean()) - 1 / 3) < 0.05
    alone = active[~risk][sizes[~risk] == 1]  # a retain example with one block: each block in turn
    assert alone.any(0).all()
    assert torch.equal(active, sample_active_blocks(own, 3, torch.Generator().manual_seed(0)))


def test_an_inactive_block_is_invisible_to_the_example(tiny, tmp_path):
    """A block outside an example's drawn subset does not change its loss or get its gradient; an active one
    does; after training the hook is gone from the shared base model."""
    model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=6, init_text="quick brown fox")
    examples = [{**e, "source": "risk", "block": 0} for e in SFT[:4]]
    trainer = make_sft_trainer(model, tiny.tokenizer, examples, TrainConfig(batch_size=4), str(tmp_path),
                               blocks=[(0, 2), (2, 6)])
    batch = _first_batch(trainer)
    assert batch["block"].tolist() == [0, 0, 0, 0]
    start = get_prompt(model)

    def loss_and_grad(active_second: bool, shift: float = 0.0):
        moved = start.clone()
        moved[2:] += shift
        set_prompt(model, moved)
        model.zero_grad()
        trainer._active = torch.tensor([[1.0, 1.0] + [float(active_second)] * 4] * 4)
        try:
            loss = trainer._compute_loss(model, {k: v for k, v in batch.items() if k != "block"})
        finally:
            trainer._active = None
        loss.backward()
        return float(loss.detach()), prompt_parameter(model).grad.detach().clone()

    masked, grad = loss_and_grad(False)
    assert loss_and_grad(False, shift=1.0)[0] == pytest.approx(masked, abs=1e-6)
    assert float(grad[2:].abs().max()) == 0.0 and float(grad[:2].abs().max()) > 0
    seen, grad = loss_and_grad(True)
    assert loss_and_grad(True, shift=1.0)[0] != pytest.approx(seen, abs=1e-3)
    assert float(grad[2:].abs().max()) > 0
    set_prompt(model, start)
    trainer.release_blocks()
    assert not model.get_base_model()._forward_pre_hooks


def test_own_block_gradients_hold_the_other_active_blocks_still(tiny, tmp_path):
    """block_gradients own: a risk example's loss is that of every active block (the same value), but only its
    own block gets a gradient; a retain example (block -1) trains every active block. Off, both blocks learn."""
    model = attach_patch(tiny.model, tiny.tokenizer, num_tokens=6, init_text="quick brown fox")
    examples = [{**e, "source": "risk", "block": 1} for e in SFT[:4]]

    def loss_and_grad(gradients: str, own: int):
        trainer = make_sft_trainer(model, tiny.tokenizer, examples, TrainConfig(batch_size=4, block_gradients=gradients),
                                   str(tmp_path / gradients), blocks=[(0, 2), (2, 6)])
        batch = _first_batch(trainer)
        block = torch.full_like(batch.pop("block"), own)
        model.zero_grad()
        trainer._active = torch.ones(4, 6)  # every block active
        trainer._held = trainer._others_rows(block) if trainer.own_gradients else None
        try:
            loss = trainer._compute_loss(model, batch)
        finally:
            trainer._active = trainer._held = None
            trainer.release_blocks()
        loss.backward()
        return float(loss.detach()), prompt_parameter(model).grad.detach().clone()

    both, grad_both = loss_and_grad("active", own=1)
    own, grad_own = loss_and_grad("own", own=1)
    assert own == pytest.approx(both, rel=1e-6)
    assert float(grad_own[:2].abs().max()) == 0.0 and torch.allclose(grad_own[2:], grad_both[2:], atol=1e-6)
    assert float(grad_both[:2].abs().max()) > 0
    _, grad_retain = loss_and_grad("own", own=-1)
    assert float(grad_retain[:2].abs().max()) > 0 and float(grad_retain[2:].abs().max()) > 0
    with pytest.raises(ValueError, match="block_gradients must be 'active' or 'own'"):
        TrainConfig(block_gradients="mine")
