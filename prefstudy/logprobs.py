"""Per-token log-probabilities of response tokens, and their per-sequence summaries.

The objectives never see logits: they see a `TokenLogps` per side (chosen / rejected,
policy / reference). `token_logps` computes it from logits without materialising a float32
log-softmax over the whole vocabulary for the whole batch: it gathers the target logit and
subtracts a logsumexp computed a few rows at a time. Asked (`sum_sq=True`), it also gives
log Σ_v p(v|·)² at each token from the same chunks, the statistic of WPO's weights
(`wpo_weights`), without a gradient. `token_logps_kl` gives the same log-probs and, from the
same chunks of logits, the per-token KL of the policy's next-token distribution from another
model's (the starting model's, at evaluation). Where only each response's summed log-prob is
known (the records, TRL's precomputed reference), `TokenLogps.from_sums` builds the TokenLogps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import frozen


@dataclass(frozen=True)
class TokenLogps:
    """Log-probabilities of the response tokens of a batch of sequences.

    logps: log p(token_t | tokens_<t). Shape: (batch, T), float; 0.0 wherever `mask` is False.
    mask:  True on response tokens (the prompt and padding are False). Shape: (batch, T), bool.
    log_sum_sq: log Σ_v p(v | tokens_<t)² at each position, where asked for (`token_logps(...,
           sum_sq=True)`), else None. A weight, never differentiated. Shape: as logps, float;
           0.0 wherever `mask` is False.
    Response tokens are contiguous in each row; row b has `mask[b].sum()` of them.
    """

    logps: Tensor
    mask: Tensor
    log_sum_sq: Tensor | None = None

    @property
    def count(self) -> Tensor:
        """Number of response tokens. Shape: (batch,), float."""
        return self.mask.sum(-1).to(self.logps.dtype)

    @property
    def sum(self) -> Tensor:
        """Summed log-probability log π(y|x). Shape: (batch,)."""
        return (self.logps * self.mask).sum(-1)

    @property
    def mean(self) -> Tensor:
        """Token-mean log-probability (1/|y|) log π(y|x). Shape: (batch,)."""
        return self.sum / self.count.clamp(min=1)

    def position(self) -> Tensor:
        """0-based index of each token within its response (−1 off the mask). Shape: (batch, T)."""
        return torch.where(self.mask, self.mask.long().cumsum(-1) - 1, -1)

    @classmethod
    def from_sums(cls, sums: Tensor, mask: Tensor) -> TokenLogps:
        """Summed log-probs as a TokenLogps whose `.sum`, `.mean` and `.count` are exact.

        sums: one summed log-prob per row, Shape: (batch,); mask: the response tokens, Shape:
        (batch, T). Each row's sum sits on its first response token and the other tokens hold 0:
        the per-token values are not known, so nothing position-dependent (a per-token function,
        a weight by position) may be read from it. The log-probs have the dtype of `sums`.
        """
        first = mask & (mask.long().cumsum(-1) == 1)
        return cls(torch.where(first, sums.to(mask.device)[:, None], 0.0), mask)

    def detach(self) -> TokenLogps:
        return TokenLogps(self.logps.detach(), self.mask, self.log_sum_sq)

    def index(self, rows) -> TokenLogps:
        return TokenLogps(self.logps[rows], self.mask[rows],
                          None if self.log_sum_sq is None else self.log_sum_sq[rows])


# --------------------------------------------------------------------------- from a model


def _chunk_logps(hidden: Tensor, targets: Tensor, weight: Tensor, bias: Tensor | None,
                 sum_sq: bool = False) -> tuple[Tensor, Tensor | None]:
    """(log p(target), log Σ_v p_v² or None) for rows of hidden states, in float32
    (`_logits_logps` of their logits)."""
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    return _logits_logps(logits, targets, sum_sq)


def _logits_logps(logits: Tensor, targets: Tensor,
                  sum_sq: bool = False) -> tuple[Tensor, Tensor | None]:
    """(log p(target), log Σ_v p_v² or None) of float32 logits, Shape: (N, V) → (N,) each.

    log p(target) is the gathered logit minus logsumexp, whether or not `sum_sq` is asked for.
    log Σ_v p_v² = 2·log ‖softmax‖₂ (= logsumexp(2·logits) − 2·logsumexp(logits)), the logits
    turned into the softmax in place, so no second logits-sized buffer. Σ_v p_v² ≥ 1/|V|: the
    log is finite.
    """
    lse = logits.logsumexp(-1)
    logps = logits.gather(-1, targets[:, None]).squeeze(-1) - lse
    if not sum_sq:
        return logps, None
    probs = logits.sub_(lse[:, None]).exp_()
    return logps, 2 * torch.linalg.vector_norm(probs, dim=-1).log()


class _HeadLogps(torch.autograd.Function):
    """log p(target) of rows of hidden states through a linear output head, `chunk` rows at a
    time, keeping no logits between forward and backward. With `sum_sq`, the forward returns
    (log p(target), log Σ_v p_v²), the second marked non-differentiable (`_chunk_logps`).

    The backward recomputes each chunk's logits once and turns them in place into the gradient
    of log p(target) with respect to them (one-hot(target) − softmax, times the incoming
    gradient), so a chunk costs one logits-sized buffer; the head's weight gradient is
    accumulated across chunks in one buffer.
    """

    @staticmethod
    def forward(ctx, hidden, targets, weight, bias, chunk, sum_sq=False):
        parts = [_chunk_logps(hidden[i:i + chunk], targets[i:i + chunk], weight, bias, sum_sq)
                 for i in range(0, hidden.shape[0], chunk)]
        ctx.save_for_backward(hidden, targets, weight, bias)
        ctx.chunk = chunk
        out = torch.cat([logps for logps, _ in parts])
        if not sum_sq:
            return out
        log_sum_sq = torch.cat([sq for _, sq in parts])
        ctx.mark_non_differentiable(log_sum_sq)
        return out, log_sum_sq

    @staticmethod
    def backward(ctx, grad_out, *_):  # no gradient flows through log Σ p², if asked for
        hidden, targets, weight, bias = ctx.saved_tensors
        need_hidden, _, need_weight, need_bias = ctx.needs_input_grad[:4]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        wide = torch.promote_types(weight.dtype, torch.float32)  # softmax and sums: ≥ float32
        grad_weight = torch.zeros(weight.shape, dtype=wide, device=weight.device) \
            if need_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=wide, device=bias.device) if need_bias else None
        for i in range(0, hidden.shape[0], ctx.chunk):
            rows = slice(i, i + ctx.chunk)
            h, t, g = hidden[rows], targets[rows, None], grad_out[rows]
            grad = torch.nn.functional.linear(h, weight, bias).to(wide)
            grad = grad.sub_(grad.logsumexp(-1, keepdim=True)).exp_()  # softmax, in place
            g = g.to(wide)[:, None]
            grad = grad.mul_(-g).scatter_(1, t, grad.gather(1, t) + g)  # + g · one-hot(target)
            if need_hidden:
                grad_hidden[rows] = grad.to(weight.dtype) @ weight
            if need_weight:
                if weight.dtype == wide:
                    grad_weight.addmm_(grad.t(), h)
                else:  # half precision: the product in the weight's dtype, summed wide
                    grad_weight += (grad.to(weight.dtype).t() @ h).to(wide)
            if need_bias:
                grad_bias += grad.sum(0)
        return (grad_hidden, None,
                grad_weight.to(weight.dtype) if need_weight else None,
                grad_bias.to(bias.dtype) if need_bias else None, None, None)


def _head_is_plain(model) -> bool:
    """Whether logits are exactly lm_head(hidden): no soft-capping or scaling after the head."""
    cfg = model.config
    return (model.get_output_embeddings() is not None
            and not getattr(cfg, "final_logit_softcapping", None)
            and getattr(cfg, "logit_scale", 1.0) in (None, 1.0))


CHUNK_LOGITS = 2 ** 23  # logits per chunk by default: 32 MiB in float32


def token_logps(model, batch, *, chunk_tokens: int | None = None,
                sum_sq: bool = False) -> TokenLogps:
    """Per-token log-probs of the response tokens of every row of `batch` (an encode.Batch).

    Only positions that predict a response token go through the output head, `chunk_tokens` at
    a time (default: as many as give CHUNK_LOGITS logits, e.g. 170 with SmolLM2's 49,152-token
    vocabulary), so neither the logits nor a log-softmax of the whole batch exist at once; the
    backward pass recomputes each chunk's logits and keeps one such buffer at a time
    (`_HeadLogps`).
    sum_sq: also fill `log_sum_sq` (log Σ_v p_v², no gradient) from the same chunks; the
    log-probs are the same either way. Chunks are not made smaller for it: the softmax is formed
    in place of the chunk's logits.
    Models whose logits are not a plain linear head fall back to `plain_token_logps`. A model
    given a frozen prefix (`prefstudy.frozen.attach`) runs only its trainable top blocks.
    Returns a TokenLogps of shape (rows, L − 1): position t scores token t + 1.
    """
    if not _head_is_plain(model):
        return plain_token_logps(model, batch, sum_sq=sum_sq)
    h, mask = response_hidden(model, batch)
    targets = batch.input_ids[:, 1:][mask]
    head = model.get_output_embeddings()
    flat, flat_sq = head_logps(h, targets, head.weight, head.bias, chunk=chunk_tokens,
                               sum_sq=sum_sq)
    return TokenLogps(_on_mask(flat, mask), mask,
                      None if flat_sq is None else _on_mask(flat_sq, mask))


def response_hidden(model, batch) -> tuple[Tensor, Tensor]:
    """(final hidden states at the positions that predict a response token, Shape (N, d); the
    mask of those positions, Shape (rows, L − 1), N = mask.sum()). A model given a frozen
    prefix (`prefstudy.frozen.attach`) runs only its top blocks."""
    prefix = frozen.attached(model)
    if prefix is not None:  # only the top blocks run; the frozen ones' output is cached
        hidden = prefix.last_hidden_state(model, batch.input_ids, batch.attention_mask)
    else:
        hidden = model.base_model(input_ids=batch.input_ids,
                                  attention_mask=batch.attention_mask).last_hidden_state
    mask = batch.response_mask[:, 1:]
    return hidden[:, :-1][mask], mask


def _on_mask(values: Tensor, mask: Tensor) -> Tensor:
    """Values of the masked positions, Shape (N,), placed on `mask`, Shape (rows, T); 0 off it."""
    return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device) \
        .masked_scatter(mask, values)


def head_logps(hidden: Tensor, targets: Tensor, weight: Tensor, bias: Tensor | None, *,
               chunk: int | None = None, sum_sq: bool = False) -> tuple[Tensor, Tensor | None]:
    """(log p(target), log Σ_v p_v² or None) of rows of hidden states through the output head
    `weight`, `bias`, `chunk` rows at a time (default: as many as give CHUNK_LOGITS logits), in
    float32 (`_HeadLogps`). hidden: Shape: (N, d); targets: Shape: (N,). Returns Shape: (N,) each.
    """
    if not len(hidden):
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty if sum_sq else None
    chunk = chunk or max(16, CHUNK_LOGITS // weight.shape[0])
    out = _HeadLogps.apply(hidden, targets, weight, bias, chunk, sum_sq)
    return out if sum_sq else (out, None)


def plain_token_logps(model, batch, *, sum_sq: bool = False) -> TokenLogps:
    """The textbook path: full logits, full float32 log_softmax, gather. For checks and baselines.
    sum_sq: also log Σ_v p_v² = logsumexp(2·log p), detached, as `TokenLogps.log_sum_sq`."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    mask = batch.response_mask[:, 1:]
    picked = logp.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    log_sum_sq = (2 * logp.detach()).logsumexp(-1) * mask if sum_sq else None
    return TokenLogps(picked * mask, mask, log_sum_sq)


