"""Two-stage training of a patch with TRL: SFT on teacher responses, then DPO on (teacher, base) pairs.

Both stages train the same PEFT prompt-tuning patch in place; the base model stays frozen. The DPO
reference is explicit (``Reference``): a fixed soft prompt in front of the frozen base model (none: the bare
base model). A run uses the patch as SFT left it (``TrainConfig.dpo_reference = "sft"``, the standard
SFT-then-DPO recipe) or the model before this stage (``"base"``; for a stacked block, the frozen earlier
blocks). Its log-probabilities are computed once per dataset before training (TRL's
``precompute_ref_log_probs``), not at every step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field

import torch
from peft import PeftModel
from trl import DPOTrainer, SFTTrainer

from compose import distributed
from compose.generation import is_patched
from compose.patch import freeze_rows, get_prompt, prompt_parameter

log = logging.getLogger(__name__)


# what the equalizing loss measures (TrainConfig.balance_loss)
BALANCE_LOSSES = ("answer", "position", "counterfactual", "shift", "mass")
AGAINST_BASE = ("counterfactual", "mass")  # the forms whose target comes from the unpatched model


@dataclass
class TrainConfig:
    """Settings of both training stages (the published recipe: ~10 SFT epochs at lr 3e-3, then DPO)."""

    sft_epochs: float = field(default=3.0, metadata={"help": "SFT epochs over the teacher responses"})
    sft_lr: float = field(default=3e-3, metadata={"help": "SFT learning rate"})
    dpo_epochs: float = field(default=2.0, metadata={"help": "DPO epochs over the preference pairs (0 skips DPO)"})
    dpo_lr: float = field(default=1e-3, metadata={"help": "DPO learning rate"})
    beta: float = field(default=0.1, metadata={"help": "DPO beta: higher stays closer to the reference"})
    dpo_reference: str = field(default="sft", metadata={
        "help": "DPO reference: sft (the patch as SFT left it, the standard recipe: DPO refines the SFT policy) or "
                "base (the model without this stage's training; DPO then fights what SFT taught)"})
    batch_size: int = field(default=8, metadata={"help": "examples per step (DPO: pairs per step)"})
    max_length: int = field(default=192, metadata={"help": "max tokens of prompt + response"})
    warmup_ratio: float = field(default=0.0, metadata={"help": "share of steps with a linear warm-up"})
    seed: int = field(default=0, metadata={"help": "seed of data order and sampling"})
    max_steps: int = field(default=-1, metadata={"help": "cap on steps per stage (-1: no cap; for smoke tests)"})
    retain_objective: str = field(default="ce", metadata={
        "help": "how SFT learns the retain (benign) examples: ce (cross-entropy on the base model's own answer) or kl "
                "(KL from the unpatched model's next-token distribution along that answer: every token's whole "
                "distribution is kept, not only the sampled token)"})
    retain_weight: float = field(default=1.0, metadata={"help": "weight of the retain examples' SFT loss per token"})
    replay_objective: str = field(default="ce", metadata={
        "help": "how SFT learns the replayed risk examples of earlier stages: ce (cross-entropy on their teacher's "
                "answer) or kl (KL from the next-token distribution of the patch as this stage began, along that "
                "answer: the stage keeps what the earlier stages taught instead of learning it again)"})
    replay_weight: float = field(default=1.0, metadata={"help": "weight of the replayed risk examples' SFT loss per "
                                                                "token (either objective)"})
    replay_projection: str = field(default="none", metadata={
        "help": "none, or agem: where the gradient of this stage's own examples would raise the replayed examples' "
                "loss (their dot product is negative), that component is removed before the step (A-GEM, Chaudhry "
                "et al. 2019), so a stage learns its risk in directions that do not undo the earlier ones; the "
                "replayed examples' own gradient is added as usual (one process only)"})
    replay_fresh: int = field(default=0, metadata={
        "help": "with replay (sequential-replay, stacked): per earlier risk, this many prompts of its training split "
                "that no stage trained on, answered greedily (as the risk is evaluated) by the patch that risk's own "
                "stage left (stacked: by the patch as this stage begins), added to the replayed examples: the stage "
                "keeps what the earlier stages made of prompts beyond the ones they learned (self-distillation on "
                "fresh prompts), where replaying their own examples keeps those examples; they carry the replayed "
                "examples' objective, weight and projection, and an earlier risk's equalizing loss and lead "
                "weight; 0: off"})
    balance_weight: float = field(default=0.0, metadata={
        "help": "weight of the equalizing loss on the risk examples of a risk that names two token sets to balance "
                "(bias: male and female words): per answer |P_a - P_b| / (P_a + P_b), each set's probability summed "
                "over the answer's positions (the bias risk's GLD, on the teacher's answer), added to every scored "
                "token of that answer; 0: off"})
    balance_loss: str = field(default="answer", metadata={
        "help": "what the equalizing loss measures: answer (the answer's gap |P_a - P_b| / (P_a + P_b), the metric "
                "itself: positions leaning one way can cancel positions leaning the other), position "
                "(sum_t |p_a(t) - p_b(t)| / sum_t (p_a(t) + p_b(t)), an upper bound of the answer's gap that no "
                "cancellation lowers: every position is pulled towards equal mass) or counterfactual (at every "
                "position, KL from the unpatched model's next-token distribution with the two sets' mass made "
                "equal: the balance is learned while every other token keeps the unpatched model's probability, "
                "so the patch gains nothing by leaving the kind of answer the model gives) or shift (at every "
                "position, KL from the patched model's own next-token distribution, held fixed, with the two sets' "
                "mass made equal, over the answer's mean mass on the two sets: mass moves from one set to the other "
                "in proportion to the position's relative imbalance, and nothing else is asked: no pull back to the "
                "unpatched model, no gain from fewer gendered words at a position) or mass (at every "
                "position, KL over three outcomes, one set, the other, any other token, from the unpatched model's "
                "with its two sets' mass made equal, over the answer's mean mass on the two sets under the unpatched "
                "model: the balance, at the unpatched model's total mass on the two sets, and nothing about which "
                "other token comes next)"})
    balance_mass_scale: float = field(default=1.0, metadata={
        "help": "with balance_loss mass: the two sets' total mass asked for, as a share of the unpatched model's at "
                "each position (1: the same total; 0.5: half of it, each set a quarter). Where the teacher's "
                "answer puts a neutral word where the unpatched model would put a gendered one (\"... and they\"), "
                "a total held at the unpatched model's leaves the neutral word less room than the two gendered "
                "sets; in (0, 1]"})
    lead_weight: float = field(default=1.0, metadata={
        "help": "weight of the cross-entropy on the lead of a risk example's answer: the opening its teacher wrote "
                "before the base model continued (a prefilled teacher's, e.g. the bias risk's teacher_prefill "
                "\"{prompt} they\": the story sentence and the neutral word after it, the answer's decision), over "
                "the other tokens' weight of 1; answers without a lead are unchanged"})
    lead_tokens: int = field(default=0, metadata={
        "help": "with lead_weight: how many of the lead's last tokens carry it (0: the whole lead). 1 weighs only the "
                "decision itself (\"they\" of \"{prompt} they\"), not the story sentence the teacher echoes before it, "
                "which a patch that learns it heavily echoes for every prompt, the other risks' too"})
    lead_rest_weight: float = field(default=1.0, metadata={
        "help": "with lead_weight and lead_tokens: weight of the cross-entropy on the rest of the lead, the tokens "
                "before its last lead_tokens. It applies to every prefilled teacher's lead in the stage: the harm "
                "risk's refusal prefill is one, and at 0 in a harm stage the refusal itself leaves the loss; "
                "echo_weight weighs only the part of a lead that repeats the prompt"})
    echo_weight: float = field(default=1.0, metadata={
        "help": "weight of the cross-entropy on the part of a risk example's lead that repeats its prompt (a "
                "\"{prompt} they\" teacher's echoed story sentence), over the other tokens' weight of 1 (and instead "
                "of lead_weight there). 0 leaves the echo out of the loss: a patch that learns it repeats whatever it "
                "is given, a toxicity prompt's insult among them. Leads that do not repeat the prompt (the harm "
                "risk's refusal prefill) are unaffected"})
    balance_own_rounds: int = field(default=0, metadata={
        "help": "rounds of balancing the patch's own answers after SFT: each round the patch answers the prompts of "
                "the balanced risk examples greedily (as the risk is evaluated), and SFT runs one more epoch over its "
                "examples plus those answers, which carry the equalizing loss alone (no cross-entropy): the balance is "
                "asked where the patch's own answers go, not only along the teacher's; 0: off"})
    own_pairs: bool = field(default=False, metadata={
        "help": "before DPO, the patch answers the prompts of its stage's risk examples greedily (as the risk is "
                "evaluated); every answer its risk scores unsafe (below min_chosen_safety) becomes the rejected "
                "answer of one more DPO pair, the teacher's answer to that prompt the chosen one: DPO learns against "
                "the patch's own failures after SFT (on-policy negatives), not only the base model's"})
    own_pairs_rounds: int = field(default=1, metadata={
        "help": "with own_pairs, rounds of DPO against the patch's own failures: after each round's DPO the patch "
                "answers again, and its answers still scored unsafe become the rejected answers of the next round, "
                "which runs DPO over the stage's pairs plus those (the reference: the patch as that round begins, "
                "with dpo_reference sft); a round with no unsafe answer left ends them (iterative, on-policy DPO)"})
    balance_own_loss: str = field(default="shift", metadata={
        "help": "the equalizing loss on the patch's own answers (balance_own_rounds), one of balance_loss's forms: "
                "shift (default) moves mass from one set to the other and asks nothing else; mass would hold the "
                "unpatched model's total mass on the two sets, which along an answer that already names a gender "
                "is large, so it asks for more gendered words"})
    block_gradients: str = field(default="active", metadata={
        "help": "with random subsets of blocks active (strategy modular): which of an example's active blocks its "
                "loss trains: active (all of them) or own (its own risk's block alone, the others active but held "
                "still, so one risk's objective never moves another risk's block; a retain example trains every "
                "active block)"})
    probe_examples: int = field(default=8, metadata={"help": "risk and retain examples (each) held back from training "
                                                             "to watch the decision (DecisionProbe) after every SFT "
                                                             "epoch; 0: none"})

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.sft_epochs < 0 or self.dpo_epochs < 0:
            raise ValueError("epochs must be >= 0")
        if self.retain_objective not in ("ce", "kl"):
            raise ValueError(f"retain_objective must be 'ce' or 'kl', got {self.retain_objective!r}")
        if self.replay_objective not in ("ce", "kl"):
            raise ValueError(f"replay_objective must be 'ce' or 'kl', got {self.replay_objective!r}")
        if self.replay_projection not in ("none", "agem"):
            raise ValueError(f"replay_projection must be 'none' or 'agem', got {self.replay_projection!r}")
        if self.retain_weight < 0 or self.replay_weight < 0:
            raise ValueError(f"retain_weight and replay_weight must be >= 0, got {self.retain_weight}, "
                             f"{self.replay_weight}")
        if self.replay_fresh < 0:
            raise ValueError(f"replay_fresh must be >= 0, got {self.replay_fresh}")
        if self.balance_weight < 0:
            raise ValueError(f"balance_weight must be >= 0, got {self.balance_weight}")
        if not 0 < self.balance_mass_scale <= 1:
            raise ValueError(f"balance_mass_scale must be in (0, 1], got {self.balance_mass_scale}")
        if self.lead_weight < 0:
            raise ValueError(f"lead_weight must be >= 0, got {self.lead_weight}")
        if self.lead_tokens < 0:
            raise ValueError(f"lead_tokens must be >= 0, got {self.lead_tokens}")
        if self.lead_rest_weight < 0:
            raise ValueError(f"lead_rest_weight must be >= 0, got {self.lead_rest_weight}")
        if self.echo_weight < 0:
            raise ValueError(f"echo_weight must be >= 0, got {self.echo_weight}")
        if self.own_pairs_rounds < 1:
            raise ValueError(f"own_pairs_rounds must be >= 1, got {self.own_pairs_rounds}")
        if self.balance_own_rounds < 0:
            raise ValueError(f"balance_own_rounds must be >= 0, got {self.balance_own_rounds}")
        for name in ("balance_loss", "balance_own_loss"):
            if getattr(self, name) not in BALANCE_LOSSES:
                raise ValueError(f"{name} must be one of {', '.join(BALANCE_LOSSES)}, got {getattr(self, name)!r}")
        if self.block_gradients not in ("active", "own"):
            raise ValueError(f"block_gradients must be 'active' or 'own', got {self.block_gradients!r}")
        if self.dpo_reference not in ("sft", "base"):
            raise ValueError(f"dpo_reference must be 'sft' or 'base', got {self.dpo_reference!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StageResult:
    """What one training stage did: the logged losses, how long it took and on how much data."""

    stage: str
    steps: int = 0
    examples: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0
    probes: list[dict] = field(default_factory=list)  # DecisionProbe measurements (SFT with held-back examples)
    projected_steps: int | None = None  # replay_projection agem: the steps whose stage gradient was projected

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.steps if self.steps else 0.0

    def summary(self) -> str:
        if not self.steps:
            return f"{self.stage}: skipped ({self.examples} examples)"
        first, last = self.losses[0], self.losses[-1]
        projected = "" if self.projected_steps is None else f", {self.projected_steps} projected"
        return (f"{self.stage}: {self.steps} steps on {self.examples} examples, loss {first:.3f} -> {last:.3f}, "
                f"{self.seconds:.1f}s ({self.seconds_per_step:.2f}s/step){projected}")

    def to_dict(self) -> dict:
        return {"stage": self.stage, "steps": self.steps, "examples": self.examples, "losses": self.losses,
                "seconds": self.seconds, "tokens": self.tokens, "seconds_per_step": self.seconds_per_step,
                "probes": self.probes, "projected_steps": self.projected_steps}


@dataclass
class Reference:
    """The DPO reference: the frozen base model, optionally with a fixed soft prompt in front.

    ``prefix=None`` is the unpatched base model; for a stacked block, ``prefix`` holds the frozen earlier
    blocks, so the new block is judged against "base + what is already deployed".
    """

    prefix: torch.Tensor | None = None


def chat(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def _training_args(cls, cfg: TrainConfig, epochs: float, lr: float, output_dir: str, **extra):
    """TRL's settings of one stage. ``cfg.batch_size`` is the global batch: across several processes (DDP through
    Accelerate) each takes its share of every batch."""
    use_cpu = not distributed.use_gpu()
    return cls(
        output_dir=output_dir, num_train_epochs=epochs, learning_rate=lr, max_steps=cfg.max_steps,
        per_device_train_batch_size=distributed.per_process_batch(cfg.batch_size), gradient_accumulation_steps=1,
        lr_scheduler_type="linear",
        warmup_steps=cfg.warmup_ratio, weight_decay=0.0, logging_steps=1, save_strategy="no", report_to="none",
        seed=cfg.seed, data_seed=cfg.seed, use_cpu=use_cpu, bf16=False, fp16=False,
        dataloader_num_workers=0, max_length=cfg.max_length, disable_tqdm=os.environ.get("TQDM_DISABLE") == "1",
        remove_unused_columns=True, include_num_input_tokens_seen="non_padding", **extra,
    )


@contextlib.contextmanager
def _trainer_scope(model: PeftModel, frozen_rows: slice | None):
    """Undo what a TRL trainer leaves behind on the shared model (fused-head forward, extra adapters, hooks)."""
    base = model.get_base_model()
    use_cache = base.config.use_cache  # trainers switch the KV cache off; generation wants it back
    had_forward = "forward" in base.__dict__
    saved_forward = base.__dict__.get("forward")
    handle = freeze_rows(model, frozen_rows) if frozen_rows is not None else None
    if _is_prompt_learning(model):
        prompt_parameter(model).requires_grad_(True)
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()
        if had_forward:
            base.forward = saved_forward
        else:
            base.__dict__.pop("forward", None)
        _drop_extra_adapters(model)
        base.config.use_cache = use_cache
        model.eval()


class _LossRecorder:
    """A TrainerCallback collecting the loss of every logged step and showing one progress bar per stage."""

    def __init__(self, desc: str = "training"):
        from tqdm.auto import tqdm
        from transformers import TrainerCallback

        outer = self

        class _CB(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                outer.bar = tqdm(total=state.max_steps, desc=outer.desc, unit="step", leave=False,
                                 disable=args.disable_tqdm)

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    outer.losses.append(float(logs["loss"]))
                    if outer.bar is not None:
                        outer.bar.set_postfix(loss=f"{logs['loss']:.3f}")

            def on_step_end(self, args, state, control, **kwargs):
                if outer.bar is not None:
                    outer.bar.update(1)

            def on_train_end(self, args, state, control, **kwargs):
                if outer.bar is not None:
                    outer.bar.close()

        self.desc = desc
        self.bar = None
        self.losses: list[float] = []
        self.callback = _CB()


class DecisionProbe:
    """Watches the decision that matters while a patch trains, not the average loss: on held-back prompts (never
    trained on), the probability the patched model gives the teacher's first response token, the share of prompts
    whose greedy first token is the teacher's, and the mean log-probability of the teacher's first ``n_tokens``
    tokens (teacher forcing). A refusal patch, for example, must put "I'm sorry" first; a lower average loss over
    whole responses can hide that it does not. ``measure()`` runs one batched forward pass."""

    def __init__(self, model, tokenizer, examples: list[dict], n_tokens: int = 4, name: str = "risk"):
        from compose.generation import chat_texts

        self.model, self.n_tokens, self.name = model, n_tokens, name
        self.pad = tokenizer.pad_token_id
        texts = chat_texts(tokenizer, [e["prompt"] for e in examples])
        self.rows = [(tokenizer(t, add_special_tokens=False)["input_ids"],
                      tokenizer(e["completion"], add_special_tokens=False)["input_ids"][:n_tokens])
                     for t, e in zip(texts, examples)]
        self.rows = [(p, c) for p, c in self.rows if c]
        self.history: list[dict] = []

    @torch.no_grad()
    def measure(self, step: int = 0) -> dict:
        if not self.rows:
            return {}
        was_training = self.model.training
        self.model.eval()
        width = max(len(p) + len(c) for p, c in self.rows)
        ids = torch.full((len(self.rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (p, c) in enumerate(self.rows):  # right padding: positions as in training
            ids[i, :len(p) + len(c)] = torch.tensor(p + c)
            mask[i, :len(p) + len(c)] = 1
        device = next(self.model.parameters()).device
        logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        # only the positions predicting the target's tokens go on to float32 and the softmax (row by row: the values
        # a float copy of the whole batch would give); len(p) - 1 predicts the first response token
        logits = logits[:, -width:]
        logp = torch.log_softmax(torch.cat([logits[i, len(p) - 1:len(p) - 1 + len(c)]
                                            for i, (p, c) in enumerate(self.rows)]).float(), dim=-1)
        first_p, match, mean_lp = [], [], []
        for piece, (_, c) in zip(logp.split([len(c) for _, c in self.rows]), self.rows):
            first_p.append(float(piece[0, c[0]].exp()))
            match.append(float(int(piece[0].argmax()) == c[0]))
            mean_lp.append(float(sum(piece[t, tok] for t, tok in enumerate(c)) / len(c)))
        self.model.train(was_training)
        point = {"set": self.name, "step": step, "first_token_prob": sum(first_p) / len(first_p),
                 "first_token_match": sum(match) / len(match), "first_tokens_logprob": sum(mean_lp) / len(mean_lp),
                 "n": len(self.rows)}
        self.history.append(point)
        return point

    def callback(self):
        from transformers import TrainerCallback

        probe = self

        class _CB(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                probe.measure(state.global_step)

            def on_epoch_end(self, args, state, control, **kwargs):
                point = probe.measure(state.global_step)
                log.info(f"decision probe ({probe.name}) at step {point['step']}: target's first token "
                         f"p={point['first_token_prob']:.3f}, greedy match {point['first_token_match']:.2f} "
                         f"(n={point['n']})")

        return _CB()


def sft_dataset(examples: list[dict]):
    """The SFT examples as TRL reads them, with the flags ``PatchSFTTrainer`` needs (``block``: the example's own
    block of a patch trained with random subsets of its blocks active, only where the examples name one)."""
    from datasets import Dataset

    blocks = any("block" in e for e in examples)
    return Dataset.from_list([{"prompt": chat(e["prompt"]),
                               "completion": [{"role": "assistant", "content": e["completion"]}],
                               "retain": int(e.get("source") == "retain"), "balance": int(e.get("balance", -1)),
                               "replay": int(bool(e.get("replay_of")) and e.get("source") != "retain"),
                               "imitate": int(e.get("imitate", True)), "lead": int(e.get("lead", 0)),
                               "echo": int(e.get("echo", 0)),
                               **({"block": int(e.get("block", -1))} if blocks else {})}
                              for e in examples])


def dpo_dataset(pairs: list[dict]):
    from datasets import Dataset

    return Dataset.from_list([{"prompt": chat(p["prompt"]),
                               "chosen": [{"role": "assistant", "content": p["chosen"]}],
                               "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs])


def make_sft_trainer(model: PeftModel, tokenizer, examples: list[dict], cfg: TrainConfig, output_dir: str,
                     callbacks=(), balance_groups=(), replay_reference: Reference | None = None,
                     blocks: list[tuple[int, int]] | None = None):
    """A TRL ``SFTTrainer`` over ``examples`` = [{prompt, completion}], loss on the completion only.
    ``balance_groups``: the token-set pairs an example's ``balance`` index names; ``replay_reference``: the model
    the replayed examples are kept close to with ``replay_objective: kl``; ``blocks``: the patch's blocks, each
    example trained with a random subset of them active (``PatchSFTTrainer``)."""
    from trl import SFTConfig

    args = _training_args(SFTConfig, cfg, cfg.sft_epochs, cfg.sft_lr, output_dir, completion_only_loss=True,
                          packing=False)
    trainer = PatchSFTTrainer(model=model, args=args, train_dataset=sft_dataset(examples), processing_class=tokenizer,
                              callbacks=list(callbacks), retain_objective=cfg.retain_objective,
                              retain_weight=cfg.retain_weight, balance_weight=cfg.balance_weight,
                              balance_loss=cfg.balance_loss, balance_own_loss=cfg.balance_own_loss,
                              balance_mass_scale=cfg.balance_mass_scale, lead_weight=cfg.lead_weight,
                              lead_tokens=cfg.lead_tokens, lead_rest_weight=cfg.lead_rest_weight,
                              echo_weight=cfg.echo_weight,
                              balance_groups=balance_groups,
                              replay_weight=cfg.replay_weight,
                              replay_reference=replay_reference if cfg.replay_objective == "kl" else None,
                              replay_projection=cfg.replay_projection, blocks=blocks,
                              own_gradients=cfg.block_gradients == "own", seed=cfg.seed)
    if _dense_head():
        use_dense_lm_head(model, ("log_probs", "entropy", "is_top1"))
    return trainer


def make_dpo_trainer(model: PeftModel, tokenizer, pairs: list[dict], cfg: TrainConfig, output_dir: str,
                     reference: Reference | None = None, callbacks=()):
    """A ``PatchDPOTrainer`` over ``pairs`` = [{prompt, chosen, rejected}] with precomputed reference log-probs."""
    from trl import DPOConfig

    args = _training_args(DPOConfig, cfg, cfg.dpo_epochs, cfg.dpo_lr, output_dir, beta=cfg.beta,
                          precompute_ref_log_probs=True, precompute_ref_batch_size=cfg.batch_size * 2)
    trainer = PatchDPOTrainer(model=model, args=args, train_dataset=dpo_dataset(pairs), processing_class=tokenizer,
                              callbacks=list(callbacks), reference=reference or Reference())
    _drop_extra_adapters(model)  # TRL's copy of the patch as reference: unused, the reference is precomputed
    if _dense_head():
        use_dense_lm_head(model, ("log_probs", "entropy", "mean_logits", "is_top1"))
    return trainer


def _dense_head() -> bool:
    """Dense LM head on CPU (see ``use_dense_lm_head``); TRL's tiled kernel where Triton runs it."""
    return not distributed.use_gpu() and os.environ.get("COMPOSE_TRL_LM_HEAD") != "1"


