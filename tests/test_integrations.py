"""Per-pair records from other trainers: TRL's DPOTrainer and a plain Hugging Face Trainer.

The recorded log-probs are checked against prefstudy.logprobs run on the same token ids with the
weights each step started from (snapshotted by a callback), so the test checks the numbers, the
step alignment (step s = the weights before update s) and the pair ids at once.
"""

import contextlib
import copy
import math
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from transformers import TrainerCallback, TrainingArguments

from prefstudy.columns import SchemaError
from prefstudy.data import DataError, PreferencePair
from prefstudy.encode import EncodedPair, collate, encode_pairs
from prefstudy.integrations import (
    TRL_OBJECTIVES,
    PerExample,
    PerExampleLossTrainer,
    as_records,
    trl_loss,
)
from prefstudy.logprobs import split_pairs, token_logps
from prefstudy.models import load_model
from prefstudy.objectives import OBJECTIVES, PairLogps
from prefstudy.records import (
    RECORD_COLUMNS,
    RunError,
    check_records,
    load_run,
    read_config,
    read_meta,
)
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


def perturbed(model, scale: float):
    """A copy of `model` with seeded Gaussian noise on every weight: a reference unlike the
    policy, so that the first step already has non-zero log-ratios."""
    ref = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)
    return ref


def dpo_trainer(tmp_path, args, *, with_ref=True, callbacks=(), ref_noise=0.0):
    """A PerPairDPOTrainer on PAIRS and the tiny model; the reference is the starting model, or
    with ref_noise a perturbed copy of it (TRL precomputes from it under
    precompute_ref_log_probs)."""
    from datasets import Dataset

    from prefstudy.integrations import PerPairDPOTrainer

    model, tok = load_model("tiny", device="cpu")
    original = copy.deepcopy(model)  # before TRL patches the policy's forward
    data = Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
                              for p in PAIRS])
    ref = perturbed(model, ref_noise) if with_ref else None
    trainer = PerPairDPOTrainer(model=model, ref_model=ref, args=args, train_dataset=data,
                                processing_class=tok, callbacks=list(callbacks),
                                records_dir=tmp_path / "run")
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
    assert df[df.step == 1].step_lr.iloc[0] == pytest.approx(args.learning_rate)
    micro = [f"s{s}-r0-m{m}" for s in range(1, steps + 1) for m in range(accumulate)]
    assert sorted(df.batch.unique()) == micro and (df.groupby("batch").size() == batch).all()

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


def trl_loss_types() -> list[str]:
    """TRL's own list of DPOTrainer loss types, from DPOConfig's help for loss_type."""
    from dataclasses import fields

    from trl import DPOConfig

    help_text = next(f for f in fields(DPOConfig) if f.name == "loss_type").metadata["help"]
    return re.findall(r"`'(\w+)'`", help_text)


def test_every_trl_loss_type_maps_to_a_registry_objective_with_every_parameter_set(trl):
    assert sorted(trl_loss_types()) == sorted(TRL_OBJECTIVES)
    for loss_type, mapping in TRL_OBJECTIVES.items():
        objective = OBJECTIVES[mapping.objective]
        assert f'loss_type="{loss_type}"' in objective.trl  # the registry says the same
        if not mapping.batch_token_mean:  # none left at a prefstudy default
            assert set(mapping.options) | set(mapping.fixed) == set(objective.params), loss_type


F_DIVERGENCE_TYPES = ["sigmoid", "hinge", "ipo", "exo_pair", "robust", "discopop", "sigmoid_norm",
                      "sft"]  # what TRL allows an f-divergence with (sft ignores it)


