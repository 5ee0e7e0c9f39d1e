"""Pairs → token batches: chat template, prompt masking, truncation, collation.

A pair becomes prompt tokens plus two response tokens lists. For a tokenizer with a chat template,
the prompt is rendered as the conversation up to the assistant's turn (the generation prompt) and
the response is the assistant message as the template closes it (SmolLM2: the text followed by
`<|im_end|>`), so the model is also scored on ending its turn. Without a template, prompt and
response are concatenated and the response ends with the EOS token.

Truncation never silently empties a response: the prompt is cut from the left to
`max_prompt_length`, then each response is cut from the right to fit `max_length`; a pair whose
response would keep no token, or whose two responses are identical in what fits (their gap would
be 0 at every step), is dropped and listed in `Encoded.dropped`; `Encoded.n_truncated` counts the
kept pairs that lost a prompt or response token.

`collate` puts the chosen responses of a batch in rows [0, B) and the rejected ones in rows [B, 2B)
of one right-padded batch, so one forward pass serves both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .data import PreferencePair


@dataclass(frozen=True)
class EncodedPair:
    pair_id: str
    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    truncated: bool = False  # whether any token of the prompt or a response was cut

    @property
    def len_chosen(self) -> int:
        return len(self.chosen_ids)

    @property
    def len_rejected(self) -> int:
        return len(self.rejected_ids)


@dataclass(frozen=True)
class Encoded:
    """Encoded pairs, and the pairs dropped because truncation would have emptied a response or
    left the two responses identical."""

    items: tuple[EncodedPair, ...]
    dropped: tuple[tuple[str, str], ...] = ()  # (pair_id, reason)
    settings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def n_truncated(self) -> int:
        """Kept pairs whose prompt or a response lost tokens to truncation."""
        return sum(e.truncated for e in self.items)


@dataclass
class Batch:
    """One padded batch of B pairs: rows [0, B) are chosen, rows [B, 2B) rejected.

    input_ids:      (2B, L) long, right-padded.
    attention_mask: (2B, L) long, 1 on real tokens.
    response_mask:  (2B, L) bool, True on response tokens (what the losses score).
    pair_ids:       the B pair ids, in row order.
    """

    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    pair_ids: list[str]

    @property
    def size(self) -> int:
        return len(self.pair_ids)

    def to(self, device) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device),
                     self.response_mask.to(device), self.pair_ids)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _render_chat(tokenizer, pair_messages: list[dict], response: str) -> tuple[str, str]:
    """(prompt text, response text) as the chat template renders them."""
    prompt = tokenizer.apply_chat_template(pair_messages, tokenize=False,
                                           add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        pair_messages + [{"role": "assistant", "content": response}], tokenize=False
    )
    if not full.startswith(prompt):
        raise ValueError("the chat template does not render the prompt as a prefix of the "
                         "conversation; pass chat=False to concatenate plainly")
    # Keep the end-of-turn marker, drop the template's trailing newline after it.
    return prompt, full[len(prompt):].rstrip("\n")


def _tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_pair(tokenizer, pair: PreferencePair, *, chat: bool) -> tuple[list[int], list, list]:
    """Untruncated (prompt ids, chosen ids, rejected ids)."""
    if chat:
        prompt, chosen = _render_chat(tokenizer, pair.messages(), pair.chosen)
        _, rejected = _render_chat(tokenizer, pair.messages(), pair.rejected)
        return _tokens(tokenizer, prompt), _tokens(tokenizer, chosen), _tokens(tokenizer, rejected)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id]
    prompt_text = "\n".join(m["content"] for m in pair.messages()) + "\n"
    return (bos + _tokens(tokenizer, prompt_text),
            _tokens(tokenizer, pair.chosen) + eos, _tokens(tokenizer, pair.rejected) + eos)


def encode_pairs(
    pairs: Sequence[PreferencePair],
    tokenizer,
    *,
    max_length: int = 256,
    max_prompt_length: int = 128,
    chat: bool | None = None,
) -> Encoded:
    """Tokenise pairs with prompt masking and the truncation policy described above.

    max_length:        prompt + response tokens, per side.
    max_prompt_length: the prompt keeps its last this-many tokens.
    chat:              use the chat template; None → whenever the tokenizer has one.
    """
    if max_prompt_length >= max_length:
        raise ValueError(f"max_prompt_length={max_prompt_length} must be below "
                         f"max_length={max_length}, or no response token fits")
    chat = has_chat_template(tokenizer) if chat is None else chat
    items, dropped = [], []
    for pair in pairs:
        prompt, chosen, rejected = encode_pair(tokenizer, pair, chat=chat)
        kept_prompt = prompt[-max_prompt_length:]
        room = max_length - len(kept_prompt)
        if not chosen or not rejected:
            dropped.append((pair.pair_id, "a response has no tokens"))
            continue
        if chosen[:room] == rejected[:room]:  # their gap would be 0 at every step
            dropped.append((pair.pair_id, f"chosen and rejected are identical in their first "
                                          f"{room} tokens, all that fits after the prompt"))
            continue
        truncated = len(kept_prompt) < len(prompt) or max(len(chosen), len(rejected)) > room
        items.append(EncodedPair(pair.pair_id, tuple(kept_prompt), tuple(chosen[:room]),
                                 tuple(rejected[:room]), truncated))
    settings = {"max_length": max_length, "max_prompt_length": max_prompt_length, "chat": chat}
    return Encoded(tuple(items), tuple(dropped), settings)


def collate(items: Sequence[EncodedPair], pad_id: int) -> Batch:
    """Chosen rows first, then rejected rows, right-padded to the longest sequence."""
    seqs = [(e.prompt_ids, e.chosen_ids) for e in items] + [
        (e.prompt_ids, e.rejected_ids) for e in items
    ]
    return collate_sequences(seqs, pad_id, [e.pair_id for e in items])


def collate_sequences(seqs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int,
                      pair_ids: Sequence[str] = ()) -> Batch:
    """One row per (prompt ids, response ids), right-padded to the longest; the response tokens
    are the scored ones. `collate` puts a batch of pairs this way; alone it batches sequences that
    need not come in pairs (pair_ids then names nothing)."""
    width = max(len(p) + len(r) for p, r in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    response = torch.zeros((len(seqs), width), dtype=torch.bool)
    for row, (p, r) in enumerate(seqs):
        n = len(p) + len(r)
        input_ids[row, :n] = torch.tensor(tuple(p) + tuple(r), dtype=torch.long)
        attention[row, :n] = 1
        response[row, len(p):n] = True
    return Batch(input_ids, attention, response, list(pair_ids))
