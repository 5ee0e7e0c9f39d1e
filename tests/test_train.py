import json
import math
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from prefstudy.columns import SchemaError
from prefstudy.config import ConfigError, TrainConfig, load_config
from prefstudy.paths import REPO
from prefstudy.records import RunError, load_run, load_table, read_meta, runs_summary
from prefstudy.train import batch_indices, train

TINY = REPO / "configs" / "tiny.toml"
PREFSTUDY = [sys.executable, "-m", "prefstudy.cli"]
LOSSES = ["loss_p", "loss_n", "nll_sum_p", "nll_sum_n", "gap", "margin", "pair_loss"]


def tiny_config(tmp_path, **overrides):
    """configs/tiny.toml with `overrides`, its run folder in tmp_path."""
    return load_config(TINY, output=str(tmp_path), **overrides)


def test_tiny_run_writes_every_pair_every_step(tmp_path):
    run = train(tiny_config(tmp_path, grad_stats=True), progress=False)
    rec = load_run(run)
    cfg = json.loads((run / "config.json").read_text())
    assert read_meta(run)["status"] == "completed"
    assert rec.groupby("step").size().tolist() == [cfg["batch_size"]] * cfg["steps"]
    assert not rec.duplicated(["step", "pair_id"]).any()
    assert (rec.gap - (rec.loss_n - rec.loss_p)).abs().max() < 1e-9
    assert (rec.loss_p * rec.len_p - rec.nll_sum_p).abs().max() < 1e-3
    # naive, norm=sum: pair_loss = nll_sum_p − nll_sum_n, margin = the summed gap
    assert (rec.pair_loss - (rec.nll_sum_p - rec.nll_sum_n)).abs().max() < 1e-3
    assert rec.grad_norm.gt(0).all() and rec.grad_cos.between(-1, 1).all()
    assert rec.grad_cos_with_self.between(-1, 1).all()
    assert set(load_table(run, "evals").step) == {0, 3, 6}
    assert len(load_table(run, "generations")) == 2 * 3
    assert load_table(run, "steps").gns.notna().any()
    meta = read_meta(run)
    assert {"torch", "transformers", "device", "git_commit"} <= set(meta["environment"])


def test_same_config_and_seed_give_identical_records(tmp_path):
    a = load_run(train(tiny_config(tmp_path / "a", objective="dpo", params={}), progress=False))
    b = load_run(train(tiny_config(tmp_path / "b", objective="dpo", params={}), progress=False))
    pd.testing.assert_frame_equal(a[["step", "pair_id", *LOSSES]], b[["step", "pair_id", *LOSSES]])
    c = load_run(train(tiny_config(tmp_path / "c", objective="dpo", params={}, seed=1), progress=False))
    assert a.pair_id.tolist() != c.pair_id.tolist()


def test_reference_is_the_starting_model(tmp_path):
    rec = load_run(train(tiny_config(tmp_path, objective="dpo", params={}), progress=False))
    first = rec[rec.step == 1]
    # before the first update the policy is the reference: DPO margin 0, loss log 2
    assert (first.nll_sum_p + first.ref_logp_p).abs().max() < 1e-4
    assert (first.pair_loss - math.log(2)).abs().max() < 1e-5