def use_dense_lm_head(model: PeftModel, outputs: tuple[str, ...]) -> None:
    """Score the trained positions with one dense LM-head matmul instead of TRL's tiled kernel, on CPU.

    TRL's trainers install a "fused" LM head that projects the scored positions through the vocabulary in tiles
    and folds each tile into running statistics: on a GPU with Triton this saves memory, but on a CPU its
    fallback runs a dozen element-wise passes per tile and takes about half of every step. Only the completion
    positions are scored (a few hundred per batch), so their full logits are small: one bf16 matmul, then
    ``log_softmax`` in float32. Same fields, same values (within float rounding) as TRL's head.
    """
    from trl.trainer.utils import FusedCausalLMOutput

    base = model.get_base_model()
    trl_forward = base.__dict__["forward"]  # TRL's fused forward; the plain forward is what it wraps

    def forward(*args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head or shift_labels is not None:
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                               num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = base.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        mask = targets != -100
        logits = base.get_output_embeddings()(hidden[mask]).float()
        logp = torch.log_softmax(logits, dim=-1)
        picked = logp.gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)

        def scatter(values):
            return values.new_zeros(mask.shape).masked_scatter(mask, values)

        fields = {"log_probs": scatter(picked)}
        with torch.no_grad():
            detached = logp.detach()
            if "entropy" in outputs:
                fields["entropy"] = scatter(-(detached.exp() * detached).sum(-1))
            if "mean_logits" in outputs:
                fields["mean_logits"] = scatter(logits.detach().mean(-1))
            if "is_top1" in outputs:
                fields["is_top1"] = scatter(detached.argmax(-1) == targets[mask])
            if "log_sum_sq_probs" in outputs:
                fields["log_sum_sq_probs"] = scatter(torch.logsumexp(2 * detached, dim=-1))
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-fields["log_probs"].sum() / count, label_mask=mask, **fields)

    base.forward = forward


