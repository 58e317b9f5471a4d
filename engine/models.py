"""Model loading: the built-in random Llamas (no download) or any Hugging Face causal LM.

Also the memory facts the scheduler needs (KV bytes per token, the KV token budget) and
peak-memory probes for trial metrics.
"""

from __future__ import annotations

import os
import platform
import resource
import socket
import sys
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import torch

from engine.config import ConfigError, EngineConfig

BUILTIN_PREFIX = "builtin:"
MAX_CONTEXT_TOKENS = 4096
# Byte-level vocabulary: 256 bytes, then the specials.
BOS_TOKEN, EOS_TOKEN, PAD_TOKEN = "<bos>", "<eos>", "<pad>"
BUILTIN_VOCAB_SIZE = 259

# Llama shapes; ~3.3M, ~24M and ~0.5B parameters. GQA (4:1 in small, 3:1 in 0.5b) as in
# Llama 3. 0.5b is for GPU checks: a real model's weight traffic per decode step (~1 GB in
# bf16), so per-step overheads and the roofline read as they would on a deployed small model.
BUILTIN_SHAPES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2),
    "small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=2),
    "0.5b": dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=20,
                 num_attention_heads=12, num_key_value_heads=4),
}  # fmt: skip
# Init gains, chosen so greedy decoding is varied and its top-1 margins are clear (median ~2
# logits, min ~2e-3 over hundreds of steps, vs ~1e-5 of padding-induced fp32 noise). The
# default init (std 0.02) gives near-flat logits: argmax flips on noise and loops on one token.
LINEAR_GAIN = 1.6  # std = gain / sqrt(fan_in): attention matters, outputs do not cycle fast
LM_HEAD_GAIN = 10.0  # logits std ~10
EMBEDDING_STD = 1.0

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}  # fmt: skip
CPU_KV_RAM_FRACTION = 0.5  # never let the CPU KV budget exceed half of the available RAM
CUDA_ACTIVATION_HEADROOM_FRACTION = 0.10  # of free memory, kept for activations and logits
CUDA_MIN_HEADROOM_BYTES = 512 * 2**20
# A reset leaves VmHWM at the RSS of that moment; the RSS read just after may be a little lower.
RESET_SLACK_BYTES = 16 * 2**20
_cpu_peak_tracks_since_reset = True  # False after a reset the OS refused or ignored


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message is one line naming the model and the fix."""


@dataclass
class LoadedModel:
    """A model ready for inference, with its tokenizer and the facts the engine needs."""

    model: torch.nn.Module
    tokenizer: Any  # a Hugging Face tokenizer (the builtins wrap a `tokenizers.Tokenizer`)
    name: str
    device: torch.device
    dtype: torch.dtype
    eos_token_id: int | None
    pad_token_id: int
    max_context_tokens: int
    num_params: int
    kv_bytes_per_token: int
    device_name: str = ""  # human-readable hardware, e.g. "NVIDIA H200" or the CPU model

    def encode(self, text: str) -> list[int]:
        """Text to token ids, with the tokenizer's usual special tokens (e.g. BOS)."""
        return list(self.tokenizer.encode(text))

    def decode(self, ids: list[int]) -> str:
        """Token ids to text, special tokens dropped."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def load_model(config: EngineConfig) -> LoadedModel:
    """Load `config.model` on the resolved device and dtype, in eval mode."""
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    if config.model.startswith(BUILTIN_PREFIX):
        model, tokenizer = build_builtin(config.model, config.seed)
    else:
        model, tokenizer = _load_hf(config.model, dtype, config.trust_remote_code)
    model = model.to(device=device, dtype=dtype).eval()
    return _describe(config.model, model, tokenizer, device, dtype)


def resolve_device(name: str) -> torch.device:
    """`auto` = cuda, then mps, then cpu; an unavailable explicit device is a ModelLoadError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _has_mps() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {name!r} requested but CUDA is unavailable; use cpu or auto")
    if device.type == "mps" and not _has_mps():
        raise ModelLoadError(f"device {name!r} requested but MPS is unavailable; use cpu or auto")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` = bf16 on CUDA, fp32 elsewhere; else float32/bfloat16/float16 (or fp32/bf16/fp16)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def kv_budget_tokens(loaded: LoadedModel, config: EngineConfig) -> int:
    """KV-cache budget in tokens: the setting, else free CUDA memory, else cpu_kv_cache_gb."""
    if config.kv_budget_tokens is not None:
        return config.kv_budget_tokens
    if loaded.device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(loaded.device)
        headroom = max(CUDA_MIN_HEADROOM_BYTES, CUDA_ACTIVATION_HEADROOM_FRACTION * free_bytes)
        budget_bytes = free_bytes * config.gpu_memory_utilization - headroom
    else:
        budget_bytes = min(config.cpu_kv_cache_gb * 2**30, _available_ram() * CPU_KV_RAM_FRACTION)
    return max(1, int(budget_bytes // loaded.kv_bytes_per_token))


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak memory since the last reset: CUDA allocator peak, else the process's peak RSS.

    None on CPU when the last reset was not honoured (no clear_refs, e.g. macOS or a sandboxed
    /proc): the lifetime peak would pass for this trial's and make every config look alike."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps":  # no peak counter: the driver's current allocation
        return torch.mps.driver_allocated_memory() / 2**20
    if not _cpu_peak_tracks_since_reset:
        return None
    return _peak_rss_bytes() / 2**20


def reset_peak_memory(device: torch.device) -> bool:
    """Restart peak tracking (on CPU: Linux's VmHWM via clear_refs); whether it restarted."""
    global _cpu_peak_tracks_since_reset
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    if device.type != "cpu":
        return False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5 = reset the peak RSS to the current RSS
    except OSError:
        _cpu_peak_tracks_since_reset = False
        return False
    # Some kernels and sandboxes accept the write and ignore it: check the peak came down.
    status = _proc_status_kib(("VmHWM:", "VmRSS:"))
    honoured = (len(status) == 2
                and status["VmHWM:"] - status["VmRSS:"] <= RESET_SLACK_BYTES // 1024)
    _cpu_peak_tracks_since_reset = honoured
    return honoured


def device_name(device: torch.device) -> str:
    """Human-readable hardware name: the GPU's name, or the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return _cpu_model() or platform.processor() or platform.machine() or "cpu"


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def builtin_names() -> list[str]:
    return [BUILTIN_PREFIX + name for name in BUILTIN_SHAPES]


def build_byte_tokenizer() -> Any:
    """A byte-level tokenizer built in code: 256 byte tokens + <bos>/<eos>/<pad>, BOS prepended."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()  # the GPT-2 byte -> printable char map
    vocab = {ch: i for i, ch in enumerate(sorted(byte_chars, key=_byte_of))}
    for token in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN):
        vocab[token] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", special_tokens=[(BOS_TOKEN, vocab[BOS_TOKEN])]
    )
    tok.add_special_tokens([BOS_TOKEN, EOS_TOKEN, PAD_TOKEN])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN
    )


def _byte_of(ch: str) -> int:
    # Inverse of GPT-2's bytes_to_unicode: printable bytes map to themselves, others to 256+.
    code = ord(ch)
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    if code in printable:
        return code
    others = [b for b in range(256) if b not in printable]
    return others[code - 256]


def build_builtin(name: str, seed: int) -> tuple[torch.nn.Module, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    size = name[len(BUILTIN_PREFIX) :]
    if size not in BUILTIN_SHAPES:
        raise ModelLoadError(
            f"cannot load model {name!r}: no such built-in; use {' or '.join(builtin_names())}"
        )
    tokenizer = build_byte_tokenizer()
    config = LlamaConfig(
        vocab_size=BUILTIN_VOCAB_SIZE,
        max_position_embeddings=MAX_CONTEXT_TOKENS,
        tie_word_embeddings=False,  # tied: logits ~ h . E favour repeating the input token
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa",
        **BUILTIN_SHAPES[size],
    )
    model = LlamaForCausalLM(config)
    init_random_weights(model, seed)
    return model, tokenizer


@torch.no_grad()
def init_random_weights(model: torch.nn.Module, seed: int) -> None:
    """Seeded random weights with clear greedy margins (see the gains above); norms stay 1."""
    # Our own generator and a sorted walk: the weights depend on the seed only, not on the global
    # RNG state nor on how a transformers version initialises. Norm weights stay at 1.
    gen = torch.Generator().manual_seed(seed)
    for name, param in sorted(model.named_parameters()):
        if param.ndim < 2:
            continue
        if "embed_tokens" in name:
            std = EMBEDDING_STD
        else:
            gain = LM_HEAD_GAIN if "lm_head" in name else LINEAR_GAIN
            std = gain / param.shape[1] ** 0.5  # weight: [out, in]
        param.copy_(torch.randn(param.shape, generator=gen) * std)


def _load_hf(name: str, dtype: torch.dtype, trust_remote_code: bool) -> tuple[torch.nn.Module, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    is_offline = not os.path.isdir(name) and not can_reach_hub()
    # Offline: cache only, so an unknown id fails at once instead of after minutes of retries.
    kwargs: dict[str, Any] = dict(trust_remote_code=trust_remote_code, local_files_only=is_offline)
    try:
        AutoConfig.from_pretrained(name, **kwargs)  # fails fast and clearly, before the weights
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                name, dtype=dtype, attn_implementation="sdpa", **kwargs
            )
        except ValueError as exc:
            if "sdpa" not in str(exc).lower():
                raise
            model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kwargs)
    except Exception as exc:  # any loader failure becomes one clear line, no traceback wall
        raise ModelLoadError(_load_failure_message(name, exc, is_offline)) from None
    return model, tokenizer


def _load_failure_message(name: str, exc: Exception, is_offline: bool) -> str:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    if os.path.isdir(name):
        where = f"the local directory is not a loadable causal LM ({reason})"
    elif name.startswith((".", "/", "~")) or name.count("/") > 1:
        where = "no such local directory"
    elif is_offline:
        where = "not a local directory, not in the Hugging Face cache, and the hub is unreachable"
    else:
        where = f"not a local directory and the Hugging Face hub could not provide it ({reason})"
    return (
        f"cannot load model {name!r}: {where}; use {', '.join(builtin_names())}, "
        "a local model directory or a reachable hub id"
    )


def can_reach_hub(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connect (HF_HUB_OFFLINE=1 says no)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return True  # cannot probe through a proxy cheaply: let the hub client try
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host or "huggingface.co", 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def _describe(
    name: str, model: torch.nn.Module, tokenizer: Any, device: torch.device, dtype: torch.dtype
) -> LoadedModel:
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # batching needs a pad id; it is always masked
    eos = tokenizer.eos_token_id
    if eos is None:
        eos = getattr(model.generation_config, "eos_token_id", None)
        eos = eos[0] if isinstance(eos, list) and eos else eos
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    text_config = model.config.get_text_config()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        device=device,
        dtype=dtype,
        eos_token_id=eos,
        pad_token_id=pad if pad is not None else 0,
        max_context_tokens=int(getattr(text_config, "max_position_embeddings", MAX_CONTEXT_TOKENS)),
        num_params=sum(p.numel() for p in model.parameters()),
        kv_bytes_per_token=_kv_bytes_per_token(text_config, dtype),
        device_name=device_name(device),
    )


def _kv_bytes_per_token(text_config: Any, dtype: torch.dtype) -> int:
    # K and V, every layer: 2 * layers * kv_heads * head_dim * bytes per element.
    num_heads = text_config.num_attention_heads
    num_kv_heads = getattr(text_config, "num_key_value_heads", None) or num_heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // num_heads
    element_bytes = torch.empty((), dtype=dtype).element_size()
    return 2 * text_config.num_hidden_layers * num_kv_heads * head_dim * element_bytes


def _has_mps() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def _available_ram() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return 8 * 2**30


def _proc_status_kib(keys: tuple[str, ...]) -> dict[str, int]:
    """The named lines of /proc/self/status, in KiB; empty where there is no /proc."""
    found: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(maxsplit=1)[0] if line.strip() else ""
                if key in keys:
                    found[key] = int(line.split()[1])
    except OSError:
        pass
    return found


def _peak_rss_bytes() -> int:
    hwm = _proc_status_kib(("VmHWM:",))  # Linux: VmHWM honours the clear_refs reset above
    if hwm:
        return hwm["VmHWM:"] * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux
