"""Per-pair gradient statistics on cases whose answer is known, and the audit at the starting
weights against one explicit backward pass per pair, in float64 on the tiny model."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from prefstudy import gradaudit
from prefstudy.data import PreferencePair
from prefstudy.encode import collate, encode_pairs
from prefstudy.gradaudit import DEFAULT_GRADIENT_OBJECTIVES, audit_batches, gradient_audit
from prefstudy.gradstats import PerPairGradients, leave_one_out_cosine, with_self_orthogonal
from prefstudy.logprobs import split_pairs, token_logps
from prefstudy.objectives import PairLogps, compute, get_objective
from prefstudy.records import run_label

# ---------------------------------------------------------------------------------------------
# The leave-one-out cosine and its baselines, from the formula and from the training hooks


def _statistics(g: torch.Tensor):
    """(leave-one-out cosine, with-self cosine, with-self orthogonal baseline) of rows g_i."""
    n = g.shape[0]
    mean = g.mean(0)
    dot, sq, mean_sq = g @ mean, g.pow(2).sum(1), mean.pow(2).sum()
    return (leave_one_out_cosine(dot, sq, mean_sq, n), dot / (sq * mean_sq).sqrt(),
            with_self_orthogonal(sq))


def test_orthogonal_equal_norm_gradients_give_zero_and_the_biased_one_over_root_b():
    loo, with_self, orthogonal = _statistics(3.0 * torch.eye(4, dtype=torch.float64))
    assert torch.allclose(loo, torch.zeros(4, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(with_self, torch.full((4,), 0.5, dtype=torch.float64))  # 1/√4
    assert torch.allclose(orthogonal, torch.full((4,), 0.5, dtype=torch.float64))


def test_identical_gradients_give_one_either_way():
    loo, with_self, _ = _statistics(torch.tensor([[1.0, -2.0, 0.5]] * 3, dtype=torch.float64))
    assert loo.tolist() == pytest.approx([1.0] * 3) and with_self.tolist() == pytest.approx([1.0] * 3)


def test_a_batch_worked_by_hand():
    # g1 = (1, 0), g2 = (0, 1), g3 = (1, 1). Others of g1: (1, 2), cos = 1/√5; of g2: (2, 1),
    # 1/√5; of g3: (1, 1), 1. Mean (2/3, 2/3): cos(g1, mean) = 1/√2, cos(g3, mean) = 1.
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    loo, with_self, orthogonal = _statistics(g)
    assert loo.tolist() == pytest.approx([1 / math.sqrt(5), 1 / math.sqrt(5), 1.0])
    assert with_self.tolist() == pytest.approx([1 / math.sqrt(2), 1 / math.sqrt(2), 1.0])
    assert orthogonal.tolist() == pytest.approx([0.5, 0.5, math.sqrt(2) / 2])  # |g_i| / √4


def test_undefined_cosines_are_nan_and_opposite_gradients_minus_one():
    loo, _, _ = _statistics(torch.tensor([[1.0, 2.0]], dtype=torch.float64))
    assert math.isnan(loo.item())  # one pair: no others
    loo, _, _ = _statistics(torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=torch.float64))
    assert loo.tolist() == pytest.approx([-1.0, -1.0])  # the mean is 0, each is against the other
    loo, _, _ = _statistics(torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64))
    assert math.isnan(loo[1].item()) and math.isnan(loo[0].item())  # a zero gradient, zero others


class _OneLinear(torch.nn.Module):
    """y = W a summed per row: row k's gradient of W is its input a_k, exactly."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 1, bias=False).double()

    def forward(self, a):  # a: (rows, 1, 3)
        return self.proj(a).sum((1, 2))


