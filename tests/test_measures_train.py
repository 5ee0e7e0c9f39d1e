"""The study's measures at every evaluation: the KL of the policy from the starting model, the
squeezing effect (the starting model's own greedy answer, scored by the policy), and training
pairs evaluated beside the held-out ones (evals `split`)."""

import copy
import math

import pandas as pd
import pytest
import torch

import prefstudy.evaluate as ev
import prefstudy.step as step_module
import prefstudy.train as tr
from prefstudy.config import ConfigError, load_config
from prefstudy.encode import collate_sequences
from prefstudy.inputs import prepare_inputs
from prefstudy.logprobs import kl_rows, response_hidden, token_logps, token_logps_kl
from prefstudy.models import load_model
from prefstudy.paths import REPO
from prefstudy.records import EVAL_COLUMNS, RunWriter, load_table, pair_records
from prefstudy.train import train

TINY = REPO / "configs" / "tiny.toml"
# evaluations at steps 0, 1 and 2; no perplexity or generations, which these tests do not read
QUICK = dict(steps=2, eval_every=1, n_train_eval=4, n_neutral=0, n_probes=0,
             checkpoint_every=100)


def tiny_config(tmp_path, **overrides):
    """configs/tiny.toml made quick (QUICK), run "r" in tmp_path, with `overrides`."""
    return load_config(TINY, output=str(tmp_path), **{"run_id": "r", **QUICK, **overrides})


def _own_caches(m, folder):
    for module in (ev, step_module):  # step-0 caches in `folder`, empty at first
        m.setattr(module, "cache_dir", lambda: folder)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """(run folder, resolved config, cache folder) of a tiny run with every measure, its caches
    made afresh."""
    root = tmp_path_factory.mktemp("measured")
    with pytest.MonkeyPatch.context() as m:
        _own_caches(m, root / "cache")
        cfg = tiny_config(root).resolved()
        run = train(cfg, progress=False)
    return run, cfg, root / "cache"


@pytest.fixture(scope="module")
def start(measured):
    """(starting model, tokenizer, inputs) of the `measured` run, loaded afresh."""
    _, cfg, _ = measured
    model, tok = load_model(cfg.model, device="cpu", seed=cfg.model_seed)
    return model.eval(), tok, prepare_inputs(cfg, tok)


# --------------------------------------------------------------------------- KL


def test_kl_of_rows_is_the_sum_over_the_vocabulary():
    g = torch.Generator().manual_seed(0)
    logits, start = torch.randn(5, 50, generator=g) * 3, torch.randn(5, 50, generator=g) * 3
    want = torch.nn.functional.kl_div(torch.log_softmax(start, -1), torch.log_softmax(logits, -1),
                                      log_target=True, reduction="none").sum(-1)
    p, p0 = torch.softmax(logits, -1), torch.softmax(start, -1)
    explicit = (p * (p.log() - p0.log())).sum(-1)
    assert torch.allclose(kl_rows(logits, start), want, atol=1e-5)
    assert torch.allclose(kl_rows(logits, start), explicit, atol=1e-5)
    assert (kl_rows(logits, start) > 0).all() and (kl_rows(logits, logits) == 0).all()


