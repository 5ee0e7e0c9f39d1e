import math

import pytest
import torch

from prefstudy.data import PreferencePair
from prefstudy.encode import collate, encode_pairs
from prefstudy.logprobs import TokenLogps, plain_token_logps, split_pairs, token_logps
from prefstudy.scoring import score_pairs

PAIRS = [
    PreferencePair("我最近很郁闷，能告诉我该怎么办吗",
                   "我理解你现在的感受。你能告诉我是什么让你感到郁闷吗？", "你先说说你为什么郁闷吧。"),
    PreferencePair("What is 2 + 2?", "2 + 2 = 4.", "It is 5, obviously, as everybody knows."),
    PreferencePair("Say hi", "Hi there!", "No."),
]


def test_chat_template_masks_prompt_and_keeps_end_of_turn(tokenizer):
    enc = encode_pairs(PAIRS, tokenizer)
    e = enc.items[1]
    prompt = tokenizer.decode(e.prompt_ids)
    assert prompt.endswith("<|im_start|>assistant\n") and "What is 2 + 2?" in prompt
    assert tokenizer.decode(e.chosen_ids) == "2 + 2 = 4.<|im_end|>"
    assert e.len_chosen == len(e.chosen_ids) and not e.truncated


def test_plain_concatenation_without_template(tokenizer):
    e = encode_pairs(PAIRS[1:2], tokenizer, chat=False).items[0]
    assert e.chosen_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(e.prompt_ids[1:]) == "What is 2 + 2?\n"  # after BOS, no template


def test_truncation_keeps_prompt_end_and_never_empties(tokenizer):
    long = PreferencePair("word " * 200 + "END?", "yes " * 100, "no")
    enc = encode_pairs([long], tokenizer, max_length=40, max_prompt_length=30)
    e = enc.items[0]
    assert len(e.prompt_ids) == 30 and "END?" in tokenizer.decode(e.prompt_ids)
    assert len(e.prompt_ids) + e.len_chosen == 40 and e.len_rejected >= 1 and e.truncated
    with pytest.raises(ValueError, match="max_prompt_length=40 must be below"):
        encode_pairs([long], tokenizer, max_length=40, max_prompt_length=40)


def test_collate_puts_chosen_then_rejected_with_masks(tokenizer):
    enc = encode_pairs(PAIRS, tokenizer)
    b = collate(enc.items, tokenizer.pad_token_id)
    assert b.input_ids.shape[0] == 6 and b.pair_ids == [e.pair_id for e in enc.items]
    for i, e in enumerate(enc.items):
        assert int(b.response_mask[i].sum()) == e.len_chosen
        assert int(b.response_mask[3 + i].sum()) == e.len_rejected
        assert int(b.attention_mask[i].sum()) == len(e.prompt_ids) + e.len_chosen
        row = b.input_ids[3 + i][b.response_mask[3 + i]].tolist()
        assert row == list(e.rejected_ids)


def test_token_logps_equal_plain_log_softmax(tiny):
    model, tok = tiny
    b = collate(encode_pairs(PAIRS, tok).items, tok.pad_token_id)
    with torch.no_grad():
        fast, plain = token_logps(model, b, chunk_tokens=7), plain_token_logps(model, b)
    assert torch.equal(fast.mask, plain.mask)
    assert torch.allclose(fast.logps, plain.logps, atol=1e-5, rtol=0)
    assert torch.allclose(fast.sum, plain.sum, atol=1e-4)


def test_token_logps_gradients_match_plain_path(tiny):
    model, tok = tiny
    b = collate(encode_pairs(PAIRS[:2], tok).items, tok.pad_token_id)
    grads = []
    for fn in (lambda: token_logps(model, b, chunk_tokens=5), lambda: plain_token_logps(model, b)):
        model.zero_grad()
        fn().sum.sum().backward()
        grads.append(model.lm_head.weight.grad.clone())
    model.zero_grad()
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-4)


def test_token_logps_sums_means_counts_by_hand():
    t = TokenLogps(torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]]),
                   torch.tensor([[True, True, False], [True, False, False]]))
    assert t.sum.tolist() == [-3.0, -0.5]
    assert t.mean.tolist() == [-1.5, -0.5]
    assert t.count.tolist() == [2.0, 1.0]
    assert t.position().tolist() == [[0, 1, -1], [0, -1, -1]]