def test_batches_cover_every_pair_once_per_epoch():
    seen = [i for step in range(1, 6) for i in batch_indices(10, 4, seed=3, step=step)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert batch_indices(10, 4, 3, 2) == batch_indices(10, 4, 3, 2)


def test_diverging_run_stops_cleanly_and_keeps_records(tmp_path, monkeypatch):
    import prefstudy.step as step

    real = step.compute

    def blows_up_at_step_4(name, logps, **params):
        out = real(name, logps, **params)
        if blows_up_at_step_4.calls == 3:
            out = type(out)(out.loss * float("inf"), out.margin)
        blows_up_at_step_4.calls += 1
        return out

    blows_up_at_step_4.calls = 0
    monkeypatch.setattr(step, "compute", blows_up_at_step_4)
    cfg = tiny_config(tmp_path, n_heldout=0)  # no held-out forward passes: call 4 is step 4
    run = train(cfg, progress=False)
    meta = read_meta(run)
    assert meta["status"] == "diverged" and meta["diverged_step"] == 4
    assert "non-finite pair loss" in meta["reason"]
    rec = load_run(run)
    assert sorted(rec.step.unique()) == [1, 2, 3] and rec.status.eq("diverged").all()
    assert runs_summary(tmp_path).status.tolist() == ["diverged"]


def test_bad_config_fails_before_any_model_is_loaded(tmp_path, monkeypatch):
    import prefstudy.train as tr

    monkeypatch.setattr(tr, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ConfigError, match="unknown objective 'dpoo'.*allowed: .*dpo"):
        train(TrainConfig(objective="dpoo", output=str(tmp_path)))
    with pytest.raises(ConfigError, match="'beta' = -1.*> 0"):
        train(TrainConfig(objective="dpo", params={"beta": -1}, output=str(tmp_path)))
    with pytest.raises(ConfigError, match="'batch_size' = 0"):
        train(TrainConfig(batch_size=0, output=str(tmp_path)))
    bad = tmp_path / "bad.toml"
    bad.write_text('objective = "dpo"\nlearning_rate = 1\n')
    with pytest.raises(ConfigError, match="unknown field.*learning_rate"):
        load_config(bad)


def test_other_schema_version_is_refused(tmp_path):
    run = train(tiny_config(tmp_path, steps=1, n_heldout=0, n_neutral=0, n_probes=0), progress=False)
    meta = json.loads((run / "meta.json").read_text())
    (run / "meta.json").write_text(json.dumps({**meta, "schema_version": 99}))
    with pytest.raises(SchemaError, match=r"schema version 99; this prefstudy reads versions \[1, 2\]"):
        load_run(run)


def test_existing_run_is_not_overwritten(tmp_path):
    cfg = tiny_config(tmp_path, steps=1, n_heldout=0, n_neutral=0, n_probes=0)
    train(cfg, progress=False)
    with pytest.raises(RunError, match="the run exists; pass resume=True \\(--resume\\)"):
        train(cfg, progress=False)


def _cli(args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(PREFSTUDY + args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    args = ["train", "--config", str(TINY), "--steps", "14", "--quiet", "--run-id", "r"]
    proc = _cli(args + ["--output", str(tmp_path / "killed")])
    shards = tmp_path / "killed" / "r" / "records"
    deadline = time.time() + 120
    while len(list(shards.glob("*.parquet"))) < 5 and time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = load_table(tmp_path / "killed" / "r")  # readable after the kill
    assert 5 <= written.step.max() < 14
    assert read_meta(tmp_path / "killed" / "r")["status"] == "running"

    resumed = _cli(args + ["--output", str(tmp_path / "killed"), "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    full = _cli(args + ["--output", str(tmp_path / "full")])
    assert full.wait(timeout=300) == 0, full.stdout.read()

    a, b = load_run(tmp_path / "killed" / "r"), load_run(tmp_path / "full" / "r")
    assert read_meta(tmp_path / "killed" / "r")["status"] == "completed"
    assert not (tmp_path / "killed" / "r" / "checkpoint").exists()  # ended runs keep no state
    assert len(list((tmp_path / "killed" / "r" / "records").glob("*.parquet"))) == 1
    assert len(a) == len(b) == 14 * 4
    pd.testing.assert_frame_equal(a[["step", "pair_id", *LOSSES]], b[["step", "pair_id", *LOSSES]],
                                  atol=1e-5, rtol=1e-5)


def test_two_processes_record_each_pair_once_and_match_one_process(tmp_path):
    # device "auto", as the README's accelerate launch line has it: on a CPU-only machine the
    # two processes must still form one group
    script = ("import sys; from prefstudy.config import load_config; "
              "from prefstudy.train import train; "
              f"train(load_config({str(TINY)!r}, output=sys.argv[1], "
              "run_id='r', objective='dpo', params={}), progress=False)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
              "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", "29533"]
    two = subprocess.run(launch + [str(_write(tmp_path / "run.py", script)), str(tmp_path / "two")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tmp_path / "one")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = load_run(tmp_path / "two" / "r"), load_run(tmp_path / "one" / "r")
    assert json.loads((tmp_path / "two" / "r" / "config.json").read_text())["num_processes"] == 2
    merged = next((tmp_path / "two" / "r" / "records").glob("all-s*.parquet"))
    shards = json.loads(pq.read_schema(merged).metadata[b"prefstudy_merged"])
    assert {name[:3] for name in shards} == {"r00", "r01"}  # both processes wrote records
    assert not a.duplicated(["step", "pair_id"]).any() and len(a) == len(b)
    key = ["step", "pair_id"]
    a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    assert a[key].equals(b[key])
    pd.testing.assert_frame_equal(a[LOSSES], b[LOSSES], atol=1e-4, rtol=1e-4)


def _write(path, text):
    path.write_text(text)
    return path


def test_per_pair_gradients_match_one_backward_per_pair(tiny):
    """The hook-based statistics equal those from an explicit backward per pair."""
    from prefstudy.data import PreferencePair
    from prefstudy.encode import collate, encode_pairs
    from prefstudy.gradstats import PerPairGradients, noise_scale
    from prefstudy.logprobs import split_pairs, token_logps
    from prefstudy.objectives import PairLogps, compute

    model, tok = tiny
    pairs = [PreferencePair(f"Question {i}?", "Yes. " * (i + 1), f"No {i}!") for i in range(4)]
    batch = collate(encode_pairs(pairs, tok).items, tok.pad_token_id)
    layers = [m for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)]

    def losses():
        c, r = split_pairs(token_logps(model, batch))
        return compute("naive", PairLogps(c, r), norm="mean").loss

    explicit = []
    for i in range(4):
        model.zero_grad()
        losses()[i].backward()
        explicit.append(torch.cat([m.weight.grad.flatten() for m in layers]))
    explicit = torch.stack(explicit)
    mean = explicit.mean(0)

    stats = PerPairGradients(model)
    stats.capture()
    model.zero_grad()
    losses().mean().backward()
    out = stats.finish(4)
    stats.remove()
    model.zero_grad()
    assert torch.allclose(out.norm, explicit.norm(dim=1), rtol=1e-3)
    with_self = torch.nn.functional.cosine_similarity(explicit, mean[None], dim=1)
    assert torch.allclose(out.cos_with_self, with_self, atol=1e-3)
    others = explicit.sum(0, keepdim=True) - explicit  # leave-one-out: the other pairs' sum
    loo = torch.nn.functional.cosine_similarity(explicit, others, dim=1)
    assert torch.allclose(out.cos, loo, atol=1e-3)
    want = noise_scale(float(explicit.pow(2).sum()), float(mean.pow(2).sum()), 4)
    assert out.step_stats["gns"] == pytest.approx(want["gns"], rel=1e-3)
    # tr(Σ) by hand: the unbiased variance of the per-pair gradients, summed over coordinates
    assert want["trace_sigma"] == pytest.approx(float(explicit.var(0).sum()), rel=1e-4)


def test_start_evaluations_are_cached_and_equal_a_fresh_computation(tmp_path, monkeypatch):
    import prefstudy.evaluate as ev
    import prefstudy.step as step
    from prefstudy.inputs import prepare_inputs
    from prefstudy.models import load_model

    for module in (ev, step):  # empty caches
        monkeypatch.setattr(module, "cache_dir", lambda: tmp_path / "cache")
    first = train(tiny_config(tmp_path / "a", objective="dpo", params={}), progress=False)
    assert len(list((tmp_path / "cache" / "start").glob("*.parquet"))) == 3  # + greedy answers

    def never(*args, **kwargs):
        raise AssertionError("the untrained model was evaluated again")

    # a second run starts from the same model: its step-0 numbers come from the caches
    with monkeypatch.context() as m:
        m.setattr(ev, "perplexity", never)
        m.setattr(ev, "generate", never)
        m.setattr(step, "token_logps", never)  # held-out log-probs: the reference cache
        with pytest.raises(AssertionError, match="evaluated again"):
            train(tiny_config(tmp_path / "b", objective="sft", params={}, steps=1), progress=False)
    cfg = tiny_config(tmp_path / "c", objective="sft", params={}).resolved()
    second = train(cfg, progress=False)

    model, tok = load_model(cfg.model, device="cpu", seed=cfg.model_seed)
    inputs = prepare_inputs(cfg, tok)
    fresh_evals = ev.evaluate_pairs(model, inputs.heldout, cfg, None, tok.pad_token_id, "cpu",
                                    0).set_index("pair_id")
    fresh_ppl = ev.perplexity(model, tok, inputs.neutral, "cpu", 0).set_index("text_id")
    fresh_gen = ev.generate(model, tok, inputs.probes, "cpu", 0,
                            cfg.gen_max_new_tokens).set_index("probe_id")
    for run in (first, second):
        evals = load_table(run, "evals").query("step == 0").set_index("pair_id")
        assert sorted(evals.index) == sorted(fresh_evals.index)
        for column in ("nll_sum_p", "nll_sum_n", "len_p", "len_n"):
            assert (evals[column] - fresh_evals[column]).abs().max() < 1e-5
        ppl = load_table(run, "perplexity").query("step == 0").set_index("text_id")
        assert len(ppl) == len(fresh_ppl) == cfg.n_neutral
        assert (ppl.nll_sum - fresh_ppl.nll_sum).abs().max() < 1e-4
        gen = load_table(run, "generations").query("step == 0").set_index("probe_id")
        assert gen.text.sort_index().tolist() == fresh_gen.text.sort_index().tolist()
    sft = load_table(second, "evals").query("step == 0")
    assert (sft.pair_loss - sft.loss_p).abs().max() < 1e-5  # its own objective (token-mean NLL)


def test_pair_records_is_the_schema_in_order_and_derives_the_losses():
    from prefstudy.records import RECORD_COLUMNS, pair_records, run_label

    df = pair_records(["a", "b"], logp_p=torch.tensor([-3.0, -4.0]), logp_n=[-10.0, -2.0],
                      len_p=torch.tensor([2, 4]), len_n=[5, 1], run_id="r", objective="dpo",
                      norm="", seed=0, step=1, step_lr=1e-5)
    assert list(df.columns) == list(RECORD_COLUMNS)
    assert df.loss_p.tolist() == [1.5, 1.0] and df.gap.tolist() == [0.5, 1.0]
    assert df.len_p.dtype == "int64" and df.step.dtype == "int64" and df.margin.isna().all()
    bare = pair_records(["a"], pair_loss=[0.5], margin=None, step=3)
    assert "run_id" not in bare.columns and "step" in bare.columns  # run columns: where given
    assert bare.loss_p.isna().all() and bare.margin.dtype == "float64" and bare.margin.isna().all()
    for wrong in ({"label": "x"}, {"loss_p": [1.0]}):  # not a column, or one it derives
        with pytest.raises(TypeError, match="unknown column"):
            pair_records(["a"], **wrong)
    assert run_label("naive", "sum") == "naive-sum" and run_label("dpo", "") == "dpo"
    assert run_label("naive", "sum", "mine") == "mine"


def test_committed_compacted_runs_are_read_and_survive_truncation(tmp_path):
    import shutil

    from prefstudy.records import MERGED, RunWriter, default_runs_dir

    run = tmp_path / "run"
    shutil.copytree(default_runs_dir() / "dpo-lr0.001-s0", run)
    before = load_table(run)
    assert all(MERGED.fullmatch(p.name) for p in (run / "records").glob("*.parquet"))
    writer = RunWriter(run)
    writer.append("records", before[before.step == 1], step=1)  # an appended shard beside it
    assert writer.truncate(after_step=0) == 1  # only the appended shard is past step 0
    pd.testing.assert_frame_equal(load_table(run), before)


def test_write_atomic_leaves_the_old_file_or_the_new_one_and_no_temporary(tmp_path):
    from prefstudy.cache import cached, write_atomic

    path = tmp_path / "sub" / "x.txt"
    write_atomic(path, lambda tmp: tmp.write_text("old"))

    def fails(tmp):
        tmp.write_text("half")
        raise OSError("killed")

    with pytest.raises(OSError):
        write_atomic(path, fails)
    assert path.read_text() == "old" and sorted(p.name for p in path.parent.iterdir()) == ["x.txt"]
    calls = []
    for _ in range(2):
        value = cached(tmp_path / "c.json", lambda: calls.append(1) or {"v": 1},
                       save=lambda v, p: p.write_text(json.dumps(v)),
                       load=lambda p: json.loads(p.read_text()))
    assert value == {"v": 1} and calls == [1]


def test_perplexity_of_a_batch_equals_each_passage_alone(tiny):
    from prefstudy.evaluate import perplexity

    model, tok = tiny
    texts = pd.DataFrame({"text": ["A short one.", "A somewhat longer passage of plain text.",
                                   "Mid length text here."], "lang": ["en"] * 3})
    batched = perplexity(model, tok, texts, "cpu", 0, batch_size=3)
    alone = pd.concat([perplexity(model, tok, texts.iloc[[i]], "cpu", 0) for i in range(3)])
    assert batched.n_tokens.tolist() == [len(tok(t)["input_ids"]) - 1 for t in texts.text]
    assert batched.nll_sum.tolist() == pytest.approx(alone.nll_sum.tolist(), abs=1e-4)