@pytest.mark.parametrize("options, name, params", [
    ({"loss_type": "ipo", "beta": 0.5}, "ipo",
     {"tau": 0.5, "norm": "mean", "f_divergence": "reverse_kl", "f_alpha": 0.5}),
    ({"loss_type": "sigmoid_norm", "f_divergence_type": "js_divergence"}, "book_dpo",
     {"beta": 0.1, "w_chosen": 1.0, "w_rejected": 1.0, "f_divergence": "js_divergence",
      "f_alpha": 0.5}),
    ({"loss_type": "discopop", "discopop_tau": 0.2, "f_divergence_type": "alpha_divergence",
      "f_alpha_divergence_coef": 0.3}, "discopop",
     {"beta": 0.1, "tau": 0.2, "f_divergence": "alpha_divergence", "f_alpha": 0.3}),
    ({"loss_type": "aot", "label_smoothing": 0.1}, "aot", {"beta": 0.1, "label_smoothing": 0.1}),
    ({"loss_type": "sft"}, "sft", {"norm": "batch"}),
    ({"ld_alpha": 0.5}, "ld_dpo", {"beta": 0.1, "alpha": 0.5}),
    ({"ld_alpha": 0.5, "f_divergence_type": "forward_kl"}, "ld(dpo)",
     {"beta": 0.1, "f_divergence": "forward_kl", "f_alpha": 0.5}),
    ({"ld_alpha": 0.5, "loss_type": "hinge"}, "ld(hinge)",
     {"beta": 0.1, "f_divergence": "reverse_kl", "f_alpha": 0.5}),
    ({"use_weighting": True, "loss_type": "bco_pair"}, "wpo(bco_pair)", {"beta": 0.1}),
    ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5], "ld_alpha": 0.5},
     "ld_dpo+0.5*sft", None),
    ({"loss_type": ["apo_zero", "sft"]}, "apo_zero+sft", None),
])
def test_trl_options_are_mapped_to_objectives_and_parameters(trl, tmp_path, options, name, params):
    loss = trl_loss(dpo_args(tmp_path, **options))
    got_name, got_params = loss.name, loss.params
    assert got_name == name
    if params is not None:
        assert got_params == params
    else:  # a combination: each term with its weight, objective and parameters
        terms = got_params["components"]
        assert [t["weight"] for t in terms] == options.get("loss_weights", [1.0, 1.0])
        assert terms[-1] == {"loss_type": "sft", "objective": "sft", "weight": terms[-1]["weight"],
                             "params": {"norm": "batch"}, "ld_alpha_on_logps": None}


def check_parity(trainer, df) -> float:
    """The loss TRL back-propagated against the mean of the recorded per-pair losses, for every
    micro-batch; both the integration's own values and the records. Returns the largest gap."""
    assert trainer.loss_parity, "no micro-batch was checked"
    for (ours, theirs), (_, rows) in zip(trainer.loss_parity, df.groupby("batch", sort=True)):
        assert abs(ours - theirs) <= 1e-5
        assert rows.pair_loss.mean() == pytest.approx(theirs, abs=1e-5)
    worst = max(abs(a - b) for a, b in trainer.loss_parity)
    assert read_meta(trainer.records_dir)["loss_parity"] == {
        "micro_batches": len(trainer.loss_parity), "max_abs_diff": worst}
    return worst


def test_dpo_plus_nll_records_each_pairs_own_share_of_trls_token_mean(trl, tmp_path):
    # Two micro-batches of two pairs: TRL's sft term is each micro-batch's token mean.
    args = dpo_args(tmp_path, max_steps=1, per_device_train_batch_size=2,
                    gradient_accumulation_steps=2, loss_type=["sigmoid", "sft"],
                    loss_weights=[1.0, 0.5])
    trainer, _, _ = dpo_trainer(tmp_path, args, ref_noise=0.02)
    trainer.train()
    df = load_run(tmp_path / "run")
    check_parity(trainer, df)
    assert (df.objective == "dpo+0.5*sft").all() and (df.norm == "").all()
    assert sorted(df.batch.unique()) == ["s1-r0-m0", "s1-r0-m1"]

    # pair_loss = DPO's own per-pair loss + 0.5 · nll_sum_p · B / (chosen tokens of its batch).
    h = (-df.nll_sum_p - df.ref_logp_p) - (-df.nll_sum_n - df.ref_logp_n)
    dpo = -F.logsigmoid(torch.tensor((args.beta * h).to_numpy()))
    tokens = df.groupby("batch").len_p.transform("sum")
    sft = df.nll_sum_p * 2 / tokens
    assert df.pair_loss.tolist() == pytest.approx((dpo.numpy() + 0.5 * sft).tolist(), abs=1e-5)
    assert df.margin.tolist() == pytest.approx((args.beta * h).tolist(), abs=1e-5)
    assert h.abs().min() > 1e-3  # the reference differs from the policy: a real check

    config = read_config(tmp_path / "run")
    assert config["objective"] == "dpo+0.5*sft"
    assert [c["objective"] for c in config["trl_loss"]["components"]] == ["dpo", "sft"]
    assert config["params"]["components"][0]["params"]["beta"] == args.beta


_ALL = list(TRL_OBJECTIVES)
_WEIGHTS = [1.0, 0.5, 2.0, 0.25, 1.5, 0.75, 1.25, 0.1, 3.0, 0.3, 0.6, 1.1, 0.9, 0.2, 0.4]
_WPO = [t for t in _ALL if t not in {"aot", "aot_unpaired", "sft", "hinge"}]  # TRL can weight
ALONE = {"exo_pair": {"label_smoothing": 1e-3}, "robust": {"label_smoothing": 0.1},
         "aot": {"label_smoothing": 0.1}, "aot_unpaired": {"label_smoothing": 0.1},
         "ipo": {"beta": 0.5}, "sppo_hard": {"beta": 0.5}}  # options each is usually run with
