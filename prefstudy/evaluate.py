"""Evaluation during a run: held-out pair records, held-out perplexity, greedy generations.

`evaluate` writes all three at a step. At step 0 the model is the untrained starting model,
whose numbers every run of a study shares, so they come from disk caches: the held-out pairs'
log-probs are the reference cache (prefstudy.step.reference_logps), perplexity and generations
are cached by `at_start`. A run with `use_weighting` scores its step-0 held-out pairs with the
model itself: their WPO weights need the policy's Σ_v p_v², which the reference cache lacks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd
import torch

from . import fingerprint
from .cache import cached, load_frame_entry, save_frame_entry
from .config import TrainConfig
from .encode import Encoded, collate, collate_sequences
from .inputs import Inputs
from .logprobs import token_logps
from .models import cache_dir
from .records import RunWriter
from .step import forward, forward_records, reference_logps

PPL_MAX_TOKENS = 256  # a held-out passage is scored on its first this-many tokens


@torch.no_grad()
def evaluate_pairs(model, encoded: Encoded, cfg: TrainConfig, ref, pad_id, device, step, *,
                   start: dict | None = None) -> pd.DataFrame:
    """Records of the held-out pairs (no gradient statistics); `start`: see `step.forward`."""
    frames = []
    for i in range(0, len(encoded.items), 8):
        batch = collate(encoded.items[i:i + 8], pad_id).to(device)
        frames.append(forward_records(forward(model, batch, cfg, ref, start=start), batch, cfg,
                                      step, math.nan, f"e{step}-{i // 8}"))
    return pd.concat(frames, ignore_index=True)


@torch.no_grad()
def perplexity(model, tokenizer, texts: pd.DataFrame, device, step, *,
               batch_size: int = 16, max_tokens: int = PPL_MAX_TOKENS) -> pd.DataFrame:
    """Summed NLL and token count of each held-out passage (perplexity = exp(nll_sum / n)).

    Every token after the first is scored, through the same chunked log-prob path as training:
    a passage is collated as a one-token "prompt" followed by the rest as its "response".
    """
    texts = texts.reset_index(drop=True)
    rows = []
    for start in range(0, len(texts), batch_size):
        part = texts.iloc[start:start + batch_size]
        ids = [tokenizer(t)["input_ids"][:max_tokens] for t in part.text]
        batch = collate_sequences([(seq[:1], seq[1:]) for seq in ids], tokenizer.pad_token_id,
                                  [str(i) for i in part.index]).to(device)
        t = token_logps(model, batch)
        for i, (idx, row) in enumerate(part.iterrows()):
            rows.append({"step": step, "text_id": int(idx), "lang": row.get("lang", ""),
                         "nll_sum": -float(t.sum[i]), "n_tokens": int(t.count[i])})
    return pd.DataFrame(rows)


def _chat_prompts(tokenizer, prompts) -> list[str]:
    """The prompts as the start of an assistant turn where the tokenizer has a chat template."""
    if not tokenizer.chat_template:
        return list(prompts)
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                          add_generation_prompt=True) for p in prompts]


@torch.no_grad()
def generate(model, tokenizer, probes: pd.DataFrame, device, step, max_new_tokens) -> pd.DataFrame:
    """Greedy continuations of the probe prompts, in one left-padded batch (chat template where
    the tokenizer has one)."""
    probes = probes.reset_index(drop=True)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(_chat_prompts(tokenizer, probes.prompt), return_tensors="pt",
                        padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    enc = enc.to(device)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id, use_cache=True)
    width = enc["input_ids"].shape[1]
    ends = _end_ids(model, tokenizer)
    rows = []
    for i, row in probes.iterrows():
        ids = out[i, width:].tolist()
        text = decode_generated(tokenizer, ids, cut=not ends.intersection(ids))
        rows.append({"step": step, "probe_id": i, "lang": row.get("lang", ""),
                     "kind": row.get("kind", ""), "prompt": row.prompt, "text": text})
    return pd.DataFrame(rows)


REPLACEMENT = "\ufffd"  # what a tokenizer decodes bytes that are not (yet) a character to


def _end_ids(model, tokenizer) -> set[int]:
    """The token ids that end a generation (the model's and the tokenizer's end of sequence)."""
    ends = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ends = set(ends if isinstance(ends, list | tuple) else [ends])
    return {int(t) for t in ends | {tokenizer.eos_token_id} if t is not None}


def decode_generated(tokenizer, ids: list[int], *, cut: bool) -> str:
    """The text of generated token ids; `cut`: the generation was stopped by max_new_tokens.

    A stop can fall inside a character: byte-level tokenizers spell a CJK character or an emoji
    as 2-4 byte tokens, and decoding its first bytes alone gives U+FFFD. That character is
    dropped, never guessed: the text is that of the tokens before the ones holding the cut
    character's bytes (at most 3, a character having at most 4), plus what those tokens decode
    to before their trailing U+FFFD. The result is always a prefix of the plain decode. A U+FFFD
    anywhere else, or in a generation that ended itself, is what the model wrote and stays.
    """
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if not (cut and text.endswith(REPLACEMENT)):
        return text
    for drop in range(1, min(3, len(ids)) + 1):
        head = tokenizer.decode(ids[:-drop], skip_special_tokens=True)
        if not head.endswith(REPLACEMENT) and text.startswith(head):
            return head + text[len(head):].rstrip(REPLACEMENT)
    return text[:-1]


# Part of the step-0 caches' key: raise it whenever what `perplexity` or `generate` computes
# changes (how text is scored, decoded or cut), so that no entry computed the old way is reused.
START_VERSION = 2


def at_start(kind: str, model, tokenizer, device, inputs: dict,
             compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """`compute()` of the untrained starting model, cached on disk like the reference log-probs:
    every run of a study starts from the same model, so its step-0 perplexity and generations
    are computed once. The key covers the model's content (prefstudy.fingerprint: its config and
    weights, so its name, seed and dtype), its tokenizer's, the device type, `inputs` and
    START_VERSION; an entry that is damaged or made for another key is computed again."""
    key = fingerprint.digest({
        "kind": kind, "version": START_VERSION, "model": fingerprint.model(model),
        "tokenizer": fingerprint.tokenizer(tokenizer), "device": torch.device(device).type,
        "inputs": inputs})
    return cached(cache_dir() / "start" / f"{kind}-{key[:20]}.parquet", compute,
                  save=lambda df, path: save_frame_entry(df, path, key),
                  load=lambda path: load_frame_entry(path, key))


def _has(table) -> bool:
    return table is not None and len(table) > 0


def evaluate(writer: RunWriter, model, tokenizer, inputs: Inputs, cfg: TrainConfig, ref_held,
             device, step: int) -> None:
    """Held-out records, perplexity and generations at `step`, written by `writer`. At step 0
    they come from the caches of the starting model (see the module docstring)."""
    model.eval()
    pad, first = tokenizer.pad_token_id, step == 0
    if _has(inputs.heldout):
        cache = first and not cfg.use_weighting  # the cache has no Σ_v p_v² for the weights
        start = reference_logps(model, inputs.heldout, cfg, pad, device) if cache else None
        writer.append("evals", evaluate_pairs(model, inputs.heldout, cfg, ref_held, pad, device,
                                              step, start=start), step=step)
    if _has(inputs.neutral):
        def ppl():
            return perplexity(model, tokenizer, inputs.neutral, device, step)
        texts = {"texts": inputs.neutral.reset_index(drop=True).to_dict("records"),
                 "max_tokens": PPL_MAX_TOKENS}
        writer.append("perplexity", at_start("perplexity", model, tokenizer, device, texts, ppl)
                      if first else ppl(), step=step)
    if _has(inputs.probes):
        def gen():
            return generate(model, tokenizer, inputs.probes, device, step, cfg.gen_max_new_tokens)
        probes = {"probes": inputs.probes.reset_index(drop=True).to_dict("records"),
                  "tokens": cfg.gen_max_new_tokens}
        writer.append("generations", at_start("generations", model, tokenizer, device, probes,
                                              gen) if first else gen(), step=step)
    model.train()
