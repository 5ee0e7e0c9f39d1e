"""Per-pair records from other trainers: TRL's DPOTrainer and a plain Hugging Face Trainer.

The recorded log-probs are checked against prefstudy.logprobs run on the same token ids with the
weights each step started from (snapshotted by a callback), so the test checks the numbers, the
step alignment (step s = the weights before update s) and the pair ids at once.
"""

import copy
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from transformers import TrainerCallback, TrainingArguments

from prefstudy.data import PreferencePair
from prefstudy.encode import EncodedPair, collate, encode_pairs
from prefstudy.integrations import PerExample, PerExampleLossTrainer, as_records, trl_objective
from prefstudy.logprobs import split_pairs, token_logps
from prefstudy.models import load_model
from prefstudy.objectives import PairLogps
from prefstudy.records import RECORD_COLUMNS, SchemaError, check_records, load_run, read_meta
from prefstudy.scoring import score_pairs

PAIRS = [
    PreferencePair("What is 2 + 2?", " 2 + 2 = 4.", " It is 5, obviously, as everybody knows."),
    PreferencePair("Say hi.", " Hi there!", " No."),
    PreferencePair("Name a colour.", " Blue.", " I would rather not name anything at all today."),
    PreferencePair("我最近很郁闷，能告诉我该怎么办吗", " 我理解你现在的感受。", " 你先说说你为什么郁闷吧。"),
    PreferencePair("Translate 'cat' to French.", " Chat.", " Chien, I think, or maybe not."),
    PreferencePair("Is water wet?", " In everyday terms, yes.", " Ask someone else."),
    PreferencePair("Count to three.", " One, two, three.", " Three."),
    PreferencePair("Give me a fruit.", " An apple.", " A rock, which is technically not a fruit."),
]
IDS = {p.pair_id for p in PAIRS}


class WeightSnapshots(TrainerCallback):
    """The policy's weights at the start of every optimiser step, by 1-based step."""

    def __init__(self):
        self.weights = {}

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.weights[state.global_step + 1] = {k: v.detach().clone()
                                               for k, v in model.state_dict().items()}


def recompute(model, weights, items, pad_id) -> pd.DataFrame:
    """Summed log-probs of the chosen and rejected tokens under `weights`, by prefstudy."""
    model.load_state_dict(weights)
    with torch.no_grad():
        chosen, rejected = split_pairs(token_logps(model.eval(), collate(items, pad_id)))
    return pd.DataFrame({"logp_p": chosen.sum.tolist(), "logp_n": rejected.sum.tolist(),
                         "len_p": chosen.count.tolist(), "len_n": rejected.count.tolist()},
                        index=[e.pair_id for e in items])


# --------------------------------------------------------------------------- TRL


@pytest.fixture
def trl():
    return pytest.importorskip(
        "trl", reason="the TRL integration needs the trl extra: pip install -e '.[trl]'")


def dpo_args(tmp_path, **overrides):
    from trl import DPOConfig

    settings = {"output_dir": str(tmp_path / "out"), "max_steps": 3,
                "per_device_train_batch_size": 4, "learning_rate": 1e-3, "report_to": [],
                "use_cpu": True, "save_strategy": "no", "logging_strategy": "no", "bf16": False,
                "fp16": False, "gradient_checkpointing": False, "disable_tqdm": True}
    return DPOConfig(**{**settings, **overrides})


def dpo_trainer(tmp_path, args, *, with_ref=True, callbacks=()):
    from datasets import Dataset

    from prefstudy.integrations import PerPairDPOTrainer

    model, tok = load_model("tiny", device="cpu")
    original = copy.deepcopy(model)  # before TRL patches the policy's forward
    data = Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
                              for p in PAIRS])
    trainer = PerPairDPOTrainer(model=model, ref_model=copy.deepcopy(model) if with_ref else None,
                                args=args, train_dataset=data, processing_class=tok,
                                callbacks=list(callbacks), records_dir=tmp_path / "run")
    return trainer, original, tok


