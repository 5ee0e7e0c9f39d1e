"""Evaluation during a run: held-out pair records, held-out perplexity, greedy generations.

`evaluate` writes all three at a step. At step 0 the model is the untrained starting model,
whose numbers every run of a study shares, so they come from disk caches: the held-out pairs'
log-probs are the reference cache (prefstudy.step.reference_logps), perplexity and generations
are cached by `at_start`. A run with `use_weighting` scores its step-0 held-out pairs with the
model itself: their WPO weights need the policy's Σ_v p_v², which the reference cache lacks.

The pair records (`evals`) carry records.EVAL_COLUMNS besides the record: their split (held-out
pairs, and the config's n_train_eval training pairs evaluated the same way), the KL of the
policy from the starting model over each response (`logprobs.token_logps_kl`, against a copy
of the starting model the run keeps, `keep_starting_model`), and for held-out pairs the
log-prob of the starting model's own greedy answer to the prompt (the squeezing effect, Ren &
Sutherland 2025: `greedy_answers`, generated once per study and cached by `at_start`,
`answered`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from . import fingerprint
from .cache import cached, load_frame_entry, save_frame_entry
from .config import TrainConfig
from .encode import Batch, Encoded, collate, collate_sequences
from .frozen import frozen_copy
from .inputs import Inputs
from .logprobs import response_hidden, token_logps, token_logps_kl
from .models import cache_dir
from .records import RunWriter, eval_columns
from .step import forward, forward_records, reference_logps

PPL_MAX_TOKENS = 256  # a held-out passage is scored on its first this-many tokens


@torch.no_grad()
def evaluate_pairs(model, encoded: Encoded, cfg: TrainConfig, ref, pad_id, device, step, *,
                   start: dict | None = None, starting: StartingModel | None = None,
                   tag: str = "") -> pd.DataFrame:
    """Records of the pairs (no gradient statistics), with kl_sum_p and kl_sum_n, the KL from
    `starting`'s model (`_kl_sums`); `start`: see `step.forward`; `tag` marks the batch names
    ('e<step>-<tag><chunk>': 't' for training pairs)."""
    frames = []
    for i in range(0, len(encoded.items), 8):
        batch = collate(encoded.items[i:i + 8], pad_id).to(device)
        logps = kl = None
        if step and starting is not None:  # the log-probs come with the KL, in one pass
            logps, kl = token_logps_kl(model, starting.model, batch, sum_sq=cfg.use_weighting,
                                       start_hidden=starting.hidden(batch))
        fw = forward(model, batch, cfg, ref, start=start, logps=logps)
        rec = forward_records(fw, batch, cfg, step, math.nan, f"e{step}-{tag}{i // 8}")
        frames.append(rec.assign(**_kl_sums(kl, batch, step)))
    return pd.concat(frames, ignore_index=True)


def _kl_sums(kl: torch.Tensor | None, batch: Batch, step: int) -> dict[str, Any]:
    """kl_sum_p, kl_sum_n of the batch's pairs: each response's per-token KL(π_t ‖ π_0)
    (`logprobs.token_logps_kl`, Shape: (2·pairs, L − 1)) summed, Shape: (pairs,) each. Exactly 0
    at step 0, where the model is the starting model; NaN at a later step without the KL."""
    if step == 0 or kl is None:
        value = 0.0 if step == 0 else math.nan
        return {"kl_sum_p": value, "kl_sum_n": value}
    chosen, rejected = kl.sum(-1).split(batch.size)
    return {"kl_sum_p": chosen.tolist(), "kl_sum_n": rejected.tolist()}


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


# Part of the step-0 caches' key: raise it whenever what `perplexity`, `generate` or
# `greedy_answers` computes changes (how text is scored, decoded or cut), so that no entry
# computed the old way is reused.
START_VERSION = 2


def at_start(kind: str, model, tokenizer, device, inputs: dict,
             compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """`compute()` of the untrained starting model, cached on disk like the reference log-probs:
    every run of a study starts from the same model, so its step-0 perplexity, generations and
    greedy answers to the held-out prompts are computed once. The key covers the model's content (prefstudy.fingerprint: its config and
    weights, so its name, seed and dtype), its tokenizer's, the device type, `inputs` and
    START_VERSION; an entry that is damaged or made for another key is computed again."""
    key = fingerprint.digest({
        "kind": kind, "version": START_VERSION, "model": fingerprint.model(model),
        "tokenizer": fingerprint.tokenizer(tokenizer), "device": torch.device(device).type,
        "inputs": inputs})
    return cached(cache_dir() / "start" / f"{kind}-{key[:20]}.parquet", compute,
                  save=lambda df, path: save_frame_entry(df, path, key),
                  load=lambda path: load_frame_entry(path, key))


# --------------------------------------------------------------------------- the squeezing effect


@torch.no_grad()
def greedy_answers(model, tokenizer, encoded: Encoded, device, max_new_tokens: int, *,
                   batch_size: int = 8) -> pd.DataFrame:
    """The model's greedy answer to each pair's prompt, and its log-prob under the model.

    The prompt is the pair's prompt tokens as encoded (the chat template, cut as the pairs'
    are), left-padded in batches of `batch_size`; the answer is what greedy decoding writes
    through its first end-of-sequence token (as a pair's response ends with its end-of-turn
    token), at most max_new_tokens. Returns one row per pair: pair_id, answer_ids, len_g and
    greedy_logp_sum (`answer_logps`, NaN for an empty answer).
    """
    ends, pad = _end_ids(model, tokenizer), tokenizer.pad_token_id
    prompts = list(dict.fromkeys(e.prompt_ids for e in encoded.items))  # each prompt once
    answers = [answer for i in range(0, len(prompts), batch_size)
               for answer in _greedy_batch(model, prompts[i:i + batch_size], pad, device,
                                           max_new_tokens, ends)]
    logps = dict(zip(prompts, answer_logps(model, prompts, answers, pad, device)))
    answer = dict(zip(prompts, answers))
    return pd.DataFrame({"pair_id": [e.pair_id for e in encoded.items],
                         "answer_ids": [answer[e.prompt_ids] for e in encoded.items],
                         "len_g": [len(answer[e.prompt_ids]) for e in encoded.items],
                         "greedy_logp_sum": [logps[e.prompt_ids] for e in encoded.items]})


def _greedy_batch(model, prompts: Sequence[Sequence[int]], pad_id: int, device,
                  max_new_tokens: int, ends: set[int]) -> list[list[int]]:
    """Greedy continuations of left-padded prompt ids, each cut after its first end token."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):], mask[row, width - len(p):] = torch.tensor(p), 1
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                         max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id,
                         use_cache=True)
    return [_through_end(row[width:].tolist(), ends) for row in out]