def _drop_extra_adapters(model: PeftModel) -> None:
    for name in [n for n in model.peft_config if n != "default"]:
        model.delete_adapter(name)
    model.set_adapter("default")


def train_sft(model: PeftModel, tokenizer, examples: list[dict], cfg: TrainConfig,
              frozen_rows: slice | None = None, desc: str = "",
              probe: list[DecisionProbe] | list[dict] | None = None, balance_groups=(),
              replay_reference: Reference | None = None, blocks: list[tuple[int, int]] | None = None) -> StageResult:
    """Teach the patch to imitate ``examples`` = [{prompt, completion}]: cross-entropy on the response only.
    ``probe``: ``DecisionProbe``s (or one probe's held-back examples) measured at the start and after every epoch.
    ``balance_groups``: pairs of token-id sets; an example whose ``balance`` is i also learns to keep the two sets
    of pair i equally probable (``cfg.balance_weight``). ``replay_reference``: with ``cfg.replay_objective`` kl,
    the replayed examples (``replay_of``) learn the KL from it instead of their answer's cross-entropy (default:
    the patch as it is now, before this training). ``blocks``: the patch's blocks as (start, stop) rows, trained
    with random subsets active (``sample_active_blocks``; an example's ``block`` names its own)."""
    result = StageResult("sft", examples=len(examples))
    if not examples or cfg.sft_epochs == 0:
        return result
    recorder = _LossRecorder(f"{desc} SFT".strip())
    watchers = [p for p in probe or [] if isinstance(p, DecisionProbe)]
    if probe and not watchers:
        watchers = [DecisionProbe(model, tokenizer, probe)]
    callbacks = [recorder.callback] + [w.callback() for w in watchers]
    with tempfile.TemporaryDirectory() as tmp, _trainer_scope(model, frozen_rows):
        if cfg.replay_objective == "kl" and replay_reference is None:
            if not _is_prompt_learning(model):
                raise ValueError("replay_objective kl keeps the replayed examples at a soft prompt; this model's "
                                 "adapter is not one (use replay_objective ce)")
            replay_reference = Reference(prefix=get_prompt(model))
        trainer = make_sft_trainer(model, tokenizer, examples, cfg, tmp, callbacks, balance_groups, replay_reference,
                                   blocks)
        try:
            _run(trainer, result)
        finally:
            trainer.release_blocks()
    if cfg.replay_projection == "agem":
        result.projected_steps = trainer.projected_steps
    result.losses = recorder.losses
    result.probes = [point for w in watchers for point in w.history]
    log.info(result.summary())
    return result