def trl_items(trainer) -> list[EncodedPair]:
    """The token ids TRL trains on, read from its prepared dataset."""
    return [EncodedPair(r["pair_id"], tuple(r["prompt_ids"]), tuple(r["chosen_ids"]),
                        tuple(r["rejected_ids"])) for r in trainer.train_dataset]


@pytest.mark.parametrize("batch, accumulate, steps, precompute", [
    (4, 1, 3, False),  # the plain case
    (2, 2, 2, False),  # gradient accumulation: two micro-batches make one recorded step
    (4, 1, 2, True),   # reference log-probs precomputed by TRL, no reference model
])
def test_dpo_records_match_logprobs_recomputed_independently(trl, tmp_path, batch, accumulate,
                                                             steps, precompute):
    snapshots = WeightSnapshots()
    args = dpo_args(tmp_path, max_steps=steps, per_device_train_batch_size=batch,
                    gradient_accumulation_steps=accumulate, precompute_ref_log_probs=precompute)
    trainer, original, tok = dpo_trainer(tmp_path, args, with_ref=not precompute,
                                         callbacks=[snapshots])
    trainer.train()

    df = load_run(tmp_path / "run")
    check_records(df)
    assert set(RECORD_COLUMNS) <= set(df.columns)
    assert read_meta(tmp_path / "run")["status"] == "completed"
    assert (df.objective == "dpo").all() and (df.seed == args.seed).all()

    # Exactly one row per pair per optimiser step; the first two steps are one epoch.
    assert len(df) == steps * 4 and sorted(df.step.unique()) == list(range(1, steps + 1))
    assert (df.groupby("step").pair_id.nunique() == 4).all()
    assert set(df.pair_id) <= IDS and set(df[df.step <= 2].pair_id) == IDS  # prefstudy's ids
    assert df[df.step == 1].lr.iloc[0] == pytest.approx(args.learning_rate)

    items = {e.pair_id: e for e in trl_items(trainer)}
    ref = recompute(original, snapshots.weights[1], list(items.values()), tok.pad_token_id)
    for step, rows in df.groupby("step"):
        new = recompute(original, snapshots.weights[step], [items[p] for p in rows.pair_id],
                        tok.pad_token_id)
        got = rows.set_index("pair_id")
        assert (got.len_p == new.len_p).all() and (got.len_n == new.len_n).all()
        assert (-got.nll_sum_p).tolist() == pytest.approx(new.logp_p.tolist(), abs=1e-4)
        assert (-got.nll_sum_n).tolist() == pytest.approx(new.logp_n.tolist(), abs=1e-4)
        # The reference is the starting model, at every step.
        assert got.ref_logp_p.tolist() == pytest.approx(ref.logp_p[got.index].tolist(), abs=1e-4)
        assert got.ref_logp_n.tolist() == pytest.approx(ref.logp_n[got.index].tolist(), abs=1e-4)

    # DPO from the recorded numbers: margin = β·h, pair_loss = −log σ(β·h).
    h = (-df.nll_sum_p - df.ref_logp_p) - (-df.nll_sum_n - df.ref_logp_n)
    margin = torch.tensor((args.beta * h).to_numpy())
    assert df.margin.tolist() == pytest.approx(margin.tolist(), abs=1e-5)
    assert df.pair_loss.tolist() == pytest.approx((-F.logsigmoid(margin)).tolist(), abs=1e-5)
    assert df[df.step > 1].margin.abs().max() > 1e-3  # training moved the policy
    assert (df.loss_p == df.nll_sum_p / df.len_p).all() and (df.gap == df.loss_n - df.loss_p).all()


@pytest.mark.slow  # five short trainings
@pytest.mark.parametrize("loss, expected", [
    ({"loss_type": "hinge"}, ("hinge", {"beta": 0.1})),
    ({"loss_type": "ipo", "beta": 0.5}, ("ipo", {"tau": 0.5, "norm": "mean"})),
    ({"loss_type": "robust", "label_smoothing": 0.2},
     ("robust", {"beta": 0.1, "label_smoothing": 0.2})),
    ({"loss_type": "sigmoid_norm"}, ("book_dpo", {"beta": 0.1, "w_chosen": 1.0,
                                                  "w_rejected": 1.0})),
    ({"ld_alpha": 0.5}, ("ld_dpo", {"beta": 0.1, "alpha": 0.5})),
])
def test_each_trl_loss_is_recorded_as_the_objective_that_reproduces_it(trl, tmp_path, loss,
                                                                       expected):
    args = dpo_args(tmp_path, max_steps=2, per_device_train_batch_size=2, **loss)
    assert trl_objective(args) == expected
    trainer, _, _ = dpo_trainer(tmp_path, args)
    # Every step checks that the recorded per-pair losses average to TRL's loss; step 2 has a
    # non-zero margin, where the objectives differ.
    trainer.train()
    df = load_run(tmp_path / "run")
    assert (df.objective == expected[0]).all() and len(df) == 4
    assert read_meta(tmp_path / "run")["status"] == "completed"


def test_a_loss_other_than_the_recorded_one_stops_training(trl, tmp_path):
    trainer, _, _ = dpo_trainer(tmp_path, dpo_args(tmp_path, loss_type="ipo", beta=0.1))
    trainer.beta = 0.5  # TRL now optimises IPO with τ = 0.5, the records would say τ = 0.1
    with pytest.raises(RuntimeError, match="computes another loss"):
        trainer.train()
    assert read_meta(tmp_path / "run")["status"] == "failed"
    with pytest.raises(FileExistsError, match="already holds a run"):
        trainer.train()


@pytest.mark.parametrize("loss, message", [
    ({"loss_type": "apo_zero"}, "'apo_zero' has no prefstudy counterpart"),
    ({"loss_type": ["sigmoid", "sft"]}, "combines several losses"),
    ({"use_weighting": True}, "WPO"),
    ({"f_divergence_type": "js_divergence"}, "f_divergence_type='js_divergence'"),
])
def test_configurations_without_a_counterpart_are_refused_before_loading(trl, tmp_path, loss,
                                                                          message):
    from prefstudy.integrations import PerPairDPOTrainer

    with pytest.raises(ValueError, match=message):
        PerPairDPOTrainer(model="never-loaded", args=dpo_args(tmp_path, **loss),
                          train_dataset=[{"prompt": "a", "chosen": "b", "rejected": "c"}])


def test_unsupported_trl_versions_fail_with_the_supported_range(trl, tmp_path, monkeypatch):
    from prefstudy.integrations import PerPairDPOTrainer, check_trl

    def build():
        PerPairDPOTrainer(model="never-loaded", args=dpo_args(tmp_path),
                          train_dataset=[{"prompt": "a", "chosen": "b", "rejected": "c"}])

    monkeypatch.setattr(trl, "__version__", "1.15.0")
    with pytest.raises(ImportError, match=r"supports TRL >=1\.16,<1\.17; trl 1\.15\.0"):
        build()
    monkeypatch.setattr(trl, "__version__", "1.17.0")
    with pytest.raises(ImportError, match=r"pip install 'trl>=1\.16,<1\.17'"):
        build()
    monkeypatch.setattr(trl, "__version__", "1.16.0")
    assert check_trl() == "1.16.0"


