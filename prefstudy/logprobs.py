"""Per-token log-probabilities of response tokens, and their per-sequence summaries.

The objectives never see logits: they see a `TokenLogps` per side (chosen / rejected,
policy / reference). `token_logps` computes it from logits without materialising a float32
log-softmax over the whole vocabulary for the whole batch: it gathers the target logit and
subtracts a logsumexp computed a few rows at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TokenLogps:
    """Log-probabilities of the response tokens of a batch of sequences.

    logps: log p(token_t | tokens_<t). Shape: (batch, T), float; 0.0 wherever `mask` is False.
    mask:  True on response tokens (the prompt and padding are False). Shape: (batch, T), bool.
    Response tokens are contiguous in each row; row b has `mask[b].sum()` of them.
    """

    logps: Tensor
    mask: Tensor

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

    def detach(self) -> TokenLogps:
        return TokenLogps(self.logps.detach(), self.mask)

    def index(self, rows) -> TokenLogps:
        return TokenLogps(self.logps[rows], self.mask[rows])


# --------------------------------------------------------------------------- from a model


def _chunk_logps(hidden: Tensor, targets: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """log p(target) for rows of hidden states: gathered logit minus logsumexp, in float32."""
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)


class _HeadLogps(torch.autograd.Function):
    """log p(target) of rows of hidden states through a linear output head, `chunk` rows at a
    time, keeping no logits between forward and backward.

    The backward recomputes each chunk's logits once and turns them in place into the gradient
    of log p(target) with respect to them (one-hot(target) − softmax, times the incoming
    gradient), so a chunk costs one logits-sized buffer; the head's weight gradient is
    accumulated across chunks in one buffer.
    """

    @staticmethod
    def forward(ctx, hidden, targets, weight, bias, chunk):
        out = torch.cat([_chunk_logps(hidden[i:i + chunk], targets[i:i + chunk], weight, bias)
                         for i in range(0, hidden.shape[0], chunk)])
        ctx.save_for_backward(hidden, targets, weight, bias)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, targets, weight, bias = ctx.saved_tensors
        need_hidden, _, need_weight, need_bias, _ = ctx.needs_input_grad
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
                grad_bias.to(bias.dtype) if need_bias else None, None)


def _head_is_plain(model) -> bool:
    """Whether logits are exactly lm_head(hidden): no soft-capping or scaling after the head."""
    cfg = model.config
    return (model.get_output_embeddings() is not None
            and not getattr(cfg, "final_logit_softcapping", None)
            and getattr(cfg, "logit_scale", 1.0) in (None, 1.0))


CHUNK_LOGITS = 2 ** 23  # logits per chunk by default: 32 MiB in float32


def token_logps(model, batch, *, chunk_tokens: int | None = None) -> TokenLogps:
    """Per-token log-probs of the response tokens of every row of `batch` (an encode.Batch).

    Only positions that predict a response token go through the output head, `chunk_tokens` at
    a time (default: as many as give CHUNK_LOGITS logits, e.g. 170 with SmolLM2's 49,152-token
    vocabulary), so neither the logits nor a log-softmax of the whole batch exist at once; the
    backward pass recomputes each chunk's logits and keeps one such buffer at a time
    (`_HeadLogps`).
    Models whose logits are not a plain linear head fall back to `plain_token_logps`.
    Returns a TokenLogps of shape (rows, L − 1): position t scores token t + 1.
    """
    if not _head_is_plain(model):
        return plain_token_logps(model, batch)
    hidden = model.base_model(input_ids=batch.input_ids,
                              attention_mask=batch.attention_mask).last_hidden_state
    mask = batch.response_mask[:, 1:]
    h, targets = hidden[:, :-1][mask], batch.input_ids[:, 1:][mask]
    head = model.get_output_embeddings()
    chunk_tokens = chunk_tokens or max(16, CHUNK_LOGITS // head.weight.shape[0])
    flat = (_HeadLogps.apply(h, targets, head.weight, head.bias, chunk_tokens) if len(h)
            else h.new_zeros(0, dtype=torch.float32))
    logps = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    logps = logps.masked_scatter(mask, flat)
    return TokenLogps(logps, mask)


def plain_token_logps(model, batch) -> TokenLogps:
    """The textbook path: full logits, full float32 log_softmax, gather. For checks and baselines."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    mask = batch.response_mask[:, 1:]
    picked = logp.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    return TokenLogps(picked * mask, mask)


def split_pairs(t: TokenLogps) -> tuple[TokenLogps, TokenLogps]:
    """(chosen, rejected) from a collated batch whose first half of rows is chosen."""
    half = t.logps.shape[0] // 2
    return t.index(slice(0, half)), t.index(slice(half, None))