def train_dpo(model: PeftModel, tokenizer, pairs: list[dict], cfg: TrainConfig, reference: Reference | None = None,
              frozen_rows: slice | None = None, desc: str = "") -> StageResult:
    """Prefer ``chosen`` over ``rejected`` for each of ``pairs`` = [{prompt, chosen, rejected}] (sigmoid DPO)."""
    result = StageResult("dpo", examples=len(pairs))
    if not pairs or cfg.dpo_epochs == 0:
        return result
    recorder = _LossRecorder(f"{desc} DPO".strip())
    with tempfile.TemporaryDirectory() as tmp, _trainer_scope(model, frozen_rows):
        trainer = make_dpo_trainer(model, tokenizer, pairs, cfg, tmp, reference, [recorder.callback])
        _run(trainer, result)
        result.seconds += trainer.precompute_seconds
    result.losses = recorder.losses
    log.info(result.summary())
    return result


def _run(trainer, result: StageResult) -> None:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)  # it prints every step's log dict; _LossRecorder shows a bar
    trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    out = trainer.train()
    result.seconds = time.perf_counter() - start
    result.steps = out.global_step
    result.tokens = int(trainer.state.num_input_tokens_seen or 0)


class _RepeatsWeighNothing:
    """Both trainers' handling of the examples Accelerate repeats to fill the last step of an epoch across several
    processes (``distributed.padded_last_step``): the last batch is dealt with as it is drawn, before the trainer
    counts its scored tokens, by the trainer's ``_mask_repeats(batch, real, step)`` (``real``: the real examples
    of this process's batch, its first ones; ``step``: those of the whole step), which takes the repeats out of the
    loss."""

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        return super().get_batch_samples(map(self._unrepeat, epoch_iterator), num_batches, device)

    def _unrepeat(self, batch: dict) -> dict:
        # Accelerate's data loader flags the epoch's last batch as it hands it out
        if self.accelerator.gradient_state.end_of_dataloader:
            padded = distributed.padded_last_step(self.args.per_device_train_batch_size, len(self.train_dataset))
            if padded is not None:
                self._mask_repeats(batch, *padded)
        return batch


