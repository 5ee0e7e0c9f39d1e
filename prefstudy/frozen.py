"""The frozen bottom blocks' output, computed once per sequence and reused.

With only the top k blocks trainable (`TrainConfig.trainable_blocks`), the embedding and the
bottom L − k blocks never change: their output for a token sequence is the same at every step of
every run of a study that starts from the same model. `attach(model, n_frozen)` gives the model a
`FrozenPrefix`; from then on `logprobs.token_logps` runs the bottom blocks once per distinct
sequence (kept in memory, shared by every run of the process whose starting model has the same
content, device and k) and only the top k blocks and the head at every later forward:

    hidden_L = norm(top_k(prefix(x)))        prefix(x) = blocks_{0..L−k−1}(embed(x)), cached

Exact up to floating-point summation order against a full forward (tested): rows are right-padded
and attention is causal, so a sequence's hidden states do not depend on what it is batched with.
Models without `model.model.layers` / `model.model.norm` (the Llama layout SmolLM2 and most
decoder-only models share) are left as they are. `frozen_copy` keeps the starting model for a
run's evaluations at the cost of its trainable part only: the frozen blocks are shared.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from torch import Tensor, nn

from . import fingerprint

# One store at a time: (model fingerprint, device, n_frozen) → {token ids: hidden}.
_STORE: dict[tuple, dict[tuple[int, ...], Tensor]] = {}
_ATTACHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def supports(model) -> bool:
    inner = getattr(model, "model", None)
    return isinstance(getattr(inner, "layers", None), nn.ModuleList) and hasattr(inner, "norm")


@contextlib.contextmanager
def _only(model, layers: slice, norm: bool):
    """The model's decoder with only `layers` (and the final norm, or none), restored after."""
    inner = model.model
    saved_layers, saved_norm = inner.layers, inner.norm
    inner.layers = nn.ModuleList(list(saved_layers)[layers])
    if not norm:
        inner.norm = nn.Identity()
    try:
        yield inner
    finally:
        inner.layers, inner.norm = saved_layers, saved_norm


class FrozenPrefix:
    """The output of the bottom `n_frozen` blocks for each sequence seen, on the model's device.

    `store` maps a sequence's token ids (without padding) to its hidden states, Shape
    (len, hidden size); pass the same dict to share it between runs."""

    def __init__(self, n_frozen: int, store: dict | None = None):
        self.n_frozen = n_frozen
        self.store = {} if store is None else store

    @torch.no_grad()
    def _fill(self, model, input_ids: Tensor, attention_mask: Tensor, keys, rows) -> None:
        ids, mask = input_ids[rows], attention_mask[rows]
        with _only(model, slice(0, self.n_frozen), norm=False) as inner:
            hidden = inner(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        for i, row in enumerate(rows):
            self.store[keys[row]] = hidden[i, : len(keys[row])].detach()

    def prefix(self, model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Shape (batch, T, hidden): the bottom blocks' output of each row, zeros on padding."""
        lengths = attention_mask.sum(-1).tolist()
        keys = [tuple(input_ids[b, :n].tolist()) for b, n in enumerate(lengths)]
        missing = [b for b, k in enumerate(keys) if k not in self.store]
        if missing:
            self._fill(model, input_ids, attention_mask, keys, missing)
        first = self.store[keys[0]]
        out = first.new_zeros((len(keys), input_ids.shape[1], first.shape[-1]))
        for b, k in enumerate(keys):
            out[b, : len(k)] = self.store[k]
        return out

    def last_hidden_state(self, model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """What `model.base_model(...).last_hidden_state` gives, from the cached prefix and the
        top blocks only (with gradients wherever the top blocks have them)."""
        start = self.prefix(model, input_ids, attention_mask)
        with _only(model, slice(self.n_frozen, None), norm=True) as inner:
            return inner(inputs_embeds=start, attention_mask=attention_mask,
                         use_cache=False).last_hidden_state


def attach(model, n_frozen: int, *, shared: bool = False) -> FrozenPrefix | None:
    """Give `model` a FrozenPrefix of its bottom `n_frozen` blocks (None, and nothing attached,
    where the model's layout is not supported or nothing is frozen).

    shared: use the process's store of the starting model, keyed on the model's content
    (prefstudy.fingerprint.model: its config and every weight, so its name, seed and dtype), its
    device and `n_frozen` — never on a name, so a model reloaded from changed weights gets a new
    store. Runs that start from the same model share one store; a new key replaces the old store
    (one study's sequences in memory at a time). Attach before training: the key is the content
    of the model as it is now."""
    if n_frozen <= 0 or not supports(model):
        return None
    store = None
    if shared:
        device = next(model.parameters()).device
        key = (fingerprint.model(model), str(device), n_frozen)
        if key not in _STORE:
            _STORE.clear()
            _STORE[key] = {}
        store = _STORE[key]
    prefix = FrozenPrefix(n_frozen, store)
    _ATTACHED[model] = prefix
    return prefix


def frozen_copy(model):
    """A copy of `model` as it is now that no update reaches: its trainable parameters copied,
    its frozen ones (which no optimiser holds) shared, nothing in it trainable, in eval mode,
    and with the model's FrozenPrefix (the same bottom blocks, so the same cached output).
    Costs the memory of the trainable part only: the top k blocks with `trainable_blocks`."""
    import copy

    shared = {id(p): p for p in model.parameters() if not p.requires_grad}
    twin = copy.deepcopy(model, memo=shared)
    twin.requires_grad_(False).eval()
    prefix = attached(model)
    if prefix is not None:
        _ATTACHED[twin] = prefix
    return twin


def attached(model) -> FrozenPrefix | None:
    return _ATTACHED.get(model)


def detach(model) -> None:
    _ATTACHED.pop(model, None)