def _through_end(ids: list[int], ends: set[int]) -> list[int]:
    """`ids` up to and including the first end token (all of them without one)."""
    stop = next((i for i, t in enumerate(ids) if t in ends), None)
    return ids if stop is None else ids[:stop + 1]


@torch.no_grad()
def answer_logps(model, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
                 pad_id: int, device, *, batch_size: int = 8) -> list[float]:
    """log π(answer | prompt) of each (prompt ids, answer ids), summed over the answer's tokens,
    teacher-forced through the chunked log-prob path (`token_logps`); NaN for an empty answer.
    Shape: (sequences,)."""
    out = []
    for i in range(0, len(prompts), batch_size):
        seqs = [(tuple(p), tuple(int(t) for t in a))
                for p, a in zip(prompts[i:i + batch_size], answers[i:i + batch_size])]
        sums = token_logps(model, collate_sequences(seqs, pad_id).to(device)).sum.tolist()
        out += [s if a else math.nan for s, (_, a) in zip(sums, seqs)]
    return out


def _greedy_columns(model, greedy: pd.DataFrame, encoded: Encoded, pad_id: int, device,
                    step: int) -> dict[str, list]:
    """greedy_logp_sum and len_g of the pairs of `encoded`, in their order: the starting model's
    greedy answers (`greedy`, from `greedy_answers`) scored by `model`; at step 0 the value the
    starting model gave them when they were made."""
    g = greedy.set_index("pair_id").loc[[e.pair_id for e in encoded.items]]
    if step == 0:
        return {"greedy_logp_sum": g.greedy_logp_sum.tolist(),
                "len_g": g.len_g.astype(int).tolist()}
    # pairs that share a prompt share its answer: each (prompt, answer) is scored once
    asked = [(e.prompt_ids, tuple(int(t) for t in a)) for e, a in zip(encoded.items, g.answer_ids)]
    unique = list(dict.fromkeys(asked))
    scored = dict(zip(unique, answer_logps(model, [p for p, _ in unique], [a for _, a in unique],
                                           pad_id, device)))
    return {"greedy_logp_sum": [scored[k] for k in asked], "len_g": g.len_g.astype(int).tolist()}


# --------------------------------------------------------------------------- one evaluation