class PatchSFTTrainer(_RepeatsWeighNothing, SFTTrainer):
    """SFTTrainer that knows which examples are retain examples (benign prompts answered by the base model itself).

    With ``retain_objective="ce"`` and weight 1 it is TRL's SFT unchanged. Otherwise the loss is computed here, per
    scored token: cross-entropy on the risk examples; on the retain examples ``retain_weight`` times either the
    cross-entropy of the base model's answer (``ce``) or the KL divergence KL(p_base || p_patched) of the whole
    next-token distribution along that answer (``kl``; the base model is the same model with the patch switched
    off, so it costs one extra forward pass without gradients). The KL keeps what the unpatched model would have
    said at every position, not only its sampled token: on benign look-alikes of harmful requests, the patch is
    pulled back towards the base model's distribution, refusals included at their base-model probability.

    The equalizing loss (``balance_weight`` > 0, after Qian et al. 2019, "Reducing gender bias in word-level
    language models with a gender-equalizing loss function"): an example whose ``balance`` is i (a risk example of
    a risk that names two token sets, ``Risk.balance_tokens``) adds to each of its scored tokens ``balance_weight``
    times its answer's gap |P_a - P_b| / (P_a + P_b), where P_a, P_b are the probabilities of the two sets of
    ``balance_groups[i]`` summed over the answer's positions: for the bias risk, the GLD of the teacher's answer.
    With ``balance_loss="position"`` the gap is sum_t |p_a(t) - p_b(t)| / sum_t (p_a(t) + p_b(t)) instead: by the
    triangle inequality at least the answer's gap, and not lowered by positions that lean one way cancelling
    positions that lean the other (a cancellation that holds on the teacher's answer, not on the patch's own).
    With ``balance_loss="counterfactual"`` each scored token of such an answer carries ``balance_weight`` times
    KL(q' || p_patched) instead, q' being the unpatched model's next-token distribution q at that position with the
    two sets' mass made equal (``balanced_distribution``: each set's tokens rescaled to (q_a + q_b) / 2 together,
    every other token as in q), in the manner of MOSAIC's counterfactual KL: the gap alone is lowest where an answer
    tells nothing that a gendered word could follow, which the patch learned to give (the bias risk's ``evasive``);
    the counterfactual target asks for the balance and for the unpatched model's distribution everywhere else.
    With ``balance_loss="shift"`` the target is the patched model's own distribution p, held fixed (no gradient),
    with the two sets balanced: KL(sg(p') || p) / sg(m), m the answer's mean mass on the two sets per position. Its
    gradient on the logits is p - p', which lowers the heavier set's tokens and raises the lighter set's by half
    the position's gap over m and leaves every other token's probability where it is: the balance alone is asked,
    neither fewer gendered words (the position-wise gap's easiest way down on answers with little gendered mass)
    nor the unpatched model's answer (the counterfactual target's). With ``balance_loss="mass"`` the distributions
    are lumped into three outcomes, set a, set b and every other token: KL((h, h, 1 - 2h) || (p_a, p_b, 1 - p_a - p_b))
    / sg(m), h half the unpatched model's mass on the two sets at that position (times ``balance_mass_scale``) and m
    its mean over the answer. The
    shift loss can be lowered by lowering both sets' mass (answers with no third person in them); this target holds
    the two sets' total at the unpatched model's, and, unlike the counterfactual one, leaves the rest of the
    distribution free to follow the teacher. An example whose ``imitate`` is 0 (the patch's own answer, see
    ``TrainConfig.balance_own_rounds``) has no cross-entropy and takes the form ``balance_own_loss`` instead.

    Replayed examples (``replay_reference`` given: the patch as the stage began, ``replay_objective: kl``): a risk
    example replayed from an earlier stage learns KL(p_reference || p_patched) along its answer instead of the
    answer's cross-entropy, as in Learning without Forgetting / dark experience replay: the stage keeps what the
    earlier stages made of that risk rather than learning the earlier teacher's answer again (one extra forward
    pass without gradients over the batch's replayed examples). ``replay_weight`` scales the replayed examples'
    cross-entropy or KL; the equalizing loss still adds to them.

    Gradient projection (``replay_projection="agem"``, after A-GEM, Chaudhry et al. 2019, "Efficient Lifelong
    Learning with A-GEM"): a batch's own examples (this stage's risk and retain examples) and its replayed examples
    are run as two sub-batches, giving the gradients g_new and g_replay of their shares of the step's loss; where
    g_new . g_replay < 0, g_new loses its component along g_replay, so to first order the step does not raise the
    replayed examples' loss; the step then follows g_new + g_replay. The two sub-batches cost about what the whole
    batch does.

    Random subsets of blocks (``blocks`` given: the patch's blocks as (start, stop) rows; after MOSAIC, Peng et al.
    2026, "Composable Safety Alignment with Modular Control Tokens"): every time an example is drawn, a subset of the
    blocks is made active for it (``sample_active_blocks``: its own block, named by its ``block`` column, and a
    random number of the others; a retain example any number of blocks), and the virtual tokens of the other
    blocks are masked out of its attention. Each block thus learns to work beside any set of the others rather than
    beside one fixed set, so that a block does not come to rely on the others to do its risk's work. Masked, a block
    keeps its positions, so every subset sees the layout of the whole patch (the deployed patch is the whole one).
    ``own_gradients``: a risk example's loss trains its own block alone; the other active blocks take part in the
    forward pass with their gradient stopped (their embeddings enter as ``x - (x - x.detach())``: the same values,
    no gradient), so one risk's objective (the bias examples' equalizing loss, say) never moves another risk's
    block. A retain example still trains every block it has active.
    """

    def __init__(self, *args, retain_objective: str = "ce", retain_weight: float = 1.0, balance_weight: float = 0.0,
                 balance_groups=(), balance_loss: str = "answer", balance_own_loss: str = "shift",
                 balance_mass_scale: float = 1.0, lead_weight: float = 1.0, lead_tokens: int = 0,
                 lead_rest_weight: float = 1.0, echo_weight: float = 1.0, replay_reference: Reference | None = None,
                 replay_weight: float = 1.0, replay_projection: str = "none",
                 blocks: list[tuple[int, int]] | None = None, own_gradients: bool = False, seed: int = 0,
                 **kwargs):
        if replay_projection == "agem" and distributed.active():
            raise ValueError("replay_projection agem runs in one process (its two sub-batch gradients bypass the "
                             "gradient exchange between processes); use replay_projection none with several")
        super().__init__(*args, **kwargs)
        self.retain_objective, self.retain_weight = retain_objective, retain_weight
        self.balance_weight, self.balance_groups = balance_weight, [tuple(map(list, g)) for g in balance_groups]
        self.balance_loss, self.balance_own_loss = balance_loss, balance_own_loss
        self.balance_mass_scale, self.lead_weight, self.lead_tokens = balance_mass_scale, lead_weight, lead_tokens
        self.lead_rest_weight = lead_rest_weight if lead_tokens else 1.0  # without lead_tokens the lead has no rest
        self.echo_weight = echo_weight
        self.replay_reference, self.replay_weight = replay_reference, replay_weight
        self.replay_projection, self.projected_steps = replay_projection, 0
        self.data_collator = _RetainFlagCollator(self.data_collator)
        self.blocks, self._active, self._hook = list(blocks or []), None, None
        self.own_gradients, self._held = own_gradients, None
        if self.blocks:
            if not _is_prompt_learning(self.model):
                raise ValueError("random subsets of blocks need a soft-prompt patch; this model's adapter is not one")
            self._draws = torch.Generator().manual_seed(seed)
            # masks the inactive blocks' virtual tokens out of the attention of the base model's forward
            self._hook = self.model.get_base_model().register_forward_pre_hook(self._mask_blocks, with_kwargs=True)

    def release_blocks(self) -> None:
        """Remove the attention hook of ``blocks`` from the shared base model (the end of training)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _mask_blocks(self, module, args, kwargs):
        embeds, mask = kwargs.get("inputs_embeds"), kwargs.get("attention_mask")
        if self._active is None or embeds is None or mask is None or mask.shape[0] != self._active.shape[0]:
            return None  # no subset drawn (evaluation, the probe), or a forward without the patch
        active = self._active.to(device=mask.device, dtype=mask.dtype)
        kwargs["attention_mask"] = torch.cat([mask[:, :active.shape[1]] * active, mask[:, active.shape[1]:]], dim=1)
        if self._held is not None:  # the other risks' blocks: same values, no gradient
            held = self._held.to(device=embeds.device, dtype=embeds.dtype).unsqueeze(-1)
            head = embeds[:, :held.shape[1]]
            kwargs["inputs_embeds"] = torch.cat([head - held * (head - head.detach()), embeds[:, held.shape[1]:]],
                                                dim=1)
        return args, kwargs

    def _active_rows(self, block: torch.Tensor) -> torch.Tensor:
        """(batch, virtual tokens): 1 where a row's drawn subset has the token's block, else 0."""
        chosen = sample_active_blocks(block, len(self.blocks), self._draws)
        rows = torch.zeros(block.shape[0], self.blocks[-1][1])
        for i, (start, stop) in enumerate(self.blocks):
            rows[:, start:stop] = chosen[:, i:i + 1].float()
        return rows

    def _others_rows(self, block: torch.Tensor) -> torch.Tensor:
        """(batch, virtual tokens): 1 on the tokens of the blocks that are not a risk example's own, else 0 (a
        retain example, ``block`` -1: 0 everywhere)."""
        rows = torch.zeros(block.shape[0], self.blocks[-1][1])
        for i, own in enumerate(block.tolist()):
            if own >= 0:
                rows[i] = 1.0
                rows[i, self.blocks[own][0]:self.blocks[own][1]] = 0.0
        return rows

    @property
    def custom_loss(self) -> bool:
        return (self.retain_objective != "ce" or self.retain_weight != 1.0 or self.balances or self.leads
                or self.replay_reference is not None or self.replay_weight != 1.0 or self.replay_projection != "none")

    @property
    def leads(self) -> bool:
        """Whether an answer's lead is weighted otherwise than its other tokens (``lead_weight``, ``lead_rest_weight``,
        ``echo_weight``)."""
        return self.lead_weight != 1.0 or self.lead_rest_weight != 1.0 or self.echo_weight != 1.0

    @property
    def balances(self) -> bool:
        return self.balance_weight > 0 and bool(self.balance_groups)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        extra = [c for c in ("retain", "balance", "replay", "imitate", "lead", "echo", "block")
                 if c not in self._signature_columns]
        self._signature_columns = [*self._signature_columns, *extra]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        block = inputs.pop("block", None)
        if not self.blocks or block is None:
            return self._compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self._active = self._active_rows(block)
        if self.own_gradients:
            self._held = self._others_rows(block)
        try:
            return self._compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            self._active = self._held = None

    def _compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        retain, balance, replay = inputs.pop("retain"), inputs.pop("balance"), inputs.pop("replay")
        imitate = inputs.pop("imitate")
        if not self.leads:
            inputs.pop("lead", None)
            inputs.pop("echo", None)
        if not self.custom_loss and bool(imitate.all()):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.replay_projection == "agem" and model.training and torch.is_grad_enabled() and bool(replay.any()):
            loss = self.projected_loss(model, inputs, retain, balance, replay, imitate, num_items_in_batch)
            return (loss, {"loss": loss}) if return_outputs else loss
        per_token, scored = self.per_token_loss(model, inputs, retain, balance, replay, imitate)
        count = scored.sum() if num_items_in_batch is None else num_items_in_batch
        loss = per_token.sum() / torch.as_tensor(count, device=per_token.device).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # as in TRL's loss: the count is every process's scored tokens and DDP averages the processes' gradients
            loss = loss * self.accelerator.num_processes
        return (loss, {"loss": loss}) if return_outputs else loss

    def projected_loss(self, model, inputs, retain: torch.Tensor, balance: torch.Tensor, replay: torch.Tensor,
                       imitate: torch.Tensor | None = None, num_items_in_batch=None) -> torch.Tensor:
        """The step's loss (its value: the batch's loss as without projection), built so that its gradient is
        ``project(g_new) + g_replay`` (see the class): each sub-batch's gradient is taken here, and the returned
        loss carries the combined gradient through a surrogate term whose value is zero."""
        count = inputs["labels"][:, 1:].ne(-100).sum() if num_items_in_batch is None else num_items_in_batch
        params = [p for p in model.parameters() if p.requires_grad]
        losses, grads = [], []
        for rows in (~replay.bool(), replay.bool()):
            if not bool(rows.any()):
                losses.append(torch.zeros((), device=params[0].device))
                grads.append([torch.zeros_like(p) for p in params])
                continue
            part = _rows_of(inputs, rows)
            per_token, _ = self.per_token_loss(model, part, retain[rows], balance[rows], replay[rows],
                                               None if imitate is None else imitate[rows])
            loss = per_token.sum() / torch.as_tensor(count, device=per_token.device).clamp(min=1)
            grad = torch.autograd.grad(loss, params, allow_unused=True)
            losses.append(loss.detach())
            grads.append([torch.zeros_like(p) if g is None else g for p, g in zip(params, grad)])
        g_new, g_replay = grads
        dot = sum((a * b).sum() for a, b in zip(g_new, g_replay))
        if float(dot) < 0:
            norm = sum((b * b).sum() for b in g_replay)
            g_new = [a - dot / norm.clamp(min=1e-20) * b for a, b in zip(g_new, g_replay)]
            self.projected_steps += 1
        surrogate = sum((p * (a + b)).sum() for p, a, b in zip(params, g_new, g_replay))
        return surrogate - surrogate.detach() + losses[0] + losses[1]

    @staticmethod
    def _mask_repeats(batch: dict, real: int, step: int) -> None:
        """No scored token in a repeated example: the loss is a sum over the scored tokens of the step divided by
        their number across the processes, so the step's loss and gradient become one process's on its real ones."""
        batch["labels"][real:] = -100

    def per_token_loss(self, model, inputs, retain: torch.Tensor, balance: torch.Tensor | None = None,
                       replay: torch.Tensor | None = None, imitate: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of every scored token (flattened row by row) and the (batch, length - 1) mask of those tokens.
        A row whose ``imitate`` is 0 (the patch's own answer, ``balance_own_rounds``) has no cross-entropy: only
        its equalizing loss. ``inputs["lead"]`` (where given): each row's number of leading answer tokens whose
        cross-entropy is weighted ``lead_weight`` (the last ``lead_tokens`` of them, where that is set, the others
        ``lead_rest_weight``);
        ``inputs["echo"]``: each row's number of leading answer tokens that repeat its prompt, weighted
        ``echo_weight`` instead."""
        ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
        targets = labels[:, 1:]
        scored = targets != -100
        keep = torch.nn.functional.pad(scored, (0, 1), value=False)  # position t predicts token t + 1
        # across processes ``model`` is the DDP wrapper (its forward averages the gradients), which hides the patch
        inner = self.accelerator.unwrap_model(model)
        logp = torch.log_softmax(_logits_at(model, ids, mask, keep, _virtual_tokens(inner)).float(), dim=-1)
        per_token = -logp.gather(-1, targets[scored].unsqueeze(-1)).squeeze(-1)
        rows = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1).expand_as(scored)[scored]
        lead = inputs.get("lead")
        echo = inputs.get("echo")
        if lead is not None and self.leads and bool((lead > 0).any()):
            # the first ``lead`` scored tokens of each row: its answer's opening (its last ``lead_tokens`` of them)
            place, lead = scored.cumsum(1), lead.to(ids.device).unsqueeze(1)
            in_lead = place <= lead
            # the opening's first ``echo`` tokens repeat the prompt: weighted echo_weight alone
            repeats = place <= echo.to(ids.device).unsqueeze(1) if echo is not None and self.echo_weight != 1.0 \
                else torch.zeros_like(in_lead)
            if self.lead_tokens:
                rest = in_lead & (place <= lead - self.lead_tokens) & ~repeats
                if self.lead_rest_weight != 1.0:  # the lead's tokens before its last lead_tokens
                    per_token = torch.where(rest[scored], self.lead_rest_weight * per_token, per_token)
                in_lead &= place > lead - self.lead_tokens
            per_token = torch.where(repeats[scored], self.echo_weight * per_token, per_token)
            in_lead &= ~repeats
            in_lead = in_lead[scored]
            per_token = torch.where(in_lead, self.lead_weight * per_token, per_token)
        if imitate is not None and not bool(imitate.all()):
            per_token = per_token * imitate.to(ids.device)[rows].to(per_token.dtype)
        is_retain = retain.to(ids.device).bool()[rows]
        terms = self._balance_terms(balance, imitate)
        against_base = any(kind in AGAINST_BASE for kind, _ in terms)
        base = None
        if (self.retain_objective == "kl" and bool(is_retain.any())) or against_base:
            with torch.no_grad(), inner.disable_adapter():
                base = torch.log_softmax(_logits_at(inner, ids, mask, keep, 0).float(), dim=-1)
        if self.retain_objective == "kl" and bool(is_retain.any()):
            per_token = torch.where(is_retain, _kl(base, logp), per_token)
        if replay is not None and bool(replay.any()) and (self.replay_reference is not None or self.replay_weight != 1):
            with_replay = replay.to(ids.device).bool()
            is_replay = with_replay[rows]
            if self.replay_reference is None:
                loss = per_token[is_replay]
            else:
                anchored = prefixed_log_probs(inner, self.replay_reference, ids[with_replay], mask[with_replay],
                                              keep[with_replay])
                loss = _kl(anchored, logp[is_replay])
            per_token = per_token.masked_scatter(is_replay, self.replay_weight * loss)
        for kind, which in terms:
            per_token = per_token + self.balance_weight * self.balance_term(kind, base, logp, rows,
                                                                            which.to(ids.device), ids.shape[0])
        return torch.where(is_retain, self.retain_weight * per_token, per_token), scored

    def _balance_terms(self, balance: torch.Tensor | None, imitate: torch.Tensor | None
                       ) -> list[tuple[str, torch.Tensor]]:
        """The equalizing losses of a batch, as (form, each row's group or -1 where that form does not apply): the
        answers to imitate take ``balance_loss``, the patch's own answers (``imitate`` 0) ``balance_own_loss``."""
        if not self.balances or balance is None:
            return []
        if imitate is None or bool(imitate.all()) or self.balance_own_loss == self.balance_loss:
            return [(self.balance_loss, balance)]
        own = ~imitate.to(balance.device).bool()
        return [(self.balance_loss, torch.where(own, -1, balance)), (self.balance_own_loss, torch.where(own, balance, -1))]

    def balance_term(self, kind: str, base: torch.Tensor | None, logp: torch.Tensor, rows: torch.Tensor,
                     balance: torch.Tensor, n_rows: int) -> torch.Tensor:
        """Per scored token, the equalizing loss of form ``kind`` (``TrainConfig.balance_loss``) of its answer's
        group, unweighted (0 for the answers of no group); ``base``: the unpatched model's log-probabilities, which
        the forms in ``AGAINST_BASE`` need."""
        if kind in AGAINST_BASE:
            mass = kind == "mass"
            return self.balanced_kl(base, logp, rows, balance, n_rows if mass else None, lumped=mass)
        if kind == "shift":
            return self.balanced_kl(logp.detach(), logp, rows, balance, n_rows)
        return self.balance_gap(logp, rows, balance, n_rows, per_position=kind == "position")

    def balance_gap(self, logp: torch.Tensor, rows: torch.Tensor, balance: torch.Tensor, n_rows: int,
                    per_position: bool = False) -> torch.Tensor:
        """Per scored token, its answer's gap over the token sets of the answer's ``balance`` group (0 for the
        answers of no group): |P_a - P_b| / (P_a + P_b), or ``per_position`` (``balance_loss="position"``)
        sum_t |p_a(t) - p_b(t)| / sum_t (p_a(t) + p_b(t))."""
        gap = logp.new_zeros(logp.shape[0])
        group = balance[rows]
        for i, (a, b) in enumerate(self.balance_groups):
            sel = group == i
            if not bool(sel.any()):
                continue
            probs = logp[sel].exp()
            m_a, m_b = probs[:, a].sum(-1), probs[:, b].sum(-1)  # each set's mass at each position
            if per_position:
                per_row = (logp.new_zeros(n_rows).index_add(0, rows[sel], (m_a - m_b).abs())
                           / logp.new_zeros(n_rows).index_add(0, rows[sel], m_a + m_b).clamp(min=1e-12))
            else:
                p_a = logp.new_zeros(n_rows).index_add(0, rows[sel], m_a)
                p_b = logp.new_zeros(n_rows).index_add(0, rows[sel], m_b)
                per_row = (p_a - p_b).abs() / (p_a + p_b).clamp(min=1e-12)
            gap = torch.where(sel, per_row[rows], gap)
        return gap

    def balanced_kl(self, base: torch.Tensor, logp: torch.Tensor, rows: torch.Tensor,
                    balance: torch.Tensor, n_rows: int | None = None, lumped: bool = False) -> torch.Tensor:
        """Per scored token, KL(q' || p) between the distribution ``base`` (the unpatched model's, or the patched
        one held fixed) with its answer's group's two sets balanced (``balanced_distribution``) and the patched one
        ``logp`` (0 for the answers of no group). ``lumped``: over the three outcomes set a, set b, any other token
        instead of the vocabulary, KL((h, h, 1 - 2h) || (p_a, p_b, 1 - p_a - p_b)), h half ``base``'s mass on the
        two sets times ``balance_mass_scale``. With ``n_rows`` (the batch's rows) each answer's KL is divided by its
        mean mass on the two sets per position under ``base``."""
        out = logp.new_zeros(logp.shape[0])
        group = balance[rows]
        for i, (a, b) in enumerate(self.balance_groups):
            sel = group == i
            if not bool(sel.any()):
                continue
            both = base[sel][:, a + b].logsumexp(-1)  # log of base's mass on the two sets
            if lumped:
                total = both + math.log(self.balance_mass_scale)  # the two sets' total asked for
                half, rest = total - math.log(2.0), torch.log1p(-total.exp().clamp(max=1 - 1e-6))
                log_a, log_b = logp[sel][:, a].logsumexp(-1), logp[sel][:, b].logsumexp(-1)
                log_rest = torch.log1p(-torch.logaddexp(log_a, log_b).exp().clamp(max=1 - 1e-6))
                kl = half.exp() * (2 * half - log_a - log_b) + rest.exp() * (rest - log_rest)
            else:
                kl = _kl(balanced_distribution(base[sel], a, b), logp[sel])
            if n_rows is not None:
                mass = both.exp()
                mean = (logp.new_zeros(n_rows).index_add(0, rows[sel], mass)
                        / logp.new_zeros(n_rows).index_add(0, rows[sel], torch.ones_like(mass)).clamp(min=1))
                kl = kl / mean[rows[sel]].clamp(min=1e-12)
            out = out.masked_scatter(sel, kl)
        return out


