"""The frozen-prefix cache gives what a full forward gives, values and gradients."""

import copy

import pytest
import torch

from prefstudy import frozen
from prefstudy.data import PreferencePair
from prefstudy.encode import collate, encode_pairs
from prefstudy.logprobs import token_logps
from prefstudy.models import set_trainable, tiny_model


@pytest.fixture
def model_and_batches(tokenizer):
    model = tiny_model(len(tokenizer), seed=3)
    model.config.num_hidden_layers = 2
    set_trainable(model, 1)
    pairs = [PreferencePair(f"q{i}", "Question number %d?" % i, "A short answer." * (i + 1),
                            "No." * (3 - i % 3) + " and more words here" * i) for i in range(5)]
    enc = encode_pairs(pairs, tokenizer, max_length=64, max_prompt_length=16)
    pad = tokenizer.pad_token_id
    return model, [collate(enc.items[:3], pad), collate(enc.items[2:], pad)]


def _grads(model):
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_cached_prefix_matches_a_full_forward(model_and_batches):
    model, batches = model_and_batches
    twin = copy.deepcopy(model)
    prefix = frozen.attach(twin, 1)
    assert prefix is not None and frozen.attached(model) is None
    sizes = []
    for batch in batches:  # the second batch shares a pair with the first: a cache hit
        model.zero_grad(), twin.zero_grad()
        full, cached = token_logps(model, batch), token_logps(twin, batch)
        torch.testing.assert_close(cached.logps, full.logps, atol=1e-5, rtol=1e-5)
        assert torch.equal(cached.mask, full.mask)
        full.sum.sum().backward()
        cached.sum.sum().backward()
        for a, b in zip(_grads(twin), _grads(model)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        sizes.append(len(prefix.store))
    assert sizes == [6, 10]  # 3 pairs × 2 sides, then only the 2 new pairs' 4 sequences
    assert len(twin.model.layers) == 2 and not isinstance(twin.model.norm, torch.nn.Identity)


def test_nothing_frozen_or_an_unknown_layout_attaches_nothing(model_and_batches):
    model, _ = model_and_batches
    assert frozen.attach(model, 0) is None
    assert frozen.attach(torch.nn.Linear(2, 2), 1) is None


def test_runs_with_the_same_starting_model_share_one_store(model_and_batches):
    model, batches = model_and_batches
    a = frozen.attach(copy.deepcopy(model), 1, shared=True)
    b = frozen.attach(copy.deepcopy(model), 1, shared=True)
    assert a.store is b.store and frozen.attach(copy.deepcopy(model), 1).store is not a.store


def test_a_model_with_other_weights_never_reuses_the_store(model_and_batches, tokenizer):
    """The store is keyed on the model's content, not its name: a model loaded from the same
    name with other weights behind it, another seed or another dtype gets a store of its own."""
    model, batches = model_and_batches
    first = copy.deepcopy(model)
    a = frozen.attach(first, 1, shared=True)
    token_logps(first, batches[0])
    assert len(a.store) == 6
    changed = copy.deepcopy(model)  # the same name, a frozen block's weights changed
    with torch.no_grad():
        changed.model.layers[0].mlp.up_proj.weight.mul_(1.5)
    b = frozen.attach(changed, 1, shared=True)
    assert b.store is not a.store and not b.store
    plain = copy.deepcopy(changed)  # not attached: a full forward
    torch.testing.assert_close(token_logps(changed, batches[0]).logps,
                               token_logps(plain, batches[0]).logps, atol=1e-5, rtol=1e-5)
    other_seed = tiny_model(len(tokenizer), seed=4)
    assert frozen.attach(other_seed, 1, shared=True).store is not b.store
    wider = copy.deepcopy(model).to(torch.float64)
    assert frozen.attach(wider, 1, shared=True).store is not frozen.attached(other_seed).store