@pytest.mark.parametrize("chosen, want_loo, want_with_self", [
    ([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [0, 0, 0], [1 / math.sqrt(3)] * 3),
    ([[1, 2, 0]] * 3, [1, 1, 1], [1, 1, 1]),
    ([[1, 0, 0], [0, 1, 0], [1, 1, 0]], [1 / math.sqrt(5), 1 / math.sqrt(5), 1],
     [1 / math.sqrt(2), 1 / math.sqrt(2), 1]),
])
def test_training_hooks_record_the_leave_one_out_cosine(chosen, want_loo, want_with_self):
    """The records' grad_cos (leave-one-out) and grad_cos_with_self from PerPairGradients.finish,
    on a layer whose pair gradients are the chosen inputs (rejected rows are 0)."""
    model = _OneLinear()
    a = torch.tensor(chosen + [[0, 0, 0]] * 3, dtype=torch.float64)[:, None, :]
    grads = PerPairGradients(model)
    grads.capture()
    rows = model(a)
    (rows[:3] + rows[3:]).mean().backward()
    out = grads.finish(3)
    grads.remove()
    assert out.cos.tolist() == pytest.approx(want_loo, abs=1e-6)
    assert out.cos_with_self.tolist() == pytest.approx(want_with_self, abs=1e-6)
    assert out.norm.tolist() == pytest.approx(torch.tensor(chosen).double().norm(dim=1).tolist())


# ---------------------------------------------------------------------------------------------
# Old runs: grad_cos was the with-self cosine; they load with the leave-one-out one derived


def test_runs_written_with_the_biased_cosine_load_with_the_leave_one_out_one(tmp_path):
    from prefstudy.config import load_config
    from prefstudy.records import load_run
    from prefstudy.train import train
    from tests.test_train import TINY

    cfg = load_config(TINY, output=str(tmp_path), grad_stats=True, steps=3, heldout=None,
                      neutral_text=None, probes=None)
    run = train(cfg, progress=False)
    new = load_run(run)
    old_names = {"grad_cos_with_self": "grad_cos", "step_lr": "lr"}
    for shard in (run / "records").glob("*.parquet"):  # rewrite it as a version-1 run had it
        table = pq.read_table(shard).drop(["grad_cos"])
        old = table.rename_columns([old_names.get(c, c) for c in table.column_names])
        metadata = {**table.schema.metadata, b"prefstudy_schema": b"1"}
        pq.write_table(old.replace_schema_metadata(metadata), shard)
    assert "grad_cos_with_self" not in pq.read_table(shard).column_names
    read = load_run(run)
    assert read.step_lr.notna().all() and "lr" not in read.columns
    pd.testing.assert_series_equal(read.grad_cos_with_self, new.grad_cos_with_self)
    assert read.grad_cos.notna().all()
    assert (read.grad_cos - new.grad_cos).abs().max() < 1e-4


# ---------------------------------------------------------------------------------------------
# The audit at the starting weights, against one explicit backward per pair (float64)


AUDITED = [*DEFAULT_GRADIENT_OBJECTIVES, ("dpo", {}), ("ipo", {})]


@pytest.fixture(scope="module")
def tiny64(tiny):
    model, tok = tiny
    model = copy.deepcopy(model).double()
    pairs = [PreferencePair(f"Question {i}: what is {i} plus {i}?", "It is. " * (i + 2),
                            f"No idea {i}, sorry." + " Really." * (4 - i)) for i in range(5)]
    return model, tok, encode_pairs(pairs, tok, max_length=64, max_prompt_length=24)


@pytest.fixture(scope="module")
def audit(tiny64):
    model, tok, encoded = tiny64
    return gradient_audit(model, tok, encoded, objectives=AUDITED, batch_size=3, seed=1)


def _linear_weights(model, top_blocks=None):
    """What the hooks cover: the blocks' linear layers (the output head is not called as a
    module, so it is left out), or those of the top blocks only."""
    blocks = list(model.model.layers)[-top_blocks:] if top_blocks else model.model.layers
    return [p for block in blocks for m in block.modules() if isinstance(m, torch.nn.Linear)
            for p in (m.weight, m.bias) if p is not None and p.requires_grad]


def _explicit(model, tok, items, name, params, top_blocks=None):
    """Per pair of one batch, by one backward each: (objective gradients, ∇ log π(chosen),
    ∇ log π(rejected)), flattened over the linear layers' weights. Shape: (B, P) each."""
    weights = _linear_weights(model, top_blocks)
    batch = collate(items, tok.pad_token_id)
    chosen, rejected = split_pairs(token_logps(model, batch))
    refs = (chosen.detach(), rejected.detach()) if get_objective(name).needs_reference else ()
    loss = compute(name, PairLogps(chosen, rejected, *refs), **params).loss

    def gradient(value):
        return torch.cat([g.flatten() for g in torch.autograd.grad(value, weights,
                                                                   retain_graph=True)])

    return [torch.stack([gradient(v[i]) for i in range(len(items))])
            for v in (loss, chosen.sum, rejected.sum)]


def _ches(model, tok, item):
    """CHES and ln-CHES of one pair from its own unpadded forward passes, positions by index:
    the hidden states at len(prompt) − 1 ... len(prompt) + len(response) − 2."""
    sums = []
    for response in (item.chosen_ids, item.rejected_ids):
        ids = torch.tensor([item.prompt_ids + response])
        hidden = model.base_model(input_ids=ids).last_hidden_state[0].detach()
        start = len(item.prompt_ids) - 1
        sums.append(hidden[start:start + len(response)].sum(0))
    inner, own = float(sums[0] @ sums[1]), float(sums[0] @ sums[0])
    n_p, n_n = item.len_chosen, item.len_rejected
    return inner - own, inner / (n_p * n_n) - own / n_p ** 2


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def test_audit_has_one_row_per_objective_and_pair_and_every_column(audit, tiny64):
    assert list(audit.columns) == list(gradaudit.GRADIENT_AUDIT_COLUMNS)
    assert len(audit) == len(AUDITED) * len(tiny64[2])
    assert not audit.duplicated(["label", "pair_id"]).any()
    assert set(audit.label) == {"naive-sum", "naive-mean", "sft", "simpo", "book_dpo",
                                "unlikelihood", "dpo", "ipo"}
    assert audit.groupby("batch").pair_id.nunique().sort_index().tolist() == [3, 2]
    assert (audit.grad_cos_orthogonal == 0).all()
    start = audit[audit.label == "dpo"]
    assert start.pair_loss.tolist() == pytest.approx([math.log(2)] * len(start))  # policy = ref


@pytest.mark.parametrize("item", AUDITED, ids=lambda item: item[0] + str(item[1]))
def test_audit_equals_one_backward_per_pair_in_float64(audit, tiny64, item):
    model, tok, encoded = tiny64
    name, params = item
    rows = audit[audit.label == run_label(name, params.get("norm", ""))]
    assert len(rows) == len(encoded)
    by_id = {e.pair_id: e for e in encoded.items}
    for _, batch in rows.groupby("batch", sort=False):
        items = [by_id[p] for p in batch.pair_id]
        g, g_p, g_n = _explicit(model, tok, items, name, params)
        others = g.sum(0, keepdim=True) - g
        want = {"grad_norm": g.norm(dim=1), "grad_cos_loo": _cos(g, others),
                "grad_cos_with_self": _cos(g, g.mean(0, keepdim=True)),
                "grad_cos_with_self_orthogonal": g.norm(dim=1) / g.norm(),
                "grad_norm_p": g_p.norm(dim=1), "grad_norm_n": g_n.norm(dim=1),
                "entanglement": _cos(g_p, g_n)}
        for column, value in want.items():  # float64 but for Llama's RMSNorm (float32 inside)
            assert batch[column].tolist() == pytest.approx(value.tolist(), rel=1e-6, abs=1e-7), \
                column
        ches = [_ches(model, tok, e) for e in items]
        assert batch.ches.tolist() == pytest.approx([c for c, _ in ches], rel=1e-6)
        assert batch.ln_ches.tolist() == pytest.approx([c for _, c in ches], rel=1e-6)


def test_audit_of_the_top_block_only_and_the_flags_are_put_back(tiny64):
    model, tok, encoded = tiny64
    flags = [p.requires_grad for p in model.parameters()]
    out = gradient_audit(model, tok, encoded, objectives=["unlikelihood"], batch_size=5,
                         trainable_blocks=1)
    assert [p.requires_grad for p in model.parameters()] == flags
    g, g_p, g_n = _explicit(model, tok, list(encoded.items), "unlikelihood", {}, top_blocks=1)
    by_id = out.set_index("pair_id").loc[[e.pair_id for e in encoded.items]]
    assert by_id.grad_norm.tolist() == pytest.approx(g.norm(dim=1).tolist(), rel=1e-6)
    assert by_id.entanglement.tolist() == pytest.approx(_cos(g_p, g_n).tolist(), rel=1e-6)
    with pytest.raises(ValueError, match="trainable_blocks=3"):
        gradient_audit(model, tok, encoded, trainable_blocks=3)


def test_dpo_at_the_start_is_naive_sum_scaled_by_half_beta(audit):
    dpo = audit[audit.label == "dpo"].set_index("pair_id")
    naive = audit[audit.label == "naive-sum"].set_index("pair_id").loc[dpo.index]
    ipo = audit[audit.label == "ipo"].set_index("pair_id").loc[dpo.index]
    for column in ("grad_cos_loo", "grad_cos_with_self", "grad_cos_with_self_orthogonal"):
        assert dpo[column].tolist() == pytest.approx(naive[column].tolist(), abs=1e-12)
        assert ipo[column].tolist() == pytest.approx(naive[column].tolist(), abs=1e-12)
    beta = get_objective("dpo").params["beta"].default
    assert (dpo.grad_norm / naive.grad_norm).tolist() == pytest.approx([beta / 2] * len(dpo))
    # IPO, (h − 1/(2τ))² on summed log-ratios: f′(0) = −1/τ at every pair
    tau = get_objective("ipo").params["tau"].default
    assert (ipo.grad_norm / naive.grad_norm).tolist() == pytest.approx([1 / tau] * len(ipo))


def test_entanglement_and_ches_do_not_depend_on_the_objective(audit):
    wide = audit.pivot(index="pair_id", columns="label", values="entanglement")
    assert wide.std(axis=1).max() < 1e-12
    assert audit.groupby("pair_id").ches.nunique().eq(1).all()


def test_audit_batches_leave_no_pair_alone_and_follow_the_seed():
    batches = audit_batches(9, 4, seed=0)
    assert [len(b) for b in batches] == [4, 5]  # a last batch of one joins the one before
    assert sorted(i for b in batches for i in b) == list(range(9))
    assert audit_batches(9, 4, seed=0) == batches != audit_batches(9, 4, seed=1)
    with pytest.raises(ValueError, match="≥ 2 pairs"):
        audit_batches(9, 1, seed=0)


def test_audit_takes_pairs_and_refuses_truncation_of_encoded_ones(tiny):
    model, tok = tiny
    pairs = [PreferencePair(f"Q{i}?", "Yes indeed. " * (i + 1), f"No {i}.") for i in range(4)]
    before = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    out = gradient_audit(model, tok, pairs, objectives=["sft"], max_length=32)
    assert len(out) == 4 and out.grad_cos_loo.between(-1, 1).all()
    after = [p.grad for p in model.parameters()]
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(before, after))
    with pytest.raises(TypeError, match="already encoded"):
        gradient_audit(model, tok, encode_pairs(pairs, tok), max_length=32)