def balanced_distribution(logq: torch.Tensor, a: list[int], b: list[int]) -> torch.Tensor:
    """Log-probabilities ``logq`` (rows over the vocabulary) with the mass of token sets ``a`` and ``b`` made equal:
    each set's tokens are rescaled together to (q_a + q_b) / 2, keeping their proportions within the set and every
    other token's probability, so each row still sums to 1. The sets must not share a token."""
    log_a, log_b = logq[:, a].logsumexp(-1), logq[:, b].logsumexp(-1)
    half = torch.logaddexp(log_a, log_b) - math.log(2.0)
    out = logq.clone()
    out[:, a] += (half - log_a).unsqueeze(-1)
    out[:, b] += (half - log_b).unsqueeze(-1)
    return out


def _rows_of(batch: dict, rows: torch.Tensor) -> dict:
    """The ``rows`` of a right-padded batch of (batch, length) tensors, without the columns that are padding in all
    of them."""
    part = {k: v[rows.to(v.device)] if torch.is_tensor(v) and v.shape[:1] == rows.shape else v for k, v in batch.items()}
    width = int(part["attention_mask"].sum(1).max())
    if bool(part["attention_mask"][:, width:].any()):  # padded on the left: keep every column
        return part
    return {k: v[:, :width] if torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == batch["input_ids"].shape[1] else v
            for k, v in part.items()}


