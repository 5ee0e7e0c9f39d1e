"""One pair source split by prompt: training, held-out and neutral prompts, none shared.

Real preference data holds several pairs per prompt (AlpacaEval: one per model compared with the
reference). Held-out pairs that share a prompt with a training pair measure memorisation of the
prompt, not generalisation, so a config's `heldout_prompts` holds out *every* pair of that many
prompts, and `neutral_prompts` further prompts give the neutral text (one answer each), which
no run trains on. The rest of the prompts' pairs are the training pool (`max_pairs` samples it).

Rules (`split_prompts`):
- a prompt is its rendered conversation (`PreferencePair.messages`): two pairs share a prompt
  when their conversations before the answer are the same;
- the held-out prompts, then the neutral ones, are a seeded sample stratified over the meta keys
  that are constant within every prompt and label prompts (`prompt_strata`: lang and category
  where present, else AlpacaEval's `dataset`), each stratum's share proportional to its size;
  a held-out prompt brings all its pairs, so the held-out pairs cover the models that wrote
  answers as the data does;
- a neutral passage is the answer of `neutral_model` (meta chosen_model / rejected_model) to
  the prompt, or, without one, a side picked by a seeded coin (never by the label); prompts
  without such an answer are left out and counted.

`fitting` leaves out pairs that `max_length` would cut (config too_long = "drop"), counted, so
that truncation never erases the length difference the study measures.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from .data import MAX_LEVELS, SAMPLE_STRATA, PairSet, PreferencePair, _allocate
from .encode import encode_pair, has_chat_template


def prompt_key(pair: PreferencePair) -> str:
    """The prompt as one string: the conversation before the answer, as JSON."""
    return json.dumps(pair.messages(), ensure_ascii=False, sort_keys=True)


def prompt_groups(pairs: Sequence[PreferencePair]) -> dict[str, list[int]]:
    """Prompt → the indices of its pairs, prompts in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(prompt_key(p), []).append(i)
    return groups


def prompt_strata(pairs: Sequence[PreferencePair], groups: dict[str, list[int]]) -> pd.Series:
    """Each prompt's stratum (a string; "" where none): its values of the meta keys that are
    the same for all pairs of every prompt and label prompts (SAMPLE_STRATA where present, else
    up to two keys, by name, with 2..MAX_LEVELS distinct text values)."""
    shared = None
    for members in groups.values():
        keys = {k for k in pairs[members[0]].meta
                if all(pairs[i].meta.get(k) == pairs[members[0]].meta[k] for i in members)}
        shared = keys if shared is None else shared & keys
    shared = shared or set()
    firsts = [pairs[m[0]].meta for m in groups.values()]
    present = [k for k in SAMPLE_STRATA if k in shared]
    if not present:
        present = [k for k in sorted(shared)
                   if all(isinstance(m[k], str) for m in firsts)
                   and 2 <= len({m[k] for m in firsts}) <= MAX_LEVELS][:2]
    return pd.Series(["|".join(str(m.get(k)) for k in present) for m in firsts],
                     index=list(groups), dtype=object)


def _draw(strata: pd.Series, n: int, seed: str) -> list[str]:
    """n of the prompts (strata's index), stratified, seeded; all of them where n ≥ their
    number."""
    if n >= len(strata):
        return list(strata.index)
    members = {s: list(strata.index[strata == s]) for s in dict.fromkeys(strata)}
    take = _allocate({s: len(m) for s, m in members.items()}, n)
    return [p for s, m in members.items() for p in random.Random(f"{seed}:{s}").sample(m, take[s])]


@dataclass(frozen=True)
class PromptSplit:
    """Pairs of disjoint prompts: `train` and `heldout` PairSets (the pairs in their source
    order, what the load skipped kept listed), `neutral` passages (text, lang, prompt_id: one
    per neutral prompt) and what was counted on the way."""

    train: PairSet
    heldout: PairSet
    neutral: pd.DataFrame
    counts: dict = field(default_factory=dict)


def split_prompts(pairs: PairSet, n_heldout: int, n_neutral: int = 0, *, seed: int = 0,
                  neutral_model: str | None = None) -> PromptSplit:
    """`pairs` split by prompt (rules at the top): every pair of `n_heldout` prompts held out,
    one answer to each of `n_neutral` further prompts as neutral text, the other prompts'
    pairs for training. ValueError where fewer than n_heldout + n_neutral + 1 prompts exist
    (nothing would be left to train on)."""
    groups = prompt_groups(pairs)
    if n_heldout + n_neutral >= len(groups):
        raise ValueError(f"{len(groups)} distinct prompts: too few to hold out {n_heldout} and "
                         f"keep {n_neutral} for neutral text with any left to train on")
    strata = prompt_strata(pairs, groups)
    held = set(_draw(strata, n_heldout, f"{seed}:heldout")) if n_heldout else set()
    rest = strata[[p not in held for p in strata.index]]
    neutral = _draw(rest, n_neutral, f"{seed}:neutral") if n_neutral else []
    used = held | set(neutral)
    pick = lambda keys: PairSet(tuple(pairs[i] for i in sorted(  # noqa: E731
        i for k in keys for i in groups[k])), pairs.skipped, pairs.layouts)
    passages = neutral_passages(pairs, groups, neutral, seed=seed, model=neutral_model)
    counts = {"prompts": len(groups), "heldout_prompts": len(held),
              "neutral_prompts": len(neutral), "train_prompts": len(groups) - len(used),
              "neutral_prompts_without_answer": len(neutral) - len(passages)}
    return PromptSplit(pick([k for k in groups if k not in used]), pick(held), passages, counts)


def neutral_passages(pairs: Sequence[PreferencePair], groups: dict[str, list[int]],
                     prompts: Sequence[str], *, seed: int = 0,
                     model: str | None = None) -> pd.DataFrame:
    """One answer to each of `prompts` (keys of `groups`): `model`'s where given (the first of
    its pairs that has one; a prompt without is left out), else a seeded coin's side of its
    first pair. Columns text, lang (meta lang, or ""), prompt_id (the first pair's pair_id)."""
    rows = []
    for key in prompts:
        members = [pairs[i] for i in groups[key]]
        if model is None:
            first = members[0]
            side = "chosen" if random.Random(f"{seed}:{first.pair_id}").random() < 0.5 else "rejected"
            found = getattr(first, side)
        else:
            found = next((getattr(p, side) for p in members for side in ("chosen", "rejected")
                          if p.meta.get(f"{side}_model") == model), None)
        if found is not None:
            rows.append({"text": found, "lang": str(members[0].meta.get("lang", "")),
                         "prompt_id": members[0].pair_id})
    return pd.DataFrame(rows, columns=["text", "lang", "prompt_id"])


def fitting(pairs: PairSet, tokenizer, max_length: int,
            max_prompt_length: int) -> tuple[PairSet, int]:
    """(the pairs that `encode.encode_pairs` would not cut, how many were left out): a pair
    fits where its prompt has at most max_prompt_length tokens and prompt + the longer
    answer at most max_length, as the encoder renders them."""
    chat = has_chat_template(tokenizer)
    kept = []
    for p in pairs:
        prompt, chosen, rejected = encode_pair(tokenizer, p, chat=chat)
        if len(prompt) <= max_prompt_length and len(prompt) + max(len(chosen), len(rejected)) \
                <= max_length:
            kept.append(p)
    return PairSet(tuple(kept), pairs.skipped, pairs.layouts), len(pairs) - len(kept)
