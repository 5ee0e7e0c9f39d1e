"""Generations cut by max_new_tokens never end in half a character: SmolLM2's real (byte-level)
tokenizer spells a Chinese character as several tokens, and a cut between them is dropped."""

from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from prefstudy.evaluate import decode_generated, generate
from prefstudy.models import load_tokenizer

TEXT = "我理解你现在的感受。体育菜比较简单，😀 ok"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")  # SmolLM2's tokenizer


def test_a_character_cut_by_the_token_limit_is_dropped_not_guessed(tok):
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    plain = [tok.decode(ids[:k]) for k in range(1, len(ids) + 1)]
    assert sum(t.endswith("\ufffd") for t in plain) >= 10  # the cuts this test is about
    for k, raw in enumerate(plain, start=1):
        text = decode_generated(tok, ids[:k], cut=True)
        assert "\ufffd" not in text, (k, raw)
        assert raw.startswith(text) and TEXT.startswith(text)  # a prefix: nothing invented
        # only the cut character goes: the longest prefix of whole characters is kept
        assert len(raw.rstrip("\ufffd")) == len(text), (k, raw, text)
    assert decode_generated(tok, ids, cut=True) == TEXT


def test_a_replacement_character_the_model_wrote_stays(tok):
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    k = next(k for k in range(1, len(ids)) if tok.decode(ids[:k]).endswith("\ufffd"))
    junk = ids[:k] + tok("。", add_special_tokens=False)["input_ids"]  # bytes that never complete
    assert "\ufffd" in tok.decode(junk)
    assert decode_generated(tok, junk, cut=True) == tok.decode(junk)  # inside: kept
    # a generation that ended itself (it reached end of sequence) is decoded as it is
    assert decode_generated(tok, ids[:k], cut=False) == tok.decode(ids[:k])


class CannedModel:
    """Stands in for a model: its greedy continuation of prompt i is replies[i], padded."""

    def __init__(self, tok, replies):
        self.tok, self.replies = tok, replies
        self.generation_config = SimpleNamespace(eos_token_id=tok.eos_token_id)

    def generate(self, input_ids, attention_mask, max_new_tokens, **_):
        rows = [list(r)[:max_new_tokens] for r in self.replies]
        rows = [r + [self.tok.pad_token_id] * (max_new_tokens - len(r)) for r in rows]
        return torch.cat([input_ids, torch.tensor(rows)], dim=1)


def test_generate_drops_the_cut_character_only_where_the_limit_cut_the_reply(tok):
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    first, second = [k for k in range(1, len(ids)) if tok.decode(ids[:k]).endswith("\ufffd")][:2]
    replies = [ids[:second], ids[:first] + [tok.eos_token_id]]  # cut by the limit; ended itself
    probes = pd.DataFrame({"prompt": ["一", "二"], "lang": "zh", "kind": "test"})
    out = generate(CannedModel(tok, replies), tok, probes, "cpu", 0, max_new_tokens=second)
    assert out.text[0] == tok.decode(ids[:second]).rstrip("\ufffd")
    assert out.text[1] == tok.decode(ids[:first])  # what the model wrote before it ended