PARITY = {
    **{t: {"loss_type": t, **ALONE.get(t, {})} for t in _ALL},
    **{f"{f}-{len(F_DIVERGENCE_TYPES)}-types": {
        "loss_type": F_DIVERGENCE_TYPES, "loss_weights": _WEIGHTS[:len(F_DIVERGENCE_TYPES)],
        "f_divergence_type": f, "label_smoothing": 0.1, "beta": 0.5}
       for f in ("forward_kl", "js_divergence")},
    "alpha_divergence-ld-types": {
        "loss_type": F_DIVERGENCE_TYPES, "loss_weights": _WEIGHTS[:len(F_DIVERGENCE_TYPES)],
        "f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3,
        "ld_alpha": 0.5, "label_smoothing": 0.1, "beta": 0.5},
    "ld_dpo": {"ld_alpha": 0.5},
    "ld-every-type": {"loss_type": _ALL, "loss_weights": _WEIGHTS, "ld_alpha": 0.3,
                      "label_smoothing": 0.1, "beta": 0.5},
    "ld-precomputed-ref": {"loss_type": ["sigmoid", "hinge"], "ld_alpha": 0.5,
                           "precompute_ref_log_probs": True},
    "wpo": {"use_weighting": True},
    "wpo-types": {"loss_type": _WPO, "loss_weights": _WEIGHTS[:len(_WPO)],
                  "use_weighting": True, "label_smoothing": 0.1, "beta": 0.5},
}


@pytest.mark.slow  # one short step each, 23 in all: ~1-2 min on two shared CPU cores
@pytest.mark.parametrize("options", PARITY.values(), ids=PARITY.keys())
def test_recorded_per_pair_losses_average_to_the_loss_trl_back_propagates(trl, tmp_path,
                                                                         options):
    args = dpo_args(tmp_path, max_steps=1, per_device_train_batch_size=4, **options)
    trainer, _, _ = dpo_trainer(tmp_path, args, ref_noise=0.02)
    trainer.train()
    df = load_run(tmp_path / "run")
    check_records(df)
    check_parity(trainer, df)
    assert len(df) == 4 and (df.batch == "s1-r0-m0").all()
    assert (df.objective == trl_loss(args).name).all()
    assert read_config(tmp_path / "run")["trl_loss"]["loss_type"] == args.loss_type
    if options.get("ld_alpha") is not None and options.get("precompute_ref_log_probs"):
        assert df.ref_logp_p.isna().all()  # TRL kept only LD-weighted reference sums
    else:  # the reference differs from the policy: the losses are not at their constant start
        assert (-df.nll_sum_p - df.ref_logp_p).abs().min() > 1e-3

def test_a_loss_other_than_the_recorded_one_stops_training(trl, tmp_path):
    trainer, _, _ = dpo_trainer(tmp_path, dpo_args(tmp_path, loss_type="ipo", beta=0.1))
    trainer.beta = 0.5  # TRL now optimises IPO with τ = 0.5, the records would say τ = 0.1
    with pytest.raises(RuntimeError, match="computes another loss"):
        trainer.train()
    assert read_meta(tmp_path / "run")["status"] == "failed"
    with pytest.raises(FileExistsError, match="already holds a run"):
        trainer.train()


@pytest.mark.parametrize("options, message", [
    ({"loss_type": "kto"}, r"loss_type \['kto'\] \(not a TRL"),
    ({"loss_type": ["sigmoid", "nca_pair"], "f_divergence_type": "js_divergence"},
     r"f_divergence_type='js_divergence' with loss_type \['nca_pair'\]"),
    ({"loss_type": ["sigmoid", "sft"], "use_weighting": True},
     r"use_weighting=True with loss_type \['sft'\]"),
    ({"loss_type": "hinge", "use_weighting": True}, r"use_weighting=True with loss_type \['hinge'\]"),
    ({"loss_type": "robust", "label_smoothing": 0.5}, "loss_type='robust' with .*"
                                                      "label_smoothing=0.5"),
    ({"loss_type": "exo_pair"}, "loss_type='exo_pair' with .*label_smoothing=0.0"),
])
def test_configurations_without_a_counterpart_are_refused_before_loading(trl, tmp_path, options,
                                                                          message):
    from prefstudy.integrations import PerPairDPOTrainer

    with pytest.raises(ValueError, match=message):
        PerPairDPOTrainer(model="never-loaded", args=dpo_args(tmp_path, **options),
                          train_dataset=[{"prompt": "a", "chosen": "b", "rejected": "c"}])