def test_without_trl_the_module_imports_and_the_trainer_names_the_extra():
    code = ("import sys; sys.modules['trl'] = None\n"  # as if TRL were not installed
            "from prefstudy.integrations import *\n"
            "try:\n    PerPairDPOTrainer(model='never-loaded')\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pip install -e '.[trl]'" in out.stdout


# --------------------------------------------------------------------------- plain Trainer


def test_plain_trainer_records_the_per_example_losses_it_is_given(tmp_path):
    model, tok = load_model("tiny", device="cpu")
    start = copy.deepcopy(model)
    encoded = encode_pairs(PAIRS, tok)
    data = [{"pair_id": e.pair_id, "prompt_ids": e.prompt_ids, "chosen_ids": e.chosen_ids,
             "rejected_ids": e.rejected_ids} for e in encoded.items]  # any map-style dataset

    def collator(rows):  # the pair ids were taken out by PairIdCollator
        b = collate([EncodedPair("", r["prompt_ids"], r["chosen_ids"], r["rejected_ids"])
                     for r in rows], tok.pad_token_id)
        return {"input_ids": b.input_ids, "attention_mask": b.attention_mask,
                "response_mask": b.response_mask}

    def naive_mean(model, inputs):
        chosen, rejected = split_pairs(token_logps(model, SimpleNamespace(**inputs)))
        return PerExample.from_objective("naive", PairLogps(chosen, rejected), norm="mean")

    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2,
                             per_device_train_batch_size=4, learning_rate=1e-3,
                             remove_unused_columns=False, report_to=[], use_cpu=True,
                             save_strategy="no", logging_strategy="no", disable_tqdm=True)
    trainer = PerExampleLossTrainer(model=model, args=args, train_dataset=data,
                                    data_collator=collator, per_example_loss=naive_mean,
                                    objective="naive", params={"norm": "mean"},
                                    records_dir=tmp_path / "run")
    trainer.train()

    df = load_run(tmp_path / "run")
    check_records(df)
    assert len(df) == 8 and set(df.pair_id) == IDS and (df.norm == "mean").all()
    assert df.pair_loss.tolist() == pytest.approx((df.loss_p - df.loss_n).tolist(), abs=1e-5)
    assert df.ref_logp_p.isna().all()
    assert df.margin.tolist() == pytest.approx(df.gap.tolist(), abs=1e-5)
    first = df[df.step == 1].set_index("pair_id")
    scored = score_pairs(start, tok, [p for p in PAIRS if p.pair_id in first.index])
    scored = scored.set_index("pair_id").loc[first.index]
    assert first.loss_p.tolist() == pytest.approx(scored.loss_p.tolist(), abs=1e-5)
    assert first.len_n.tolist() == scored.len_n.tolist()


def test_a_bare_loss_is_recorded_with_nan_for_what_was_not_given():
    rows = PerExample(torch.tensor([0.5, 1.5])).rows(["a", "b"], run_id="r", step=1)
    df = as_records(pd.DataFrame(rows), objective="custom", seed=0)
    assert df.pair_loss.tolist() == [0.5, 1.5] and df.loss_p.isna().all()
    with pytest.raises(ValueError, match=r"Shape: \(3,\)"):
        PerExample(torch.zeros(2)).rows(["a", "b", "c"])


# --------------------------------------------------------------------------- records from elsewhere


def test_as_records_completes_the_schema_from_sums_and_lengths():
    df = pd.DataFrame({"pair_id": ["a", "b"], "step": [1, 1], "len_p": [2, 4], "len_n": [5, 1],
                       "nll_sum_p": [3.0, 4.0], "nll_sum_n": [10.0, 2.0], "note": ["x", "y"]})
    out = as_records(df, run_id="external", objective="dpo", seed=0)
    assert list(out.columns) == [*RECORD_COLUMNS, "note", "label"]
    assert out.label.tolist() == ["dpo", "dpo"]
    assert out.loss_p.tolist() == [1.5, 1.0] and out.gap.tolist() == [0.5, 1.0]
    assert out.norm.tolist() == ["", ""] and math.isnan(out.margin[0])
    with pytest.raises(SchemaError, match="loss_p"):
        as_records(df.drop(columns=["len_p"]), run_id="external", objective="dpo", seed=0)