# --------------------------------------------------------------------------- KL between models


def kl_rows(logits: Tensor, start_logits: Tensor) -> Tensor:
    """KL(p ‖ p₀) = Σ_v p(v)·(log p(v) − log p₀(v)) of each row, over the full vocabulary, in
    float32, p = softmax(logits), p₀ = softmax(start_logits). Both Shape: (N, V). Returns
    Shape: (N,); exactly 0 where the two rows are equal."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    diff = torch.log_softmax(start_logits.float(), dim=-1).neg_().add_(logp)  # log p − log p₀
    return torch.einsum("nv,nv->n", logp.exp_(), diff)


@torch.no_grad()
def token_logps_kl(model, start_model, batch, *, chunk_tokens: int | None = None,
                   sum_sq: bool = False,
                   start_hidden: Tensor | None = None) -> tuple[TokenLogps, Tensor]:
    """`token_logps(model, batch, sum_sq=sum_sq)` (the same values, no gradient), and the
    per-token KL(π ‖ π₀) of `model` (π) from `start_model` (π₀) at the same positions, over the
    full vocabulary (`kl_rows`), teacher-forced: both models read the batch's tokens.

    One pass of each model: the policy's logits give both its log-probs and the KL. As in
    `token_logps`, only positions that predict a response token go through the output heads,
    `chunk_tokens` at a time (default: as many as give CHUNK_LOGITS logits), so at most one
    chunk's logits of each model exist at once; models with a frozen prefix run only their top
    blocks. Models whose logits are not a plain linear head fall back to full logits.
    start_hidden: `response_hidden(start_model, batch)[0]` where the caller keeps it (a model no
    update reaches gives the same every time: evaluate.StartingModel.hidden).
    Returns (TokenLogps of shape (rows, L − 1), KL Shape: (rows, L − 1), float32, 0 off the
    response mask: `.sum(-1)` is each row's summed KL, in nats).
    """
    if not (_head_is_plain(model) and _head_is_plain(start_model)):
        return (plain_token_logps(model, batch, sum_sq=sum_sq),
                _plain_token_kl(model, start_model, batch))
    h, mask = response_hidden(model, batch)
    h0 = response_hidden(start_model, batch)[0] if start_hidden is None else start_hidden
    targets = batch.input_ids[:, 1:][mask]
    heads = model.get_output_embeddings(), start_model.get_output_embeddings()
    chunk = chunk_tokens or max(16, CHUNK_LOGITS // heads[0].weight.shape[0])
    empty = h.new_zeros(0, dtype=torch.float32)
    parts = [_chunk_logps_kl(h[i:i + chunk], h0[i:i + chunk], targets[i:i + chunk], *heads,
                             sum_sq) for i in range(0, len(h), chunk)] \
        or [(empty, empty if sum_sq else None, empty)]
    logps, sq, kl = (None if col[0] is None else torch.cat(col) for col in zip(*parts))
    return (TokenLogps(_on_mask(logps, mask), mask, None if sq is None else _on_mask(sq, mask)),
            _on_mask(kl, mask))


def _chunk_logps_kl(hidden: Tensor, start_hidden: Tensor, targets: Tensor, head, start_head,
                    sum_sq: bool) -> tuple[Tensor, Tensor | None, Tensor]:
    """(log p(target), log Σ_v p_v² or None, KL(p ‖ p₀)) of rows of hidden states through the
    policy's head and the starting model's: the first two as `_chunk_logps` computes them, the
    KL by `kl_rows`, from the same policy logits. Shape: (N,) each."""
    logits = torch.nn.functional.linear(hidden, head.weight, head.bias).float()
    kl = kl_rows(logits, torch.nn.functional.linear(start_hidden, start_head.weight,
                                                    start_head.bias))
    return (*_logits_logps(logits, targets, sum_sq), kl)


def _plain_token_kl(model, start_model, batch) -> Tensor:
    """The KL of `token_logps_kl` from both models' full logits (heads that are not a plain
    linear layer)."""
    mask = batch.response_mask[:, 1:]
    logits = [m(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
              for m in (model, start_model)]
    return _on_mask(kl_rows(logits[0][mask], logits[1][mask]), mask)


def split_pairs(t: TokenLogps) -> tuple[TokenLogps, TokenLogps]:
    """(chosen, rejected) from a collated batch whose first half of rows is chosen."""
    half = t.logps.shape[0] // 2
    return t.index(slice(0, half)), t.index(slice(half, None))


@torch.no_grad()
def wpo_weights(chosen: TokenLogps, chosen_log_sum_sq: Tensor, rejected: TokenLogps,
                rejected_log_sum_sq: Tensor) -> Tensor:
    """Per-pair WPO weight w(y_c)·w(y_r), to multiply any objective's per-pair loss by.

    Zhou et al. 2024, WPO: Enhancing RLHF with Weighted Preference Optimization, Eq. 2, as TRL's
    use_weighting: w(y) = exp((1/|y|)·Σ_t (log π(y_t|·) − log Σ_v π(v|·)²)), the sequence's
    probability under the policy relative to a sample of the policy itself, per token. A weight,
    not a loss: no gradient flows through it.
    chosen_log_sum_sq / rejected_log_sum_sq: log Σ_v π(v|·)² at each token, Shape: as each side's
    log-probs (values off the mask are ignored). Returns Shape: (batch,).
    """
    def weight(side: TokenLogps, log_sum_sq: Tensor) -> Tensor:
        return torch.exp(TokenLogps(side.logps - log_sum_sq, side.mask).mean)

    return weight(chosen, chosen_log_sum_sq) * weight(rejected, rejected_log_sum_sq)
