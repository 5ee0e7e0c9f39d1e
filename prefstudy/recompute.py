"""Objectives recomputed from logged sums, on any parameters, without the model.

The per-pair records keep each response's summed log-prob and token count, not its tokens
(prefstudy.records). Objectives that read only sums, means and counts can be recomputed from
them exactly through the registry (`objectives.compute`): `sequence_logps` turns records back
into a `PairLogps`, `sums_suffice` says which objectives that serves, `cannot_recompute` why not.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from .columns import require_columns
from .logprobs import TokenLogps
from .objectives import OBJECTIVES, PairLogps, compute, get_objective


def has_reference_logps(records) -> np.ndarray:
    """Per row of `records` (a DataFrame): whether it has both reference log-probs
    (ref_logp_p, ref_logp_n finite). All False when the columns are absent."""
    if not {"ref_logp_p", "ref_logp_n"} <= set(records.columns):
        return np.zeros(len(records), dtype=bool)
    return (np.isfinite(records["ref_logp_p"].to_numpy(float))
            & np.isfinite(records["ref_logp_n"].to_numpy(float)))


def _logged_side(sums: np.ndarray, lengths: np.ndarray, dtype) -> TokenLogps:
    """Row b: lengths[b] response tokens holding the logged sum sums[b] (`TokenLogps.from_sums`),
    so .sum, .mean and .count are exactly the logged ones."""
    lengths = np.maximum(lengths.astype(np.int64), 0)
    width = max(int(lengths.max()) if len(lengths) else 0, 1)
    mask = torch.arange(width)[None, :] < torch.as_tensor(lengths)[:, None]
    return TokenLogps.from_sums(torch.tensor(sums, dtype=dtype), mask)


def sequence_logps(records, *, dtype: torch.dtype = torch.float64) -> PairLogps:
    """Per-pair records' logged log-probs as a `PairLogps`, one row per record row.

    records: a DataFrame with nll_sum_p, nll_sum_n (summed cross-entropies: the log-probs are
    their negatives), len_p, len_n (token counts) and, optionally, ref_logp_p, ref_logp_n.
    Each response becomes len tokens whose sum is the logged one (`TokenLogps.from_sums`), so
    every objective that reads only sums, means and counts gets exactly the values it had in
    training (`sums_suffice` says which do). The reference sides are there when every row has
    both reference log-probs, else None. Shape of every side: (rows, longest response).
    """
    require_columns(records, ["nll_sum_p", "nll_sum_n", "len_p", "len_n"], "sequence_logps")
    len_p, len_n = records["len_p"].to_numpy(), records["len_n"].to_numpy()
    chosen = _logged_side(-records["nll_sum_p"].to_numpy(float), len_p, dtype)
    rejected = _logged_side(-records["nll_sum_n"].to_numpy(float), len_n, dtype)
    ref_c = ref_r = None
    if len(records) and has_reference_logps(records).all():
        ref_c = _logged_side(records["ref_logp_p"].to_numpy(float), len_p, dtype)
        ref_r = _logged_side(records["ref_logp_n"].to_numpy(float), len_n, dtype)
    return PairLogps(chosen, rejected, ref_c, ref_r)


def _probe_side(lengths: Tensor, spread: bool) -> TokenLogps:
    """A fixed batch of responses: the same sums and counts, tokens equal or spread around them."""
    width = int(lengths.max())
    mask = torch.arange(width)[None, :] < lengths[:, None]
    mean = -1.5 - 0.25 * torch.arange(len(lengths), dtype=torch.float64)[:, None]
    position = torch.arange(width, dtype=torch.float64)[None, :]
    centred = (position - (lengths[:, None] - 1) / 2) / lengths[:, None].clamp(min=1)
    logps = mean + (0.9 * centred if spread else 0.0)  # spread: zero-sum deviations, still < 0
    return TokenLogps(logps * mask, mask)


@functools.cache
def sums_suffice(name: str) -> bool:
    """Whether objective `name` is a function of each response's summed log-prob and token count
    alone, so that `sequence_logps` reproduces it exactly.

    Checked, not listed: the objective is computed on a fixed batch twice, once with equal token
    log-probs and once with the same sums spread unevenly over the tokens, at its default
    parameters and at every choice of a parameter that has choices (e.g. norm); it suffices when
    the losses and margins agree. (Unlikelihood, log(1 − p_t) per token, and LD-DPO, which weighs
    tokens by position, do not.)
    """
    objective = OBJECTIVES[name]
    lengths_c, lengths_r = torch.tensor([3, 8, 5, 1, 6]), torch.tensor([7, 2, 5, 6, 1])
    variants = [{}]
    for pname, spec in objective.params.items():
        if spec.choices:
            variants = [{**v, pname: c} for v in variants for c in spec.choices]
    for params in variants:
        outputs = []
        for spread in (False, True):
            sides = [_probe_side(n, spread) for n in (lengths_c, lengths_r)]
            refs = [TokenLogps(s.logps * 1.1, s.mask) for s in sides]  # a reference unlike π
            logps = PairLogps(*sides, *refs) if objective.needs_reference else PairLogps(*sides)
            outputs.append(compute(name, logps, **params))
        same = (torch.allclose(outputs[0].loss, outputs[1].loss, rtol=1e-9, atol=1e-9)
                and torch.allclose(outputs[0].margin, outputs[1].margin, rtol=1e-9, atol=1e-9))
        if not same:
            return False
    return True


def cannot_recompute(name: str, *, has_reference: bool) -> str:
    """Why objective `name` cannot be recomputed from logged sums ('' when it can): it couples
    the pairs of a batch, it needs each token's log-prob (`sums_suffice`), or a reference the
    records lack (has_reference=False)."""
    if get_objective(name).batch_level:
        return ("a batch-level objective: a pair's loss depends on the other pairs of its batch, "
                "not on its own logged sums")
    if not sums_suffice(name):
        return "needs each token's log-probability; the records keep only each response's sum"
    if get_objective(name).needs_reference and not has_reference:
        return ("needs the reference log-probs, which these records lack (runs of "
                "reference-free objectives do not log them)")
    return ""
