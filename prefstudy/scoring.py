"""Pairs scored with a fixed model: loss_p, loss_n and their gap, summed and token-mean.

What the length dose-response of a study (prefstudy.study.score_dose), `prefstudy demo` and
`prefstudy audit` show: one row per pair, no training.

Truncation is the encoder's policy (`encode.encode_pairs`: the prompt keeps its last
`max_prompt_length` tokens, each response is cut to fit `max_length`, a pair whose responses
are identical in what fits is dropped). `max_length=None` cuts nothing. Every row also carries
the untruncated lengths, so a caller can say how many pairs were cut and by how much.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from .encode import Encoded, collate_sequences, encode_pairs
from .logprobs import token_logps

UNLIMITED = 2 ** 62  # a max_length no sequence reaches: encode_pairs then cuts nothing


@dataclass(frozen=True)
class ScoringInput:
    """What is scored (`encoded`, cut to max_length) and the same pairs uncut (`full`)."""

    encoded: Encoded
    full: Encoded

    @property
    def dropped(self) -> tuple[tuple[str, str], ...]:
        """(pair_id, reason) of the pairs left out: identical in what fits, or empty."""
        return self.encoded.dropped


def encode_for_scoring(pairs, tokenizer, *, max_length: int | None = 256,
                       max_prompt_length: int | None = 128) -> ScoringInput:
    """Encode `pairs` as scored (cut by `encode_pairs`' policy) and uncut.

    max_length None: nothing is cut (prompt nor responses; max_prompt_length is then unused).
    max_prompt_length None with a max_length: half of max_length.
    """
    full = encode_pairs(pairs, tokenizer, max_length=UNLIMITED, max_prompt_length=UNLIMITED - 1)
    if max_length is None:
        return ScoringInput(full, full)
    if max_prompt_length is None:
        max_prompt_length = max_length // 2
    encoded = encode_pairs(pairs, tokenizer, max_length=max_length,
                           max_prompt_length=max_prompt_length)
    return ScoringInput(encoded, full)


def _shared_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """How many leading tokens two responses share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def length_table(encoded: Encoded) -> pd.DataFrame:
    """Token counts of encoded pairs: pair_id, prompt_len_full, len_p_full, len_n_full and
    shared_prefix (how many leading response tokens chosen and rejected share). Given the uncut
    encoding (`ScoringInput.full`), what `diagnostics.cut_table` needs to say what a cut does."""
    return pd.DataFrame([{"pair_id": e.pair_id, "prompt_len_full": len(e.prompt_ids),
                          "len_p_full": e.len_chosen, "len_n_full": e.len_rejected,
                          "shared_prefix": _shared_prefix(e.chosen_ids, e.rejected_ids)}
                         for e in encoded.items],
                        columns=["pair_id", "prompt_len_full", "len_p_full", "len_n_full",
                                 "shared_prefix"])


@torch.no_grad()
def _sequence_logps(model, seqs, pad_id: int, batch_size: int, cache: dict) -> dict:
    """(prompt ids, response ids) → (summed log-prob, tokens) in `cache`: each distinct sequence
    not yet there is scored once, 2 × batch_size sequences of similar length at a time."""
    device = next(model.parameters()).device
    todo = sorted(set(seqs) - cache.keys(), key=lambda seq: (len(seq[0]) + len(seq[1]), seq))
    for start in range(0, len(todo), 2 * batch_size):
        part = todo[start:start + 2 * batch_size]
        t = token_logps(model, collate_sequences(part, pad_id).to(device))
        for seq, total, count in zip(part, t.sum.tolist(), t.count.tolist()):
            cache[seq] = (total, int(count))
    return cache


def score_encoded(model, tokenizer, inputs: ScoringInput, *, batch_size: int = 8,
                  cache: dict | None = None) -> pd.DataFrame:
    """`score_pairs`' table for pairs already encoded (`encode_for_scoring`).

    cache: a dict shared between calls (sequence → summed log-prob and tokens): a sequence
    scored by an earlier call with the same model is not scored again.
    """
    seqs = [seq for e in inputs.encoded.items
            for seq in ((e.prompt_ids, e.chosen_ids), (e.prompt_ids, e.rejected_ids))]
    scored = _sequence_logps(model, seqs, tokenizer.pad_token_id, batch_size,
                             {} if cache is None else cache)
    full = length_table(inputs.full).set_index("pair_id")
    rows = []
    for e in inputs.encoded.items:
        (sum_p, len_p), (sum_n, len_n) = (scored[e.prompt_ids, e.chosen_ids],
                                          scored[e.prompt_ids, e.rejected_ids])
        rows.append({"pair_id": e.pair_id, "len_p": len_p, "len_n": len_n,
                     "nll_sum_p": -sum_p, "nll_sum_n": -sum_n,
                     "loss_p": -sum_p / len_p, "loss_n": -sum_n / len_n,
                     "prompt_len": len(e.prompt_ids), "truncated": e.truncated})
    df = pd.DataFrame(rows, columns=["pair_id", "len_p", "len_n", "nll_sum_p", "nll_sum_n",
                                     "loss_p", "loss_n", "prompt_len", "truncated"])
    df["gap_sum"] = df.nll_sum_n - df.nll_sum_p
    df["gap"] = df.loss_n - df.loss_p
    df = df.join(full, on="pair_id")
    return df[list(SCORE_COLUMNS)]


SCORE_COLUMNS = ("pair_id", "len_p", "len_n", "nll_sum_p", "nll_sum_n", "loss_p", "loss_n",
                 "gap_sum", "gap", "len_p_full", "len_n_full", "prompt_len", "prompt_len_full",
                 "truncated", "shared_prefix")


def score_pairs(model, tokenizer, pairs, *, batch_size: int = 8, max_length: int | None = 256,
                max_prompt_length: int | None = 128) -> pd.DataFrame:
    """loss_p, loss_n and their gap for each pair, summed and token-mean. A tidy DataFrame.

    Columns: pair_id, len_p, len_n (response tokens scored), nll_sum_p, nll_sum_n, loss_p,
    loss_n (token-mean cross-entropy), gap_sum (= nll_sum_n − nll_sum_p), gap (= loss_n −
    loss_p), len_p_full, len_n_full, prompt_len_full (tokens before any cut), prompt_len,
    truncated (a prompt or response token was cut), shared_prefix (leading response tokens
    chosen and rejected share, uncut). max_length None scores whole sequences; pairs that
    truncation leaves identical or empty are not in the table (`encode_for_scoring` lists them).
    Each distinct (prompt, response) is scored once, 2 × batch_size sequences of similar length
    at a time: length-controlled variants of one pair share their chosen response.
    """
    inputs = encode_for_scoring(pairs, tokenizer, max_length=max_length,
                                max_prompt_length=max_prompt_length)
    return score_encoded(model, tokenizer, inputs, batch_size=batch_size)
