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
from tqdm.auto import tqdm

from .encode import Encoded, collate_sequences, encode_pairs
from .logprobs import head_logps, token_logps

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
    encoding (`ScoringInput.full`), what `auditstats.cut_table` needs to say what a cut does."""
    return pd.DataFrame([{"pair_id": e.pair_id, "prompt_len_full": len(e.prompt_ids),
                          "len_p_full": e.len_chosen, "len_n_full": e.len_rejected,
                          "shared_prefix": _shared_prefix(e.chosen_ids, e.rejected_ids)}
                         for e in encoded.items],
                        columns=["pair_id", "prompt_len_full", "len_p_full", "len_n_full",
                                 "shared_prefix"])


# --------------------------------------------------------------------------- packed rows
# A prompt and all its responses still to score share one row: [prompt | r1 | r2 | ...], each
# response attending to the prompt and to itself only, its positions continuing the prompt's.
# The prompt is computed once instead of once per response (chosen and rejected, and every
# length-controlled variant of a pair): the same log-probs as one row per sequence (to float
# rounding), a fifth to a third fewer tokens through the model.

MAX_ROW_TOKENS = 4096  # responses of one prompt share a row up to this many tokens
PACKABLE_ATTENTION = ("sdpa", "eager")  # attention that takes an arbitrary 4D mask


def can_pack(model) -> bool:
    """Whether `model` can score packed rows: a decoder with a 4D-mask attention
    (PACKABLE_ATTENTION), position ids, and logits that are exactly its linear output head."""
    from .logprobs import _head_is_plain

    attention = getattr(model.config, "_attn_implementation", None)
    return attention in PACKABLE_ATTENTION and hasattr(model, "base_model") and _head_is_plain(model)


def _rows(seqs) -> list[tuple[tuple[int, ...], list[tuple[int, ...]]]]:
    """(prompt, its responses) per row, a prompt's responses split over rows of at most
    MAX_ROW_TOKENS tokens."""
    by_prompt: dict = {}
    for prompt, response in seqs:
        by_prompt.setdefault(prompt, []).append(response)
    rows = []
    for prompt, responses in by_prompt.items():
        row, size = [], len(prompt)
        for response in responses:
            if row and size + len(response) > MAX_ROW_TOKENS:
                rows.append((prompt, row))
                row, size = [], len(prompt)
            row.append(response)
            size += len(response)
        rows.append((prompt, row))
    return rows


def _packed_batch(rows, pad_id: int) -> dict[str, torch.Tensor]:
    """Token ids, positions and segments of packed rows, right-padded; and, flat over every
    response token in row order, the position that predicts it (`source`), the token (`target`)
    and which response it belongs to (`owner`, numbered across the batch)."""
    width = max(len(p) + sum(map(len, rs)) for p, rs in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position = torch.zeros((len(rows), width), dtype=torch.long)
    segment = torch.full((len(rows), width), -2, dtype=torch.long)  # -1 prompt, -2 padding
    source, target, owner, n_owner = [], [], [], 0
    for b, (prompt, responses) in enumerate(rows):
        n, at = len(prompt), len(prompt)
        ids[b, :n], position[b, :n], segment[b, :n] = torch.tensor(prompt), torch.arange(n), -1
        for k, response in enumerate(responses):
            m = len(response)
            ids[b, at:at + m] = torch.tensor(response)
            position[b, at:at + m], segment[b, at:at + m] = torch.arange(n, n + m), k
            source.append(b * width + torch.cat([torch.tensor([n - 1]), torch.arange(at, at + m - 1)]))
            target.append(b * width + torch.arange(at, at + m))
            owner.append(torch.full((m,), n_owner))
            at, n_owner = at + m, n_owner + 1
    return {"ids": ids, "position": position, "segment": segment, "source": torch.cat(source),
            "target": torch.cat(target), "owner": torch.cat(owner), "n_owner": n_owner}


def _packed_mask(segment: torch.Tensor, attention: str, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, L, L) attention mask of packed rows: causal, and a response token sees only the
    prompt and its own response; padding sees itself (no row without a key). Boolean for SDPA,
    additive float for eager attention."""
    width = segment.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    query, key = segment[:, :, None], segment[:, None, :]
    allowed = causal & ((key == -1) | (query == key)) & (key != -2)
    allowed |= torch.eye(width, dtype=torch.bool)
    if attention == "sdpa":
        return allowed[:, None]
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed,
                                                               torch.finfo(dtype).min)[:, None]