@dataclass
class StartingModel:
    """What a run's evaluations compare the policy with (`keep_starting_model`)."""

    model: Any  # the starting model, which no update reaches (frozen.frozen_copy)
    greedy: pd.DataFrame | None = None  # its greedy answers to the held-out prompts (`answered`)
    # batch's pair ids → its response hidden states (`hidden`): they never change in a run
    hidden_states: dict = field(default_factory=dict, repr=False)

    def hidden(self, batch: Batch) -> torch.Tensor:
        """logprobs.response_hidden of the starting model for `batch`, computed once per run
        and kept (a few MB): the KL's later evaluations run only the policy. Shape: (response
        tokens, hidden size)."""
        key = tuple(batch.pair_ids)  # within a run, a pair's tokens never change
        if key not in self.hidden_states:
            self.hidden_states[key] = response_hidden(self.model, batch)[0]
        return self.hidden_states[key]


def keep_starting_model(model, inputs: Inputs) -> StartingModel | None:
    """A copy of the starting model for the KL of every evaluation, None where the run evaluates
    no pairs. Call it with the model as loaded, before any update or checkpoint: a resumed run
    loads its model from the preset first, so what is kept is the starting model then too."""
    if not (_has(inputs.heldout) or _has(inputs.train_eval)):
        return None
    return StartingModel(frozen_copy(model))


def answered(starting: StartingModel, tokenizer, heldout: Encoded | None, cfg: TrainConfig,
             device) -> StartingModel:
    """`starting` with its greedy answers to the held-out pairs' prompts (`greedy_answers`),
    cached on disk like the other step-0 material (`at_start`, keyed on the model, tokenizer,
    prompt tokens and gen_max_new_tokens: every run of a study shares them)."""
    if not _has(heldout):
        return starting
    prompts = {"prompts": [[e.pair_id, list(e.prompt_ids)] for e in heldout.items],
               "tokens": cfg.gen_max_new_tokens}
    greedy = at_start("greedy", starting.model, tokenizer, device, prompts, lambda: greedy_answers(
        starting.model, tokenizer, heldout, device, cfg.gen_max_new_tokens))
    return dataclasses.replace(starting, greedy=greedy)


def _has(table) -> bool:
    return table is not None and len(table) > 0


def pair_evals(model, encoded: Encoded, cfg: TrainConfig, ref, pad_id: int, device, step: int,
               split: str, starting: StartingModel | None = None) -> pd.DataFrame:
    """The evaluation records (records.eval_columns) of the pairs of one `split` at `step`.

    At step 0 their log-probs come from the reference cache (not with use_weighting: the cache
    has no Σ_v p_v² for the weights). KL from `starting`'s model; held-out pairs score its
    greedy answers (`_greedy_columns`), training pairs get NaN and len_g 0.
    """
    cache = step == 0 and not cfg.use_weighting
    start = reference_logps(model, encoded, cfg, pad_id, device) if cache else None
    if start is not None and ref is not None and split == "train":
        # the starting model against itself: one cache on both sides, so each reward is exactly
        # 0 (training pairs' `ref` was computed in other batches: float noise of either sign)
        ref = {**ref, **start}
    rec = evaluate_pairs(model, encoded, cfg, ref, pad_id, device, step, start=start,
                         starting=starting, tag="t" if split == "train" else "")
    greedy = {}
    if split == "train":
        greedy = {"greedy_logp_sum": math.nan, "len_g": 0}
    elif starting is not None and starting.greedy is not None:
        greedy = _greedy_columns(model, starting.greedy, encoded, pad_id, device, step)
    return eval_columns(rec, split=split, **greedy)


def evaluate(writer: RunWriter, model, tokenizer, inputs: Inputs, cfg: TrainConfig, ref_held,
             device, step: int, *, ref: dict | None = None,
             starting: StartingModel | None = None) -> None:
    """Held-out (and training-pair) records, perplexity and generations at `step`, written by
    `writer`. At step 0 they come from the caches of the starting model (see the module
    docstring). ref_held, ref: reference log-probs of the held-out and training pairs;
    starting: what the KL and greedy columns compare with (`keep_starting_model`)."""
    model.eval()
    pad, first = tokenizer.pad_token_id, step == 0
    splits = (("heldout", inputs.heldout, ref_held), ("train", inputs.train_eval, ref))
    evals = [pair_evals(model, encoded, cfg, r, pad, device, step, split, starting)
             for split, encoded, r in splits if _has(encoded)]
    if evals:
        writer.append("evals", pd.concat(evals, ignore_index=True), step=step)
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
