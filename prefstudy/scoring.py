"""Pairs scored with a fixed model: loss_p, loss_n and their gap, summed and token-mean.

What the length dose-response of a study (prefstudy.study.score_dose) and `prefstudy demo`
show: one row per pair, no training.
"""

from __future__ import annotations

import pandas as pd
import torch

from .encode import collate_sequences, encode_pairs
from .logprobs import token_logps


@torch.no_grad()
def score_pairs(model, tokenizer, pairs, *, batch_size: int = 8, max_length: int = 256,
                max_prompt_length: int = 128):
    """loss_p, loss_n and their gap for each pair, summed and token-mean. A tidy DataFrame.

    Columns: pair_id, len_p, len_n (response tokens), nll_sum_p, nll_sum_n, gap_sum
    (= nll_sum_n − nll_sum_p), loss_p, loss_n (token-mean cross-entropy), gap (= loss_n − loss_p).
    Each distinct (prompt, response) is scored once, 2 × batch_size sequences of similar length
    at a time: length-controlled variants of one pair share their chosen response.
    """
    encoded = encode_pairs(pairs, tokenizer, max_length=max_length,
                           max_prompt_length=max_prompt_length)
    device = next(model.parameters()).device
    seqs = list(dict.fromkeys(seq for e in encoded.items
                              for seq in ((e.prompt_ids, e.chosen_ids),
                                          (e.prompt_ids, e.rejected_ids))))
    seqs.sort(key=lambda seq: len(seq[0]) + len(seq[1]))
    scored = {}  # (prompt ids, response ids) → (summed log-prob, tokens)
    for start in range(0, len(seqs), 2 * batch_size):
        part = seqs[start:start + 2 * batch_size]
        t = token_logps(model, collate_sequences(part, tokenizer.pad_token_id).to(device))
        for seq, total, count in zip(part, t.sum.tolist(), t.count.tolist()):
            scored[seq] = (total, int(count))
    rows = []
    for e in encoded.items:
        (sum_p, len_p), (sum_n, len_n) = (scored[e.prompt_ids, e.chosen_ids],
                                          scored[e.prompt_ids, e.rejected_ids])
        rows.append({"pair_id": e.pair_id, "len_p": len_p, "len_n": len_n,
                     "nll_sum_p": -sum_p, "nll_sum_n": -sum_n,
                     "loss_p": -sum_p / len_p, "loss_n": -sum_n / len_n})
    df = pd.DataFrame(rows)
    if len(df):
        df["gap_sum"] = df.nll_sum_n - df.nll_sum_p
        df["gap"] = df.loss_n - df.loss_p
    return df
