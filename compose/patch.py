"""The policy patch: a PEFT prompt-tuning soft prompt prepended to a frozen model's input embeddings.

A patch is an ``l x d`` matrix (``l`` virtual tokens, ``d`` the embedding width). Only it is trained; the
base model stays frozen. A patch may be made of several *segments*, one per risk (stacked and concatenated
strategies): segment ``i`` owns rows ``[start, start + tokens)`` of the matrix, the first segment first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from peft import PeftModel, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

DEFAULT_TOKENS = 50
DEFAULT_INIT_TEXT = "Generate safe responses."


@dataclass
class Segment:
    """Rows ``[start, start + tokens)`` of a patch belong to ``risk``."""

    risk: str
    start: int
    tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def segments_for(blocks: list[tuple[str, int]]) -> list[Segment]:
    """Lay out ``[(risk, tokens), ...]`` one after another."""
    out, start = [], 0
    for risk, tokens in blocks:
        out.append(Segment(risk, start, tokens))
        start += tokens
    return out


def check_segments(segments: list[dict], tokens: int) -> str | None:
    """Why ``segments`` (dicts with risk, start, tokens) do not describe a patch of ``tokens`` rows, or None.

    Segments may share rows: a patch trained on several risks at once (sequential, joint, merged) gives each
    of them the same block. The distinct blocks must tile the rows ``[0, tokens)`` without gaps or partial
    overlaps; this also holds for patches composed of several such patches (blocks one after another).
    """
    if not segments:
        return "a patch needs at least one risk segment"
    blocks = sorted({(s["start"], s["tokens"]) for s in segments})
    position = 0
    for start, length in blocks:
        if start != position:
            return (f"segment rows [{start}, {start + length}) do not follow on from row {position}: segments "
                    f"must tile the {tokens} rows of the patch (risks trained together share one block)")
        position = start + length
    if position != tokens:
        return f"segments cover {position} rows, the patch has {tokens}"
    return None


def init_from_text(base_model, tokenizer, num_tokens: int, text: str) -> torch.Tensor:
    """Embeddings of ``text``'s tokens, repeated to fill ``num_tokens`` rows (float32).

    Same scheme as PEFT's ``PromptTuningInit.TEXT``, done here so a saved patch never needs the tokenizer to load.
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
    ids = (ids * (num_tokens // len(ids) + 1))[:num_tokens]
    emb = base_model.get_input_embeddings().weight
    return emb[torch.tensor(ids, device=emb.device)].detach().float().clone()


def attach_patch(base_model, tokenizer, num_tokens: int = DEFAULT_TOKENS, init_text: str = DEFAULT_INIT_TEXT,
                 init: torch.Tensor | None = None) -> PeftModel:
    """Wrap ``base_model`` with a fresh prompt-tuning patch; only the patch is trainable (kept in float32).

    ``init`` (``num_tokens x d``) overrides the text initialisation, e.g. to continue from an earlier patch.
    """
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_tokens,
                                prompt_tuning_init=PromptTuningInit.RANDOM)
    config.base_model_name_or_path = getattr(base_model.config, "name_or_path", None)
    model = get_peft_model(base_model, config)
    weights = init if init is not None else init_from_text(base_model, tokenizer, num_tokens, init_text)
    set_prompt(model, weights)
    return model


def prompt_parameter(model: PeftModel, adapter: str = "default") -> torch.nn.Parameter:
    return model.prompt_encoder[adapter].embedding.weight


def get_prompt(model: PeftModel, adapter: str = "default") -> torch.Tensor:
    """A float32 copy of the patch matrix."""
    return prompt_parameter(model, adapter).detach().float().clone()


def set_prompt(model: PeftModel, weights: torch.Tensor, adapter: str = "default") -> None:
    param = prompt_parameter(model, adapter)
    if tuple(weights.shape) != tuple(param.shape):
        raise ValueError(f"patch shape {tuple(weights.shape)} does not fit adapter of shape {tuple(param.shape)}")
    with torch.no_grad():
        param.data = weights.to(device=param.device, dtype=torch.float32).clone()
    param.requires_grad_(True)


def freeze_rows(model: PeftModel, frozen: slice, adapter: str = "default"):
    """Zero the gradient of ``frozen`` rows so they stay bit-identical while the other rows train.

    Returns the hook handle (call ``.remove()`` when done). Use with an optimizer without weight decay.
    """
    def hook(grad):
        grad = grad.clone()
        grad[frozen] = 0
        return grad

    return prompt_parameter(model, adapter).register_hook(hook)


def count_parameters(model: PeftModel) -> dict:
    """Trainable (patch) parameters, base parameters and the patch's share of the model in percent."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    patch = sum(p.numel() for p in model.prompt_encoder.parameters())
    base = sum(p.numel() for p in model.get_base_model().parameters())
    return {"patch": patch, "trainable": trainable, "base": base, "share_percent": 100.0 * patch / base}
