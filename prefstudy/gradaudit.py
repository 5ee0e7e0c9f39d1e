"""Gradient statistics of preference pairs at the starting weights: the gradient half of the audit.

Before any update, for each objective and each pair: how large the pair's gradient is, whether it
agrees with the rest of its batch, and how entangled its chosen and rejected responses are
(`gradient_audit`). At the start the policy IS the reference: reference log-probs are the model's
own, detached, so every reference-based objective sits at margin 0.

What is measured, per pair i of a batch of B pairs (g_i: the gradient of the objective's loss on
pair i over the weights of the model's trainable linear layers, as prefstudy.gradstats covers
them; ∇⁺_i, ∇⁻_i: the gradients of the summed log π(y⁺_i | x_i) and log π(y⁻_i | x_i)):

    grad_norm           |g_i|
    grad_cos_loo        cos(g_i, Σ_{j≠i} g_j): the pair against the mean gradient of the OTHER
                        pairs of its batch (the leave-one-out cosine; training records call it
                        grad_cos). Baseline grad_cos_orthogonal = 0: what it is for gradients
                        orthogonal to the others, whatever their norms.
    grad_cos_with_self  cos(g_i, ḡ), ḡ = (1/B) Σ_j g_j including g_i. Biased: B orthogonal
                        gradients of these norms give grad_cos_with_self_orthogonal =
                        |g_i| / √(Σ_j |g_j|²) (1/√B at equal norms). That baseline is the right
                        one to read this cosine against; |g_i| / (B·|ḡ|), the pair's own share
                        of the actual ḡ, is not a baseline but the part of this cosine the pair
                        contributes itself: grad_cos_with_self − |g_i|/(B·|ḡ|) = ((B−1)/B) ·
                        cos(g_i, mean of the others) · |mean of the others| / |ḡ|.
    entanglement        cos(∇⁺_i, ∇⁻_i), objective-independent: > 0 means a step that lowers
                        the rejected response's likelihood lowers the chosen one's too (Razin et
                        al. 2024, "Unintentional Unalignment: Likelihood Displacement in
                        Direct Preference Optimization", arXiv:2410.08847; Yuan et al. 2024,
                        "A Common Pitfall of Margin-based Language Model Alignment: Gradient
                        Entanglement"). The token-mean versions have the same cosine.
    ches, ln_ches       Razin et al. 2024's CHES score and its length-normalised variant: with
                        H⁺ = Σ_{k=1}^{|y⁺|} h(x, y⁺_{<k}) and H⁻ likewise, h the last-layer hidden
                        state (the input of the output head) at the position that predicts
                        response token k (the last prompt token for k = 1, never the last
                        response token itself), CHES = ⟨H⁺, H⁻⟩ − ‖H⁺‖² and ln-CHES =
                        ⟨H⁺, H⁻⟩/(|y⁺|·|y⁻|) − ‖H⁺‖²/|y⁺|². Larger means more likely
                        displacement of the chosen response. Our reading, checked against the
                        authors' code: sums over exactly the positions that score the response
                        tokens, as `logprobs.token_logps` does.

How, per batch: a forward pass of its 2B sequences with prefstudy.gradstats' hooks on the
linear layers (sorted by length and run B at a time, so that short sequences are not padded to
the longest), then `PerPairGradients.row_gram` gives the Gram matrix of every sequence's
gradient of its summed log-prob (one backward to the layer outputs, no weight gradient formed;
only the measured layers' weights require a gradient meanwhile, so nothing below them is
differentiated). An objective whose loss
weighs every token of a response alike (∂loss/∂log p_t the same number at each token of a row:
naive, SFT, SimPO, the DPO family on sums or means) has pair gradients c⁺_i ∇⁺_i + c⁻_i ∇⁻_i, so
its whole B×B Gram matrix is that one matrix with its coefficients; it costs no backward of its
own. One that weighs tokens differently (unlikelihood: p_t / (1 − p_t) per rejected token) gets
one more backward with its own per-token weights. Entanglement comes from the first matrix.
Batch-level objectives (AOT) get the records' attribution: each row's share of ∂Σ_i loss_i.

DPO at the starting weights needs no entry of its own: there h = 0, σ(−0) = ½, so its pair
gradient is −(β/2)(∇⁺_i − ∇⁻_i), exactly β/2 times naive-sum's −(∇⁺_i − ∇⁻_i): the same
cosines, norms scaled by β/2 (tests/test_gradients.py checks it). The same holds for every
loss f(h) of the log-ratio difference alone: at h = 0 each pair's gradient is f′(0)·∇h, one
factor for every pair, so naive-sum's cosines for summed log-ratios (DPO, IPO with its default
norm="sum", hinge, ...) and naive-mean's for token-mean ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .encode import Encoded, EncodedPair, collate_sequences, encode_pairs
from .gradstats import PerPairGradients, leave_one_out_cosine, with_self_orthogonal
from .logprobs import TokenLogps, split_pairs, token_logps
from .objectives import PairLogps, compute, get_objective, resolve_params
from .records import run_label

# (objective, parameters) pairs: those whose per-pair direction differs at the starting weights
# (DPO's is naive-sum's, see the module docstring).
DEFAULT_GRADIENT_OBJECTIVES = (("naive", {"norm": "sum"}), ("naive", {"norm": "mean"}),
                               ("sft", {}), ("simpo", {}), ("book_dpo", {}),
                               ("unlikelihood", {}))

# Column → meaning: what `gradient_audit` returns, one row per (objective, pair).
GRADIENT_AUDIT_COLUMNS = {
    "objective": "objective name (a key of prefstudy.objectives.OBJECTIVES)",
    "norm": "its norm parameter where it has one, else ''",
    "label": "objective[-norm], the norm only where the parameters name one (as the study "
             "labels its runs: naive-sum, sft)",
    "pair_id": "the pair",
    "batch": "'a<k>': the k-th audit batch (0-based), the pairs its cosines compare against",
    "len_p": "chosen response tokens", "len_n": "rejected response tokens",
    "pair_loss": "the objective's loss on the pair at the starting weights",
    "grad_norm": "|g_i|, the pair's gradient norm",
    "grad_cos_loo": "cos(g_i, mean gradient of the other pairs of its batch)",
    "grad_cos_orthogonal": "grad_cos_loo for gradients orthogonal to the others: 0",
    "grad_cos_with_self": "cos(g_i, batch-mean gradient including g_i) (biased)",
    "grad_cos_with_self_orthogonal": "grad_cos_with_self for orthogonal gradients of these "
                                     "norms: |g_i| / √(Σ_j |g_j|²)",
    "grad_norm_p": "|∇ log π(chosen)|, summed log-prob", "grad_norm_n": "|∇ log π(rejected)|",
    "entanglement": "cos(∇ log π(chosen), ∇ log π(rejected))",
    "ches": "CHES (Razin et al. 2024)", "ln_ches": "length-normalised CHES",
}

_UNLIMITED = 2 ** 62  # max_length=None: no truncation


@dataclass(frozen=True)
class _Spec:
    """One objective to audit, its parameters resolved."""

    name: str
    params: Mapping
    norm: str
    label: str

    @classmethod
    def of(cls, item) -> _Spec:
        """From a name or (name, parameters); labelled as a study labels its runs: the name,
        with the norm only where the parameters give one (naive-sum, but sft)."""
        name, params = (item, {}) if isinstance(item, str) else item
        resolved = resolve_params(name, params)
        return cls(name, resolved, str(resolved.get("norm", "")),
                   run_label(name, str((params or {}).get("norm", ""))))


def _encoded(pairs, tokenizer, max_length: int | None,
             max_prompt_length: int | None) -> Encoded:
    """`pairs` encoded as training encodes them; an Encoded is used as it is."""
    if isinstance(pairs, Encoded):
        if max_length is not None or max_prompt_length is not None:
            raise TypeError("gradient_audit: pairs are already encoded; max_length and "
                            "max_prompt_length apply only to PreferencePairs")
        return pairs
    length = _UNLIMITED if max_length is None else max_length
    prompt = max_prompt_length if max_prompt_length is not None else (
        length - 1 if max_length is None else max_length // 2)
    return encode_pairs(list(pairs), tokenizer, max_length=length, max_prompt_length=prompt)


def audit_batches(n_pairs: int, batch_size: int, seed: int) -> list[list[int]]:
    """Indices of the audit's batches: a seeded permutation cut into batches of `batch_size`;
    a last batch of one pair (which has no others to compare with) joins the one before."""
    if batch_size < 2:
        raise ValueError(f"batch_size={batch_size}: a leave-one-out cosine needs ≥ 2 pairs")
    order = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(seed)).tolist()
    batches = [order[i:i + batch_size] for i in range(0, n_pairs, batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2].extend(batches.pop())
    return batches


# --------------------------------------------------------------------------- one batch


@dataclass
class _Rows:
    """One audit batch's 2B sequences after the forward passes: chosen rows [0, B), rejected
    rows [B, 2B), as `encode.collate` orders them.

    logps: per-token log-probs with their graph, Shape: (2B, T).
    hidden: per row, the summed last-layer hidden states at the positions that predict its
        response tokens, Shape: (2B, hidden), float64, detached.
    position: row k was the position[k]-th row the forward passes saw. Shape: (2B,).
    """

    logps: TokenLogps
    hidden: Tensor
    position: Tensor

    def in_row_order(self, gram: Tensor) -> Tensor:
        """A Gram matrix over the rows in the order the passes saw them (`row_gram`), in row
        order."""
        return gram[self.position][:, self.position]


def _run(model, seqs: Sequence, pad_id: int, device) -> tuple[TokenLogps, Tensor]:
    """token_logps of one padded batch of (prompt, response) sequences, and per row the sum of
    the last-layer hidden states (the output head's input) where it scores the response."""
    kept = {}

    def keep(module, args, output):
        kept["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = model.base_model.register_forward_hook(keep)
    try:
        logps = token_logps(model, collate_sequences(seqs, pad_id).to(device))
    finally:
        handle.remove()
    hidden = kept["hidden"][:, :-1].detach().double()
    return logps, (hidden * logps.mask[..., None]).sum(1)


def _forward(model, items: Sequence[EncodedPair], pad_id: int, device,
             rows_per_pass: int) -> _Rows:
    """The batch's chosen and rejected sequences, sorted by length and run `rows_per_pass` at a
    time, so that short ones are not padded to the longest of the batch; reassembled in row
    order (padding added to the log-probs is 0 and off the mask)."""
    seqs = [(e.prompt_ids, e.chosen_ids) for e in items] + \
        [(e.prompt_ids, e.rejected_ids) for e in items]
    order = torch.tensor(sorted(range(len(seqs)), key=lambda k: len(seqs[k][0]) + len(seqs[k][1])))
    passes = [_run(model, [seqs[k] for k in order[i:i + rows_per_pass]], pad_id, device)
              for i in range(0, len(seqs), rows_per_pass)]
    width = max(lp.logps.shape[1] for lp, _ in passes)
    logps = torch.cat([F.pad(lp.logps, (0, width - lp.logps.shape[1])) for lp, _ in passes])
    mask = torch.cat([F.pad(lp.mask, (0, width - lp.mask.shape[1])) for lp, _ in passes])
    hidden = torch.cat([h for _, h in passes])
    position = torch.empty_like(order)
    position[order] = torch.arange(len(order))
    at = position.to(logps.device)
    return _Rows(TokenLogps(logps[at], mask[at]), hidden[position.to(hidden.device)], position)


def _token_weights(spec: _Spec, logps: TokenLogps) -> tuple[Tensor, Tensor]:
    """(the objective's per-pair loss, ∂ Σ_i loss_i / ∂ log p_t at every token of every row), at
    the starting weights (reference = the policy's own log-probs). Shape: (B,), (rows, T)."""
    leaf = TokenLogps(logps.logps.detach().requires_grad_(True), logps.mask)
    chosen, rejected = split_pairs(leaf)
    refs = (chosen.detach(), rejected.detach()) if get_objective(spec.name).needs_reference \
        else (None, None)
    loss = compute(spec.name, PairLogps(chosen, rejected, *refs), **spec.params).loss
    (weights,) = torch.autograd.grad(loss.sum(), [leaf.logps])
    return loss.detach(), weights * logps.mask


def _row_coefficients(weights: Tensor, mask: Tensor) -> Tensor | None:
    """c_k when row k's weights are the number c_k at each of its tokens (the row's gradient is
    then c_k times that of its summed log-prob), else None. Shape: (rows,)."""
    first = weights.gather(1, mask.long().argmax(1, keepdim=True))  # at the first response token
    same = torch.where(mask, weights == first, True).all()
    return first.squeeze(1) if bool(same) else None


def _pair_gram(row_gram: Tensor, coefficients: Tensor) -> Tensor:
    """The B×B Gram matrix of the pair gradients c_i ∇_i + c_{B+i} ∇_{B+i} (chosen row i,
    rejected row B + i) from the rows' (2B × 2B) Gram matrix."""
    b = row_gram.shape[0] // 2
    to_pairs = torch.zeros(b, 2 * b, dtype=torch.float64)
    idx = torch.arange(b)
    to_pairs[idx, idx] = coefficients[:b].double().cpu()
    to_pairs[idx, idx + b] = coefficients[b:].double().cpu()
    return to_pairs @ row_gram @ to_pairs.T


def _pair_statistics(gram: Tensor) -> dict[str, Tensor]:
    """grad_norm and the cosines of each pair gradient from the pairs' Gram matrix (B × B)."""
    n = gram.shape[0]
    sq = gram.diagonal()
    dot, mean_sq = gram.sum(1) / n, gram.sum() / n ** 2  # g_i·ḡ and |ḡ|²
    with_self = (dot / (sq * mean_sq).sqrt()).clamp(-1, 1)
    return {"grad_norm": sq.sqrt(), "grad_cos_loo": leave_one_out_cosine(dot, sq, mean_sq, n),
            "grad_cos_orthogonal": torch.zeros(n, dtype=torch.float64),
            "grad_cos_with_self": with_self,
            "grad_cos_with_self_orthogonal": with_self_orthogonal(sq)}


def _entanglement(row_gram: Tensor, hidden: Tensor, counts: Tensor) -> dict[str, Tensor]:
    """Per pair: |∇⁺|, |∇⁻|, cos(∇⁺, ∇⁻) from the rows' Gram matrix of summed log-prob
    gradients, and CHES and ln-CHES from the rows' summed hidden states."""
    b = row_gram.shape[0] // 2
    sq = row_gram.diagonal()
    cross = row_gram.diagonal(b)[:b]  # ⟨∇⁺_i, ∇⁻_i⟩: chosen row i against rejected row B + i
    h_p, h_n = hidden[:b].cpu(), hidden[b:].cpu()
    len_p, len_n = counts[:b].double().cpu(), counts[b:].double().cpu()
    inner, own = (h_p * h_n).sum(1), h_p.pow(2).sum(1)
    return {"grad_norm_p": sq[:b].sqrt(), "grad_norm_n": sq[b:].sqrt(),
            "entanglement": cross / (sq[:b] * sq[b:]).sqrt(),
            "ches": inner - own, "ln_ches": inner / (len_p * len_n) - own / len_p ** 2}


def _audit_batch(model, grads: PerPairGradients, items: Sequence[EncodedPair], pad_id: int,
                 device, specs: Sequence[_Spec], batch_id: str) -> list[pd.DataFrame]:
    """The audit's rows of one batch: one frame per objective, one row per pair."""
    grads.capture(keep_outputs=True)
    try:
        rows = _forward(model, items, pad_id, device, rows_per_pass=len(items))
        mask = rows.logps.mask
        unit = rows.in_row_order(grads.row_gram(rows.logps.logps, mask.to(rows.logps.logps.dtype)))
        pair_columns = _entanglement(unit, rows.hidden, mask.sum(-1))
        frames = []
        for spec in specs:
            loss, weights = _token_weights(spec, rows.logps)
            coefficients = _row_coefficients(weights, mask)
            gram = (_pair_gram(unit, coefficients) if coefficients is not None else
                    _pair_gram(rows.in_row_order(grads.row_gram(rows.logps.logps, weights)),
                               torch.ones(mask.shape[0])))
            columns = {**_pair_statistics(gram), **pair_columns}
            frames.append(pd.DataFrame({
                "objective": spec.name, "norm": spec.norm, "label": spec.label,
                "pair_id": [e.pair_id for e in items], "batch": batch_id,
                "len_p": [e.len_chosen for e in items], "len_n": [e.len_rejected for e in items],
                "pair_loss": loss.tolist(), **{k: v.tolist() for k, v in columns.items()}}))
    finally:
        grads.release()
    return frames


@contextlib.contextmanager
def _gradients_only_for(model, layers: Sequence[torch.nn.Module]):
    """For the duration, only the weights of `layers` require a gradient: no graph is built
    below the lowest of them, and no other weight's gradient is formed (the output head's,
    for one, which its backward would otherwise compute). The flags are put back after."""
    measured = {id(p) for layer in layers for p in layer.parameters() if p.requires_grad}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in measured)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


# --------------------------------------------------------------------------- the audit


def _top_blocks(model, k: int | None) -> torch.nn.Module | None:
    """The model's top k transformer blocks (None for k = None: the whole model)."""
    if k is None:
        return None
    blocks = model.base_model.layers
    if not 1 <= k <= len(blocks):
        raise ValueError(f"trainable_blocks={k}; this model has {len(blocks)} blocks")
    return torch.nn.ModuleList(list(blocks)[len(blocks) - k:])


def gradient_audit(model, tokenizer, pairs, *,
                   objectives: Sequence = DEFAULT_GRADIENT_OBJECTIVES, batch_size: int = 4,
                   max_length: int | None = None, max_prompt_length: int | None = None,
                   trainable_blocks: int | None = None, seed: int = 0,
                   progress: str | None = None) -> pd.DataFrame:
    """Per-pair gradient statistics of each objective at the model's current (starting)
    weights, without updating them: one row per (objective, pair), GRADIENT_AUDIT_COLUMNS.

    model, tokenizer: as `prefstudy.models.load_model` gives them. The gradients cover the
        trainable nn.Linear layers (prefstudy.gradstats), or with `trainable_blocks` = k only
        those of the top k transformer blocks, as a run with TrainConfig.trainable_blocks = k
        trains them (the study's cpu profile: 4); the model's requires_grad flags are left as
        they are. The backward stops at the lowest block measured, so k sets the cost: on a CPU,
        the top 4 blocks of SmolLM2-135M cost a few times less than all 30
        (benchmarks/RESULTS.md).
    pairs: a PairSet or sequence of PreferencePair, encoded here as training encodes them
        (chat template, prompt cut from the left to max_prompt_length, default max_length // 2,
        responses cut to max_length; None: no truncation), or a `prefstudy.encode.Encoded`,
        used as it is. Pairs the encoding drops are listed in `result.attrs["dropped"]`.
    objectives: names or (name, parameters) pairs; the default, DEFAULT_GRADIENT_OBJECTIVES,
        leaves out DPO, whose pair gradients at the start are naive-sum's times β/2.
    batch_size, seed: the pairs are cut into batches of `batch_size` in a seeded random order
        (`audit_batches`); a pair's cosines compare it with the others of its batch (`batch`),
        as a training step of that batch size would.
    Each batch takes one forward pass and one backward pass to the layer outputs, plus one per
    objective that weighs a response's tokens unequally (see the module docstring).
    progress: the description of a progress bar over the pairs (None: no bar).
    """
    specs = [_Spec.of(item) for item in objectives]
    encoded = _encoded(pairs, tokenizer, max_length, max_prompt_length)
    device = next(model.parameters()).device
    grads = PerPairGradients(model, within=_top_blocks(model, trainable_blocks))
    if not grads.layers:
        raise ValueError("gradient_audit: the model has no trainable linear layer; make the "
                         "blocks to audit trainable (prefstudy.models.set_trainable)")
    was_training = model.training
    model.eval()
    per_batch = []
    try:
        with _gradients_only_for(model, grads.layers), tqdm(
                total=len(encoded), desc=progress, unit="pair", leave=False,
                disable=progress is None or not len(encoded)) as bar:
            for k, batch in enumerate(audit_batches(len(encoded), batch_size, seed)):
                items = [encoded.items[i] for i in batch]
                per_batch.append(_audit_batch(model, grads, items, tokenizer.pad_token_id,
                                              device, specs, f"a{k}"))
                bar.update(len(items))
    finally:
        grads.remove()
        model.train(was_training)
    frames = [frame for by_spec in zip(*per_batch) for frame in by_spec]  # objective-major
    out = pd.concat(frames, ignore_index=True) if frames else \
        pd.DataFrame(columns=list(GRADIENT_AUDIT_COLUMNS))
    out = out[list(GRADIENT_AUDIT_COLUMNS)]
    out.attrs["dropped"] = list(encoded.dropped)
    return out