def test_token_kl_in_chunks_matches_full_logits_and_keeps_the_log_probs(tiny):
    start, tok = tiny
    policy = copy.deepcopy(start).eval()
    with torch.no_grad():
        policy.model.layers[-1].mlp.down_proj.weight.mul_(1.5)
    g = torch.Generator().manual_seed(1)
    seqs = [(torch.randint(len(tok), (n,), generator=g).tolist(),
             torch.randint(len(tok), (m,), generator=g).tolist()) for n, m in ((3, 5), (6, 2))]
    batch = collate_sequences(seqs, tok.pad_token_id)
    logps, kl = token_logps_kl(policy, start.eval(), batch, chunk_tokens=3, sum_sq=True)
    mask = batch.response_mask[:, 1:]
    with torch.no_grad():
        full = [m(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
                for m in (policy, start)]
    want = torch.nn.functional.kl_div(torch.log_softmax(full[1][mask], -1),
                                      torch.log_softmax(full[0][mask], -1), log_target=True,
                                      reduction="none").sum(-1)
    assert torch.allclose(kl[mask], want, atol=1e-5) and (kl[mask] > 0).all()
    assert (kl[~mask] == 0).all()
    kept = response_hidden(start, batch)[0]  # the starting model's, as an evaluation keeps it
    assert torch.equal(token_logps_kl(policy, start, batch, chunk_tokens=3, sum_sq=True,
                                      start_hidden=kept)[1], kl)
    alone = token_logps(policy, batch, sum_sq=True)
    assert torch.equal(logps.mask, alone.mask)
    assert torch.allclose(logps.logps, alone.logps, atol=1e-6)
    assert torch.allclose(logps.log_sum_sq, alone.log_sum_sq, atol=1e-6)


def test_kl_is_zero_at_step_0_and_positive_after_updates(measured):
    run, _, _ = measured
    evals = load_table(run, "evals")
    assert set(evals.step) == {0, 1, 2}
    first, later = evals[evals.step == 0], evals[evals.step > 0]
    assert (first.kl_sum_p == 0).all() and (first.kl_sum_n == 0).all()
    assert (later.kl_sum_p > 0).all() and (later.kl_sum_n > 0).all()
    assert set(later.split) == {"heldout", "train"}


def test_kl_is_zero_where_the_policy_never_moves(tmp_path, monkeypatch):
    monkeypatch.setattr(step_module.Optimisation, "update", lambda self: True)  # no update
    evals = load_table(train(tiny_config(tmp_path, steps=1), progress=False), "evals")
    assert set(evals.step) == {0, 1}
    assert (evals.kl_sum_p == 0).all() and (evals.kl_sum_n == 0).all()


def test_resume_measures_kl_from_the_starting_model_not_the_checkpoint(tmp_path, monkeypatch):
    cfg = dict(checkpoint_every=1, n_train_eval=0)
    real = tr.train_step

    def breaks_at_step_2(*args):  # after step 1's checkpoint and evaluation
        if args[6] == 2:
            raise RuntimeError("stopped")
        return real(*args)

    with monkeypatch.context() as m:
        m.setattr(tr, "train_step", breaks_at_step_2)
        with pytest.raises(RuntimeError, match="stopped"):
            train(tiny_config(tmp_path / "cut", **cfg), progress=False)
    resumed = train(tiny_config(tmp_path / "cut", **cfg), resume=True, progress=False)
    full = train(tiny_config(tmp_path / "full", **cfg), progress=False)
    a, b = (load_table(r, "evals").set_index(["step", "pair_id"]) for r in (resumed, full))
    assert a.index.equals(b.index) and set(a.index.get_level_values("step")) == {0, 1, 2}
    for column in ("kl_sum_p", "kl_sum_n", "greedy_logp_sum"):  # from the start, not step 1
        assert (a[column] - b[column]).abs().max() < 1e-4, column
    assert (a.loc[2].kl_sum_p > 0).all()


# --------------------------------------------------------------------------- the squeezing effect


def test_greedy_answer_at_step_0_is_scored_as_computed_directly(measured, start):
    run, cfg, cache = measured
    model, tok, inputs = start
    (entry,) = cache.glob("start/greedy-*.parquet")
    greedy = pd.read_parquet(entry).set_index("pair_id")
    evals = load_table(run, "evals").query("split == 'heldout'")
    first = evals[evals.step == 0].set_index("pair_id")
    assert sorted(first.index) == sorted(e.pair_id for e in inputs.heldout.items)
    for e in inputs.heldout.items:
        answer = [int(t) for t in greedy.answer_ids[e.pair_id]]
        assert 0 < len(answer) <= cfg.gen_max_new_tokens
        batch = collate_sequences([(e.prompt_ids, answer)], tok.pad_token_id)
        with torch.no_grad():
            direct = float(token_logps(model, batch).sum[0])
        assert first.greedy_logp_sum[e.pair_id] == pytest.approx(direct, abs=1e-4)
        assert first.len_g[e.pair_id] == len(answer)
    assert (evals.greedy_logp_sum < 0).all()
    per_pair = evals.groupby("pair_id")
    assert (per_pair.len_g.nunique() == 1).all()  # the same answer at every step
    assert (per_pair.greedy_logp_sum.nunique() == 3).all()  # scored by a moving policy
    fresh = ev.greedy_answers(model, tok, inputs.heldout, "cpu", cfg.gen_max_new_tokens)
    assert [list(a) for a in fresh.answer_ids] == [list(greedy.answer_ids[p])
                                                   for p in fresh.pair_id]


def test_a_second_run_reuses_the_greedy_answers_at_every_step(measured, tmp_path, monkeypatch):
    _, _, cache = measured
    (entry,) = cache.glob("start/greedy-*.parquet")
    cached = pd.read_parquet(entry)
    _own_caches(monkeypatch, cache)
    scored = []
    real = ev.answer_logps

    def never(*args, **kwargs):
        raise AssertionError("the greedy answers were generated again")

    def spy(model, prompts, answers, *args, **kwargs):
        scored.append([[int(t) for t in a] for a in answers])
        return real(model, prompts, answers, *args, **kwargs)

    monkeypatch.setattr(ev, "greedy_answers", never)
    monkeypatch.setattr(ev, "answer_logps", spy)
    train(tiny_config(tmp_path, objective="sft", params={}), progress=False)
    assert len(scored) == 2  # steps 1 and 2; step 0's value is the cache's
    assert all(s == [[int(t) for t in a] for a in cached.answer_ids] for s in scored)
    assert list(cache.glob("start/greedy-*.parquet")) == [entry]


def test_an_empty_answer_has_no_log_prob(tiny):
    model, tok = tiny
    out = ev.answer_logps(model, [[1, 2, 3], [4, 5]], [[], [6]], tok.pad_token_id, "cpu")
    assert math.isnan(out[0]) and out[1] < 0


# --------------------------------------------------------------------------- trained pairs


def test_training_pairs_are_evaluated_at_every_step_with_their_split(measured, start):
    run, cfg, _ = measured
    model, tok, inputs = start
    evals = load_table(run, "evals")
    assert list(evals.columns[-len(EVAL_COLUMNS):]) == list(EVAL_COLUMNS)
    trained = evals[evals.split == "train"]
    held = evals[evals.split == "heldout"]
    assert set(evals.split) == {"train", "heldout"}
    assert trained.groupby("step").size().to_dict() == {0: 4, 1: 4, 2: 4}
    assert held.groupby("step").size().to_dict() == {s: cfg.n_heldout for s in (0, 1, 2)}
    train_ids = {e.pair_id for e in inputs.train.items}
    assert set(trained.pair_id) <= train_ids and not set(held.pair_id) & train_ids
    assert set(trained.pair_id) == {e.pair_id for e in inputs.train_eval.items}
    assert trained.batch.str.startswith("e").all() and trained.batch.str.contains("-t").all()
    assert trained.greedy_logp_sum.isna().all() and (trained.len_g == 0).all()
    # step 0 as the starting model scores them (from the reference cache)
    fresh = ev.evaluate_pairs(model, inputs.train_eval, cfg, None, tok.pad_token_id, "cpu",
                              0).set_index("pair_id")
    first = trained[trained.step == 0].set_index("pair_id")
    assert (first.nll_sum_p - fresh.nll_sum_p[first.index]).abs().max() < 1e-4
    # the same sample in every run of a study, whatever its seed or objective
    other = prepare_inputs(tiny_config(run.parent, seed=1, objective="dpo", params={}), tok)
    assert [e.pair_id for e in other.train_eval.items] == \
        [e.pair_id for e in inputs.train_eval.items]


def test_old_evals_without_the_new_columns_read_as_held_out(tmp_path):
    writer = RunWriter(tmp_path / "old")
    writer.start({"run_id": "old", "objective": "dpo", "seed": 0, "lr": 1e-3})
    rows = pair_records(["h1", "h2"], logp_p=[-1.0, -2.0], logp_n=[-2.0, -3.0], len_p=[2, 2],
                        len_n=[3, 3], run_id="old", objective="dpo", seed=0, step=0,
                        batch="e0-0")
    writer.append("evals", rows, step=0)
    writer.finish("completed")
    evals = load_table(tmp_path / "old", "evals")
    assert (evals.split == "heldout").all()
    for column in ("kl_sum_p", "kl_sum_n", "greedy_logp_sum", "len_g"):
        assert evals[column].isna().all(), column


def test_n_train_eval_is_a_count(tmp_path):
    with pytest.raises(ConfigError, match="n_train_eval"):
        tiny_config(tmp_path, n_train_eval=-1)
    with pytest.raises(ConfigError, match="n_train_eval"):
        tiny_config(tmp_path, n_train_eval=1.5)
    assert tiny_config(tmp_path, n_train_eval=0).n_train_eval == 0


def test_no_training_pairs_are_evaluated_by_default(tmp_path, tokenizer):
    cfg = tiny_config(tmp_path, n_train_eval=0)
    assert prepare_inputs(cfg, tokenizer).train_eval is None