def test_split_pairs_halves_rows():
    t = TokenLogps(torch.arange(8.0).reshape(4, 2), torch.ones(4, 2, dtype=torch.bool))
    c, r = split_pairs(t)
    assert c.logps.tolist() == [[0, 1], [2, 3]] and r.logps.tolist() == [[4, 5], [6, 7]]


def test_score_pairs_columns_and_identities(tiny):
    model, tok = tiny
    df = score_pairs(model, tok, PAIRS, batch_size=2)
    assert len(df) == 3
    row = df.iloc[0]
    assert math.isclose(row.loss_p, row.nll_sum_p / row.len_p, rel_tol=1e-5)
    assert math.isclose(row.gap, row.loss_n - row.loss_p, rel_tol=1e-6)
    assert math.isclose(row.gap_sum, row.nll_sum_n - row.nll_sum_p, rel_tol=1e-6)
    # batch size does not change the numbers
    df1 = score_pairs(model, tok, PAIRS, batch_size=1)
    assert (df1.loss_p - df.loss_p).abs().max() < 1e-5


def test_score_pairs_scores_shared_responses_once_and_equals_the_pair_batches(tiny):
    # length-controlled variants share their chosen response: scored once, same numbers as a
    # plain forward over each pair's own chosen/rejected batch
    model, tok = tiny
    base = PAIRS[1]
    variants = [base, PreferencePair(base.prompt, base.chosen, base.rejected + " Truly."),
                PreferencePair(base.prompt, base.chosen, "No."), PAIRS[0], PAIRS[2]]
    calls = []
    hook = model.base_model.register_forward_hook(lambda m, args, out: calls.append(1))
    try:
        df = score_pairs(model, tok, variants, batch_size=4)
    finally:
        hook.remove()
    assert len(calls) == 1  # 8 distinct sequences (of 10) fit one batch of 2 × 4 rows
    enc = encode_pairs(variants, tok)
    for e, row in zip(enc.items, df.itertuples()):
        with torch.no_grad():
            c, r = split_pairs(token_logps(model, collate([e], tok.pad_token_id)))
        assert row.pair_id == e.pair_id
        assert (row.len_p, row.len_n) == (int(c.count[0]), int(r.count[0]))
        assert row.nll_sum_p == pytest.approx(-float(c.sum[0]), abs=1e-4)
        assert row.nll_sum_n == pytest.approx(-float(r.sum[0]), abs=1e-4)
        assert row.loss_n == pytest.approx(-float(r.mean[0]), abs=1e-5)


