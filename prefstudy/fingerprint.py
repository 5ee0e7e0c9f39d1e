"""What a result was computed from, as a digest: every reuse is checked against one.

prefstudy reuses work in five places: a run that has ended (a study or `train --resume` skips
it), the disk caches every run of a study shares (reference log-probs, step-0 evaluations, the
de-quantised SmolLM2), the frozen blocks' outputs kept in memory (prefstudy.frozen), a
checkpoint, and a study's audit of its pairs. None of them is trusted because a run id, a model name or a path matches: each is
keyed on, or checked against, the digest of what produced it —

    the resolved configuration   (its fields that change results)
    the data                     `pairs` (ids hash the texts) and `frame` (neutral text, probes)
    the model                    `model`: its config and the content of its state dict, for a
                                 loaded model; `files`: the bytes of the files it is loaded from,
                                 where it is not loaded (a run that has ended)

Measured on the 2-core CPU this study ran on (SmolLM2-135M-Instruct, page cache warm): its state
dict hashes in 0.53 s in float32 (540 MB, the tied head counted once) and 0.36 s in bfloat16,
its safetensors file (538 MB) in 0.73–0.85 s, the GGUF it is de-quantised from (98 MB) in
0.1–0.25 s, its tokenizer in 0.07 s, a run's data (`train.fingerprints`: load and hash) in 0.12 s;
loading the model takes 4.4 s and a run 37–87 s. Each is hashed once per process: `model` is
remembered per model until a tensor is modified in place or replaced (2 ms to check), `files`
per file until its size, modification time or inode changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

# What a folder's digest leaves out: documentation and version-control files, which a model
# never reads.
IGNORED = ("readme", "license", "licence", ".git")

_FILES: dict[tuple, str] = {}  # (device, inode, size, mtime, ctime) → sha256 of its bytes
_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → (tensors, digest)


def digest(*parts: Any) -> str:
    """sha256 of `parts` as canonical JSON (keys sorted; anything else as its str)."""
    text = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- files


def _file(path: Path) -> str:
    st = path.stat()  # follows a symbolic link (a hub snapshot's files) to its target
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _FILES:
        with open(path, "rb") as f:
            _FILES[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _FILES[key]


def files(path: str | os.PathLike, *, keep: Callable[[str], bool] | None = None) -> str:
    """The content of a file, or of a folder's top-level files (their names and bytes), leaving
    out hidden files, READMEs and licences, and names `keep` refuses."""
    path = Path(path)
    if path.is_file():
        return _file(path)
    members = sorted(p for p in path.iterdir()
                     if p.is_file() and not p.name.startswith(".")
                     and not p.name.lower().startswith(IGNORED) and (keep is None or keep(p.name)))
    return digest([(p.name, _file(p)) for p in members])


# --------------------------------------------------------------------------- models


def _tensors(model) -> list[tuple[str, Any]]:
    return list(model.state_dict(keep_vars=True).items())


def _signature(tensors) -> tuple:
    """What changes when a tensor is replaced or modified in place (its version counter)."""
    return tuple((name, t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for name, t in tensors)


def model(net) -> str:
    """The function a loaded model computes: its config (without where it was loaded from) and
    the names, dtypes, shapes and bytes of its state dict, a tied tensor once."""
    import torch

    tensors = _tensors(net)
    signature = _signature(tensors)
    remembered = _MODELS.get(net)
    if remembered is not None and remembered[0] == signature:
        return remembered[1]
    h = hashlib.sha256()
    config = getattr(net, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        settings = {k: v for k, v in config.to_dict().items()
                    if k not in ("_name_or_path", "transformers_version", "use_cache")}
        h.update(digest(settings).encode())
    seen: dict[tuple, str] = {}
    for name, t in tensors:
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        same = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        if same in seen:  # tied weights: the same tensor under another name
            h.update(f"={seen[same]}".encode())
            continue
        seen[same] = name
        flat = t.cpu().contiguous().reshape(-1)
        h.update(memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else b"")
    value = h.hexdigest()
    _MODELS[net] = (signature, value)
    return value


def tokenizer(tok) -> str:
    """The content of a tokenizer: its vocabulary and rules, special tokens and chat template."""
    backend = getattr(tok, "backend_tokenizer", None)
    rules = backend.to_str() if backend is not None else sorted(tok.get_vocab().items())
    return digest(rules, tok.special_tokens_map, getattr(tok, "chat_template", None),
                  getattr(tok, "padding_side", None))


# --------------------------------------------------------------------------- data


def pairs(pair_set) -> str | None:
    """The content of preference pairs, in order: each pair's id (a hash of its prompt, chosen
    and rejected text) and its meta. None for no pairs."""
    if pair_set is None:
        return None
    return digest([(p.pair_id, dict(p.meta)) for p in pair_set])


def frame(df) -> str | None:
    """The content of a table (neutral text, probes), rows in order. None for no table."""
    if df is None:
        return None
    return digest(list(df.columns), df.to_dict("records"))