class _RetainFlagCollator:
    """Wraps TRL's collator: takes each example's ``retain`` flag, ``balance`` group, ``replay`` flag, ``imitate``
    flag, ``lead`` (tokens) and (where the dataset has one) ``block`` out and adds them to the batch as tensors."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, examples: list[dict]) -> dict:
        flags = torch.tensor([bool(e.get("retain", 0)) for e in examples])
        balance = torch.tensor([int(e.get("balance", -1)) for e in examples])
        replay = torch.tensor([bool(e.get("replay", 0)) for e in examples])
        imitate = torch.tensor([bool(e.get("imitate", 1)) for e in examples])
        lead = torch.tensor([int(e.get("lead", 0)) for e in examples])
        echo = torch.tensor([int(e.get("echo", 0)) for e in examples])
        batch = self.collate([{k: v for k, v in e.items() if k not in ("retain", "balance", "replay", "imitate",
                                                                       "lead", "echo", "block")}
                              for e in examples])
        batch["retain"], batch["balance"], batch["replay"], batch["imitate"] = flags, balance, replay, imitate
        batch["lead"] = lead
        batch["echo"] = echo
        if examples and "block" in examples[0]:
            batch["block"] = torch.tensor([int(e["block"]) for e in examples])
        return batch


def sample_active_blocks(block: torch.Tensor, n_blocks: int, generator: torch.Generator) -> torch.Tensor:
    """For each example, which of ``n_blocks`` blocks are active: (batch, n_blocks) bool.

    MOSAIC's order-based sampling: the number of active blocks k is uniform in 1..n_blocks, then the k blocks are
    uniform among those subsets that hold the example's own block (``block[i]``; -1, a retain example: any k
    blocks). The whole patch (k = n_blocks) is thus one draw in n_blocks, and every smaller combination is seen.
    """
    active = torch.zeros(block.shape[0], n_blocks, dtype=torch.bool)
    for i, own in enumerate(block.tolist()):
        k = int(torch.randint(1, n_blocks + 1, (1,), generator=generator))
        order = torch.randperm(n_blocks, generator=generator).tolist()
        if 0 <= own < n_blocks:
            order = [own] + [b for b in order if b != own]
        active[i, order[:k]] = True
    return active


def _virtual_tokens(model: PeftModel) -> int:
    """How many positions an active prompt-learning patch puts in front of every sequence (0: none)."""
    return model.active_peft_config.num_virtual_tokens if is_patched(model) else 0


def _logits_at(model, ids: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor, virtual: int) -> torch.Tensor:
    """Logits of ``model`` at the ``keep`` positions of ``ids`` only, flattened row by row: (kept, vocabulary).

    ``virtual``: the positions a prompt-learning patch puts in front of every sequence (``_virtual_tokens``), never
    kept.
    """
    keep = torch.cat([keep.new_zeros(keep.shape[0], virtual), keep], dim=1)
    out = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep, use_cache=False).logits
    return out.reshape(-1, out.shape[-1])


class PatchDPOTrainer(_RepeatsWeighNothing, DPOTrainer):
    """DPOTrainer whose reference log-probabilities come from an explicit ``Reference``.

    TRL's default reference for an existing PEFT adapter is a copy of that adapter; a patch is instead
    judged against the base model (plus frozen earlier blocks for a stacked patch). The reference
    log-probabilities are always precomputed, so this is the only place the reference runs.
    """

    def __init__(self, *args, reference: Reference, **kwargs):
        self.reference = reference
        self.precompute_seconds = 0.0
        if not kwargs["args"].precompute_ref_log_probs:
            raise ValueError("PatchDPOTrainer needs precompute_ref_log_probs=True")
        if list(kwargs["args"].loss_type) != ["sigmoid"]:  # _mask_repeats relies on its loss at a zero margin
            raise ValueError("PatchDPOTrainer trains sigmoid DPO only")
        super().__init__(*args, **kwargs)

    @staticmethod
    def _mask_repeats(batch: dict, real: int, step: int) -> None:
        """A repeated pair becomes neutral: no scored token (its log-probabilities are 0 whatever the patch) and a
        reference of 0 on both sides, so its loss is the constant -log sigmoid(0) = log 2 with no gradient.
        ``compute_loss`` takes those constants out and re-weights the process's mean loss."""
        rows = len(batch["ref_chosen_logps"])  # pairs; the sequences are the chosen ones, then the rejected ones
        batch["completion_mask"][real:rows] = 0
        batch["completion_mask"][rows + real:] = 0
        batch["ref_chosen_logps"][real:] = 0
        batch["ref_rejected_logps"][real:] = 0
        batch["repeats"] = (rows, real, step)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        repeats = inputs.pop("repeats", None)
        if repeats is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        rows, real, step = repeats
        mean = super().compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        # TRL's loss is the mean over this process's pairs and DDP averages the processes' gradients; one process
        # would take the mean over the step's real pairs: this process's share of that sum, times the processes
        return (mean * rows - (rows - real) * math.log(2)) * distributed.world_size() / step

    def _precompute_ref_logps(self, dataset, name, batch_size):
        """``dataset`` with the reference log-probabilities of every pair's chosen and rejected responses, computed
        in memory (TRL's version writes them into a file in datasets' temporary folder, which is each process's
        own). Several processes: the batches are shared out and gathered, each one as in one process."""
        from torch.utils.data import DataLoader

        batches = DataLoader(dataset, batch_size=batch_size, collate_fn=self.data_collator, shuffle=False)
        mine, device = set(distributed.shard(len(batches))), self.accelerator.device
        local = {}
        for i, batch in enumerate(batches):
            if i in mine:
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                local[i] = tuple(t.float().cpu() for t in self.compute_ref_log_probs(self.model, batch))
        found = distributed.gather(local)
        chosen, rejected = (torch.cat([found[i][side] for i in range(len(batches))]).numpy() for side in (0, 1))
        return dataset.add_column("ref_chosen_logps", chosen).add_column("ref_rejected_logps", rejected)

    def compute_ref_log_probs(self, model, inputs):
        start = time.perf_counter()
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        logps = reference_log_probs(self.accelerator.unwrap_model(self.model), self.reference,
                                    inputs["input_ids"], inputs["attention_mask"], labels)
        self.precompute_seconds += time.perf_counter() - start
        return logps.sum(dim=1).chunk(2, dim=0)


def reference_log_probs(model: PeftModel, reference: Reference, input_ids, attention_mask, labels) -> torch.Tensor:
    """Per-token log-probabilities of ``labels`` (shifted; ignored positions give 0) under the reference.

    Returns ``(batch, seq_len - 1)``, aligned with the real tokens whatever the reference's prefix length.
    Only the scored positions go through the LM head.
    """
    targets = labels[:, 1:]
    scored = targets != -100
    with torch.no_grad(), _adapter_off(model):
        hidden = _prefixed_hidden(model, reference, input_ids, attention_mask)[:, :-1]  # each predicts the next
        logits = model.get_base_model().get_output_embeddings()(hidden[scored]).float()
        picked = torch.log_softmax(logits, dim=-1).gather(-1, targets[scored].unsqueeze(-1)).squeeze(-1)
        logps = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)
        logps[scored] = picked
    return logps


def prefixed_log_probs(model: PeftModel, reference: Reference, ids: torch.Tensor, mask: torch.Tensor,
                       keep: torch.Tensor) -> torch.Tensor:
    """Next-token log-probabilities under ``reference`` at the ``keep`` positions of ``ids`` only, flattened row by
    row as ``_logits_at`` gives them: (kept, vocabulary)."""
    with torch.no_grad(), _adapter_off(model):
        hidden = _prefixed_hidden(model, reference, ids, mask)[keep]
        return torch.log_softmax(model.get_base_model().get_output_embeddings()(hidden).float(), dim=-1)


def _kl(reference: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """KL(reference || current) per row of two log-probability tensors over the vocabulary."""
    return (reference.exp() * (reference - logp)).sum(-1)


def _adapter_off(model: PeftModel):
    """A prompt-learning patch lives outside the base model, so calling the base model directly skips it; other
    adapters (LoRA, for comparisons) sit inside its layers and must be switched off explicitly."""
    return contextlib.nullcontext() if _is_prompt_learning(model) else model.disable_adapter()


def _prefixed_hidden(model: PeftModel, reference: Reference, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The base model's last hidden states with ``reference``'s fixed soft prompt (if any) in front, at the
    positions of ``ids`` only: (batch, seq_len, hidden)."""
    base = model.get_base_model()
    embeds = base.get_input_embeddings()(ids)
    if reference.prefix is not None and reference.prefix.shape[0] > 0:
        n, batch = reference.prefix.shape[0], ids.shape[0]
        prefix = reference.prefix.to(embeds.device, embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
        embeds = torch.cat([prefix, embeds], dim=1)
        mask = torch.cat([mask.new_ones(batch, n), mask], dim=1)
    hidden = base.base_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
    return hidden[:, -ids.shape[1]:]


def _is_prompt_learning(model: PeftModel) -> bool:
    return bool(model.peft_config["default"].is_prompt_learning)


def filter_pairs(pairs: list[dict], margin: float, min_chosen_safety: float) -> tuple[list[dict], dict]:
    """Keep a pair only if its chosen response is clearly safer than its rejected one and safe on its own.

    Each pair carries ``chosen_safety`` / ``rejected_safety`` in [0, 1] (higher safer) from the risk's metric.
    Returns the kept pairs and counts of why others were dropped.
    """
    kept, dropped_margin, dropped_chosen = [], 0, 0
    for p in pairs:
        cs, rs = p.get("chosen_safety"), p.get("rejected_safety")
        if cs is None or rs is None:
            kept.append(p)
            continue
        if cs < min_chosen_safety:
            dropped_chosen += 1
        elif cs - rs < margin:
            dropped_margin += 1
        else:
            kept.append(p)
    stats = {"pairs": len(pairs), "kept": len(kept), "dropped_margin": dropped_margin,
             "dropped_unsafe_chosen": dropped_chosen}
    return kept, stats


def steps_for(n_examples: int, cfg: TrainConfig, epochs: float) -> int:
    """How many optimizer steps a stage will take (for progress estimates)."""
    steps = math.ceil(n_examples / cfg.batch_size) * epochs
    return int(min(steps, cfg.max_steps) if cfg.max_steps > 0 else steps)