def _random_head(seed: int, with_bias: bool):
    """A float64 output head and its inputs, drawn from `seed`: (hidden (10, 6), weight (50, 6),
    bias (50,) or None, targets (10,), upstream gradient (10,), the tensors that take a
    gradient)."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(10, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(50, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(50, dtype=torch.float64, generator=gen).requires_grad_() if with_bias \
        else None
    targets = torch.randint(0, 50, (10,), generator=gen)
    upstream = torch.randn(10, dtype=torch.float64, generator=gen)
    return hidden, weight, bias, targets, upstream, [hidden, weight] + ([bias] if with_bias else [])


@pytest.mark.parametrize("chunk", [1, 3, 64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_head_logps_values_and_gradients_equal_log_softmax(chunk, with_bias):
    # the chunked head with its own backward against autograd through a full log_softmax, in
    # float64 so that any difference is the method, not rounding
    from prefstudy.logprobs import _HeadLogps

    hidden, weight, bias, targets, upstream, inputs = _random_head(chunk, with_bias)

    def grads(logps):
        return logps, torch.autograd.grad((logps * upstream).sum(), inputs)

    plain = torch.log_softmax(torch.nn.functional.linear(hidden, weight, bias), -1)
    want, want_grads = grads(plain.gather(-1, targets[:, None]).squeeze(-1))
    got, got_grads = grads(_HeadLogps.apply(hidden, targets, weight, bias, chunk))
    assert got.dtype == torch.float32  # log-probs are float32 whatever the model's dtype
    torch.testing.assert_close(got, want.float())
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)
    # a frozen head: only the hidden states get a gradient
    frozen = _HeadLogps.apply(hidden, targets, weight.detach(), None, chunk)
    (g_hidden,) = torch.autograd.grad((frozen * upstream).sum(), [hidden])
    plain = torch.log_softmax(torch.nn.functional.linear(hidden, weight.detach()), -1)
    (w_hidden,) = torch.autograd.grad((plain.gather(-1, targets[:, None]).squeeze(-1)
                                       * upstream).sum(), [hidden])
    torch.testing.assert_close(g_hidden, w_hidden, rtol=1e-6, atol=1e-6)


def _full_softmax_log_sum_sq(logits):
    """log Σ_v p_v² the textbook way: a float64 softmax, squared and summed."""
    return torch.softmax(logits.double(), -1).pow(2).sum(-1).log()


@pytest.mark.parametrize("chunk", [1, 3, 64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_head_log_sum_sq_equals_full_softmax_and_leaves_logps_and_gradients_alone(chunk,
                                                                                   with_bias):
    from prefstudy.logprobs import _HeadLogps

    hidden, weight, bias, targets, upstream, inputs = _random_head(10 + chunk, with_bias)

    plain_logps = _HeadLogps.apply(hidden, targets, weight, bias, chunk)
    plain_grads = torch.autograd.grad((plain_logps * upstream).sum(), inputs)
    logps, log_sum_sq = _HeadLogps.apply(hidden, targets, weight, bias, chunk, True)
    grads = torch.autograd.grad((logps * upstream).sum(), inputs)
    want = _full_softmax_log_sum_sq(torch.nn.functional.linear(hidden, weight, bias))
    torch.testing.assert_close(log_sum_sq, want.float(), rtol=1e-6, atol=1e-6)
    assert log_sum_sq.dtype == torch.float32 and not log_sum_sq.requires_grad
    assert torch.equal(logps, plain_logps)  # the same log-probs, bit for bit
    for g, w in zip(grads, plain_grads):
        assert torch.equal(g, w)


def test_token_logps_sum_sq_equals_full_softmax_of_the_model(tiny):
    # the whole path (masking, chunks, scatter back to rows) against a float64 model's logits
    import copy

    model = copy.deepcopy(tiny[0]).double()
    tok = tiny[1]
    b = collate(encode_pairs(PAIRS, tok).items, tok.pad_token_id)
    mask = b.response_mask[:, 1:]
    with torch.no_grad():
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1]
        want = _full_softmax_log_sum_sq(logits) * mask
        plain = token_logps(model, b, chunk_tokens=7)
        got = token_logps(model, b, chunk_tokens=7, sum_sq=True)
        fallback = plain_token_logps(model, b, sum_sq=True)
    assert plain.log_sum_sq is None
    assert torch.equal(got.logps, plain.logps) and torch.equal(got.mask, plain.mask)
    torch.testing.assert_close(got.log_sum_sq, want.float(), rtol=0, atol=1e-5)
    torch.testing.assert_close(fallback.log_sum_sq, want.float(), rtol=0, atol=1e-5)
    assert (got.log_sum_sq[~mask] == 0).all()
    assert (got.log_sum_sq[mask] < 0).all()  # Σ p² < 1 unless the model is certain
    chosen, rejected = split_pairs(got)  # the rows travel with their statistic
    assert torch.equal(rejected.log_sum_sq, got.log_sum_sq[3:])
    assert chosen.detach().log_sum_sq is chosen.log_sum_sq


def test_token_logps_sum_sq_leaves_the_training_gradient_unchanged(tiny):
    model, tok = tiny
    b = collate(encode_pairs(PAIRS[:2], tok).items, tok.pad_token_id)
    grads = []
    for sum_sq in (False, True):
        model.zero_grad()
        t = token_logps(model, b, chunk_tokens=5, sum_sq=sum_sq)
        t.sum.sum().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    model.zero_grad()
    assert len(grads[0]) == len(grads[1]) > 0
    assert all(torch.equal(a, b) for a, b in zip(*grads))
