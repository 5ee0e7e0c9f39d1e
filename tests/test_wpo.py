"""WPO weighting in training (TrainConfig.use_weighting): refused where it cannot apply, and a
tiny run's recorded pair losses equal the unweighted loss times weights computed by hand."""

import math

import numpy as np
import pytest
import torch

from prefstudy.config import ConfigError, TrainConfig, check, load_config
from prefstudy.data import PreferencePair
from prefstudy.encode import collate, encode_pairs
from prefstudy.objectives import OBJECTIVES
from prefstudy.paths import in_repo
from prefstudy.records import load_run, load_table, read_meta
from prefstudy.step import forward
from prefstudy.train import train

TINY = in_repo("configs", "tiny.toml")

BATCH_LEVEL = [name for name, o in OBJECTIVES.items() if o.batch_level]


@pytest.mark.parametrize("name", BATCH_LEVEL)
def test_use_weighting_is_refused_with_a_batch_level_objective(name):
    check(TrainConfig(objective=name))  # fine unweighted
    with pytest.raises(ConfigError, match=f"'use_weighting' = true with objective '{name}'"):
        check(TrainConfig(objective=name, use_weighting=True))


def test_use_weighting_must_be_a_bool():
    assert BATCH_LEVEL  # the registry marks some objectives batch-level
    check(TrainConfig(objective="dpo", use_weighting=True))
    with pytest.raises(ConfigError, match="'use_weighting' = 'yes': must be true or false"):
        check(TrainConfig(use_weighting="yes"))


def _by_hand(model, items, pad_id):
    """(per-pair WPO weight w(y_c)·w(y_r), chosen and rejected summed log-probs) of `items` from
    a float64 full softmax of `model`, without prefstudy.logprobs or prefstudy.objectives."""
    b = collate(items, pad_id)
    with torch.no_grad():
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1]
    probs = torch.softmax(logits.double(), -1)
    mask = b.response_mask[:, 1:]
    picked = probs.gather(-1, b.input_ids[:, 1:, None]).squeeze(-1).log() * mask
    log_sum_sq = probs.pow(2).sum(-1).log() * mask
    w = torch.exp((picked - log_sum_sq).sum(-1) / mask.sum(-1))  # Zhou et al. 2024, Eq. 2
    n = len(items)
    return w[:n] * w[n:], picked.sum(-1)[:n], picked.sum(-1)[n:]


def test_weighted_run_records_the_objective_loss_times_wpo_weights(tmp_path):
    from prefstudy.inputs import prepare_inputs
    from prefstudy.models import load_model

    cfg = load_config(TINY, output=str(tmp_path), objective="dpo", params={}, steps=2,
                      use_weighting=True).resolved()
    run = train(cfg, progress=False)
    assert read_meta(run)["status"] == "completed"
    model, tok = load_model(cfg.model, device="cpu", seed=cfg.model_seed)
    model.double()
    inputs = prepare_inputs(cfg, tok)
    # step 1 and the step-0 held-out evaluation see the starting model, which is the
    # reference: DPO's unweighted loss is log 2 for every pair
    for table, items in (("records", inputs.train.items), ("evals", inputs.heldout.items)):
        rec = (load_run(run) if table == "records" else load_table(run, table))
        rec = rec[rec.step == (1 if table == "records" else 0)]
        by_id = {e.pair_id: e for e in items}
        weight, logp_c, logp_r = _by_hand(model, [by_id[p] for p in rec.pair_id],
                                          tok.pad_token_id)
        assert np.abs(rec.nll_sum_p.to_numpy() + logp_c.numpy()).max() < 1e-3
        assert np.abs(rec.nll_sum_n.to_numpy() + logp_r.numpy()).max() < 1e-3
        want = math.log(2) * weight.numpy()
        assert np.abs(want / math.log(2) - 1).max() > 1e-2  # the weights are not a no-op here
        assert rec.pair_loss.to_numpy() == pytest.approx(want, rel=1e-4), table
        assert rec.margin.abs().max() < 1e-4  # the margin is the objective's, unweighted
    later = load_run(run).query("step == 2")
    assert later.pair_loss.notna().all() and (later.margin.abs() > 0).any()  # it trained


def test_forward_weights_the_loss_and_refuses_start_log_probs(tiny):
    model, tok = tiny
    enc = encode_pairs([PreferencePair("What is 2 + 2?", "2 + 2 = 4.", "It is 5."),
                        PreferencePair("Say hi", "Hi there!", "No.")], tok)
    batch = collate(enc.items, tok.pad_token_id)
    cfg = TrainConfig(objective="simpo", use_weighting=True).resolved()
    fw = forward(model, batch, cfg, None)
    plain = forward(model, batch, TrainConfig(objective="simpo").resolved(), None)
    assert fw.weight.shape == (2,) and not fw.weight.requires_grad
    torch.testing.assert_close(fw.loss, plain.loss * fw.weight)
    start = {e.pair_id: (torch.zeros(e.len_chosen), torch.zeros(e.len_rejected))
             for e in enc.items}
    with pytest.raises(ValueError, match="no Σ_v p_v²"):
        forward(model, batch, cfg, None, start=start)