def refuse_tokenising(monkeypatch):
    """From now on TRL's DPOTrainer tokenising a dataset fails the test: a refusal must come
    before it."""
    from trl import DPOTrainer

    def tokenise(*args, **kwargs):
        raise AssertionError("TRL tokenised the dataset before the refusal")

    monkeypatch.setattr(DPOTrainer, "_prepare_dataset", tokenise)


@pytest.fixture
def never_tokenised(trl, monkeypatch):
    refuse_tokenising(monkeypatch)


def _text_rows(pairs=PAIRS) -> list[dict]:
    return [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]


def _build_dpo(tmp_path, folder, rows=None, args=None):
    """A PerPairDPOTrainer that is refused before it loads its model (a name that is nowhere).
    args: a live trainer's (new TrainingArguments reset the accelerator state it uses)."""
    from datasets import Dataset

    from prefstudy.integrations import PerPairDPOTrainer

    return PerPairDPOTrainer(model="never-loaded", args=args or dpo_args(tmp_path),
                             records_dir=folder,
                             train_dataset=Dataset.from_list(rows or _text_rows()))


@contextlib.contextmanager
def lock_held_elsewhere(folder):
    """The records folder's lock, held by another process for the block."""
    from prefstudy.locks import lock_file

    code = ("import sys, time\nfrom filelock import FileLock\n"
            "lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True)\n"
            "time.sleep(120)\n")
    folder.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock_file(folder))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


def test_the_records_folder_is_locked_when_the_trainer_is_built(trl, tmp_path, monkeypatch):
    from prefstudy.locks import acquire

    folder = tmp_path / "run"
    refuse_tokenising(monkeypatch)
    with lock_held_elsewhere(folder):
        with pytest.raises(RunError, match="another process is recording into this run "
                                           "folder") as caught:
            _build_dpo(tmp_path, folder)
        assert str(folder) in str(caught.value) and "\n" not in str(caught.value)
    # a trainer built on the folder holds it until its training ends: a second one is refused
    monkeypatch.undo()
    trainer, _, _ = dpo_trainer(tmp_path, dpo_args(tmp_path, max_steps=1))
    assert folder.is_dir() and not (folder / "meta.json").exists()  # opened, nothing written
    refuse_tokenising(monkeypatch)
    with pytest.raises(RunError, match="pass another records_dir"):
        _build_dpo(tmp_path, folder, args=trainer.args)
    monkeypatch.undo()
    trainer.train()
    assert read_meta(folder)["status"] == "completed"
    acquire(folder).release()  # the ended training let go of it


def test_a_trainer_that_fails_to_build_leaves_no_folder_and_no_lock(trl, tmp_path):
    from prefstudy.locks import acquire

    folder = tmp_path / "fresh"
    with pytest.raises(OSError):  # the model is nowhere: the parent trainer fails after the lock
        _build_dpo(tmp_path, folder)
    assert not folder.exists()
    acquire(folder).release()


@pytest.mark.parametrize("where, message", [
    ("a file", "exists and is not a folder"),
    ("under a file", "cannot be written"),
])
def test_an_unusable_records_folder_is_refused_before_tokenising(never_tokenised, tmp_path,
                                                                 where, message):
    (tmp_path / "taken").write_text("a file, not a folder")
    folder = tmp_path / "taken" if where == "a file" else tmp_path / "taken" / "run"
    with pytest.raises(RunError, match=message) as caught:
        _build_dpo(tmp_path, folder)
    assert str(folder) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into a read-only folder")
def test_a_records_folder_without_write_permission_is_refused(never_tokenised, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(RunError, match="cannot be written"):
            _build_dpo(tmp_path, folder)
    finally:
        folder.chmod(0o700)


def test_repeated_pair_ids_are_refused_before_tokenising(never_tokenised, tmp_path):
    rows = _text_rows()
    given = [{**r, "pair_id": "same" if i in (2, 5) else f"id{i}"} for i, r in enumerate(rows)]
    with pytest.raises(DataError, match=r"rows 2 and 5, pair_id 'same', are the same pair_id"):
        _build_dpo(tmp_path, tmp_path / "run", given)
    with pytest.raises(DataError, match=r"rows 0 and 8, .*same pair \(prompt, chosen, rejected\)"):
        _build_dpo(tmp_path, tmp_path / "run", rows + rows[:1])
    assert not (tmp_path / "run").exists()  # refused before the folder was opened
    # a plain Trainer's list of rows is checked the same way
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True)
    with pytest.raises(DataError, match="rows 0 and 1"):
        PerExampleLossTrainer(model=torch.nn.Linear(1, 1), args=args,
                              train_dataset=[{"pair_id": "a"}, {"pair_id": "a"}],
                              per_example_loss=lambda model, inputs: None,
                              records_dir=tmp_path / "plain")


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