def _target_logps(model, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) for rows of hidden states through the output head, a chunk of rows at a
    time (`logprobs.head_logps`: the full logits of every position never exist at once), with
    the hidden states and the head in float32 whatever the model's dtype (a bfloat16 logit has
    three significant digits)."""
    head = model.get_output_embeddings()
    bias = None if head.bias is None else head.bias.float()
    return head_logps(hidden.float(), targets, head.weight.float(), bias)[0]


def _packed_logps(model, rows, pad_id: int) -> list[tuple[float, int]]:
    """(summed log-prob, tokens) of every response of `rows`, in row order."""
    device = next(model.parameters()).device
    batch = _packed_batch(rows, pad_id)
    mask = _packed_mask(batch["segment"], model.config._attn_implementation, model.dtype)
    hidden = model.base_model(input_ids=batch["ids"].to(device), attention_mask=mask.to(device),
                              position_ids=batch["position"].to(device)).last_hidden_state
    flat = hidden.reshape(-1, hidden.shape[-1])
    logps = _target_logps(model, flat[batch["source"].to(device)],
                          batch["ids"].reshape(-1)[batch["target"]].to(device)).cpu().double()
    owner = batch["owner"]
    sums = torch.zeros(batch["n_owner"], dtype=torch.float64).index_add_(0, owner, logps)
    counts = torch.bincount(owner, minlength=batch["n_owner"])
    return list(zip(sums.tolist(), counts.tolist()))


@torch.no_grad()
def _sequence_logps(model, seqs, pad_id: int, batch_size: int, cache: dict,
                    packed: bool | None = None, progress: str | None = None) -> dict:
    """(prompt ids, response ids) → (summed log-prob, tokens) in `cache`: each distinct sequence
    not yet there is scored once. Packed (`can_pack`; the default where the model allows):
    batch_size rows of a prompt and its responses at a time, rows of similar length together;
    else 2 × batch_size sequences of similar length at a time (`logprobs.token_logps`).
    progress: the description of a progress bar over the sequences (None: no bar)."""
    device = next(model.parameters()).device
    todo = sorted(set(seqs) - cache.keys(), key=lambda seq: (len(seq[0]) + len(seq[1]), seq))
    bar = tqdm(total=len(todo), desc=progress, unit="seq", disable=progress is None or not todo,
               leave=False)
    with bar:
        if packed if packed is not None else can_pack(model):
            rows = sorted(_rows(todo), key=lambda row: (len(row[0]) + sum(map(len, row[1])), row))
            for start in range(0, len(rows), batch_size):
                part = rows[start:start + batch_size]
                flat = [(prompt, r) for prompt, responses in part for r in responses]
                cache.update(zip(flat, _packed_logps(model, part, pad_id)))
                bar.update(len(flat))
            return cache
        for start in range(0, len(todo), 2 * batch_size):
            part = todo[start:start + 2 * batch_size]
            t = token_logps(model, collate_sequences(part, pad_id).to(device))
            for seq, total, count in zip(part, t.sum.tolist(), t.count.tolist()):
                cache[seq] = (total, int(count))
            bar.update(len(part))
    return cache


def score_encoded(model, tokenizer, inputs: ScoringInput, *, batch_size: int = 8,
                  cache: dict | None = None, packed: bool | None = None,
                  progress: str | None = None) -> pd.DataFrame:
    """`score_pairs`' table for pairs already encoded (`encode_for_scoring`).

    cache: a dict shared between calls (sequence → summed log-prob and tokens): a sequence
    scored by an earlier call with the same model is not scored again.
    packed: score a prompt's responses in one row (see MAX_ROW_TOKENS); None = wherever the
    model allows it (`can_pack`), False = one row per sequence. progress: the description of
    a progress bar over the sequences scored (None: no bar).
    """
    seqs = [seq for e in inputs.encoded.items
            for seq in ((e.prompt_ids, e.chosen_ids), (e.prompt_ids, e.rejected_ids))]
    scored = _sequence_logps(model, seqs, tokenizer.pad_token_id, batch_size,
                             {} if cache is None else cache, packed, progress)
    full = length_table(inputs.full).drop_duplicates("pair_id").set_index("pair_id")
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
                max_prompt_length: int | None = 128, packed: bool | None = None) -> pd.DataFrame:
    """loss_p, loss_n and their gap for each pair, summed and token-mean. A tidy DataFrame.

    Columns: pair_id, len_p, len_n (response tokens scored), nll_sum_p, nll_sum_n, loss_p,
    loss_n (token-mean cross-entropy), gap_sum (= nll_sum_n − nll_sum_p), gap (= loss_n −
    loss_p), len_p_full, len_n_full, prompt_len_full (tokens before any cut), prompt_len,
    truncated (a prompt or response token was cut), shared_prefix (leading response tokens
    chosen and rejected share, uncut). max_length None scores whole sequences; pairs that
    truncation leaves identical or empty are not in the table (`encode_for_scoring` lists them).
    Each distinct (prompt, response) is scored once (length-controlled variants of one pair share
    their chosen response), a prompt and its responses in one row where the model allows it
    (`packed`, see `score_encoded`), batch_size rows of similar length at a time.
    """
    inputs = encode_for_scoring(pairs, tokenizer, max_length=max_length,
                                max_prompt_length=max_prompt_length)
    return score_encoded(model, tokenizer, inputs, batch_size=batch_size, packed=packed)
