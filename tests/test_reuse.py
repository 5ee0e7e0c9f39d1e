"""Nothing is reused because a name matches (issue 21): a run that ended, a disk cache entry, the
frozen blocks' store (tests/test_frozen.py) and the de-quantised SmolLM2 are reused only where
the content they were made from — the configuration, the data, the model's weights — is
unchanged; otherwise they are computed again (caches) or refused in one line naming what changed
(runs)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

import prefstudy.evaluate as ev
import prefstudy.models as models
import prefstudy.step as step
from prefstudy import fingerprint
from prefstudy.config import ConfigError, TrainConfig
from prefstudy.data import PreferencePair
from prefstudy.encode import encode_pairs
from prefstudy.inputs import training_pairs
from prefstudy.records import load_table, read_config, read_meta
from prefstudy.train import train

QUICK = dict(steps=2, batch_size=2, max_pairs=None, n_heldout=2, n_neutral=2, n_probes=1,
             eval_every=0, checkpoint_every=100, grad_stats=False)


def _write_pairs(path: Path, n: int, first: int = 0) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"Question {i}?",
                                        "chosen": f"A careful answer number {i}.",
                                        "rejected": f"No {i}."}) + "\n"
                            for i in range(first, first + n)))
    return path


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """The reference and step-0 caches in an empty folder of their own (the de-quantised model,
    which the tiny preset's tokenizer comes from, stays where it is)."""
    folder = tmp_path / "cache"
    for module in (ev, step):
        monkeypatch.setattr(module, "cache_dir", lambda: folder)
    return folder


# --------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def study_run(tmp_path_factory, tiny_profile):
    """One run of the tiny study profile, trained on pairs of its own (6 train, 2 held out)."""
    root = tmp_path_factory.mktemp("reuse")
    data, held = _write_pairs(root / "train.jsonl", 6), _write_pairs(root / "held.jsonl", 2, 100)
    study = tiny_profile(root / "runs", labels=["naive-sum"], data=str(data), heldout=str(held),
                         **{k: v for k, v in QUICK.items() if v is not None})
    cfg = study.configs()[0]
    folder = train(cfg, progress=False)
    return study, cfg, folder, data, held


@pytest.mark.parametrize("which", ["data", "heldout"])
def test_a_run_whose_data_changed_is_neither_kept_as_done_nor_resumed(study_run, which, capsys):
    from prefstudy.study import pending

    study, cfg, folder, data, held = study_run
    assert read_config(folder)["fingerprints"]["data"] == fingerprint.pairs(training_pairs(cfg))
    assert pending(study) == []  # unchanged: kept as done
    path = {"data": data, "heldout": held}[which]
    name = {"data": "the training pairs", "heldout": "the held-out pairs"}[which]
    original = path.read_text()
    records = load_table(folder)
    try:
        # the same file name, the same number of pairs, one response changed
        path.write_text(original.replace("answer number", "answer, number", 1))
        expected = rf"{name} \({path}\): content changed"
        with pytest.raises(ConfigError, match=expected) as refused:
            pending(study)
        assert str(folder) in str(refused.value) and "\n" not in str(refused.value)
        with pytest.raises(ConfigError, match=rf"nor keep the run as done; .*{expected}"):
            train(cfg, resume=True, progress=False)
    finally:
        path.write_text(original)
    assert read_meta(folder)["status"] == "completed"  # refusing changes nothing in the run
    assert load_table(folder).equals(records)
    train(cfg, resume=True, progress=True)  # the same content again: kept as done
    assert "already completed" in capsys.readouterr().err


def test_the_studys_audit_is_made_again_when_its_pairs_changed(study_run):
    from prefstudy.study import _audit_current, _audit_inputs

    study, cfg, folder, data, held = study_run
    audit_json = study.output / "audit" / "audit.json"
    assert not _audit_current(study)  # none yet
    audit_json.parent.mkdir(exist_ok=True)
    audit_json.write_text(json.dumps({"settings": {"fingerprints": _audit_inputs(cfg)}}))
    assert _audit_current(study)
    original = held.read_text()
    try:
        held.write_text(original.replace("No 100.", "No, 100."))
        assert not _audit_current(study)
    finally:
        held.write_text(original)
    audit_json.write_text('{"settings": ')  # damaged: made again, not a traceback
    assert not _audit_current(study)


def test_a_run_whose_model_files_changed_is_refused_and_the_caches_are_not_reused(
        tmp_path, tokenizer, empty_caches):
    """A local model folder overwritten with other weights: the same path, another model."""
    from prefstudy.models import tiny_model

    folder = tmp_path / "model"
    tokenizer.save_pretrained(folder)
    tiny_model(len(tokenizer), seed=0).save_pretrained(folder)
    data, held = _write_pairs(tmp_path / "t.jsonl", 4), _write_pairs(tmp_path / "h.jsonl", 2, 50)

    def config(run_id):
        return TrainConfig(objective="dpo", model=str(folder), data=str(data), heldout=str(held),
                           output=str(tmp_path / "runs"), run_id=run_id, device="cpu", **QUICK)

    first = train(config("a"), progress=False)
    entries = sorted(p.name for p in empty_caches.rglob("*.*"))
    assert entries  # reference log-probs, step-0 perplexity and generations

    tiny_model(len(tokenizer), seed=1).save_pretrained(folder)  # new weights, same path
    with pytest.raises(ConfigError, match=rf"the model's files \({folder}\): content changed"):
        train(config("a"), resume=True, progress=False)
    second = train(config("b"), progress=False)
    assert len(list(empty_caches.rglob("*.*"))) == 2 * len(entries)  # nothing reused
    nll = [load_table(run, "evals").query("step == 0").set_index("pair_id").nll_sum_p
           for run in (first, second)]
    assert (nll[0] - nll[1]).abs().max() > 1e-3  # step 0 is the new model's


# --------------------------------------------------------------------------- caches


@pytest.fixture
def pairs_and_model(tokenizer):
    model = models.tiny_model(len(tokenizer), seed=3)
    pairs = [PreferencePair(f"Question {i}?", f"Answer {i}." * (i + 1), f"No {i}.")
             for i in range(3)]
    return model, encode_pairs(pairs, tokenizer, max_length=48, max_prompt_length=16)


def test_the_reference_cache_keys_on_the_models_weights_not_its_name(pairs_and_model,
                                                                     tokenizer, empty_caches):
    model, encoded = pairs_and_model
    pad = tokenizer.pad_token_id

    def ref(net, cfg=TrainConfig(model="tiny", model_seed=0)):  # names a model it is not
        return step.reference_logps(net, encoded, cfg, pad, "cpu")

    first = ref(model)
    same = models.tiny_model(len(tokenizer), seed=3)  # equal weights, named otherwise
    again = ref(same, TrainConfig(model="some/other-name", model_seed=7))
    assert len(list(empty_caches.rglob("*.pt"))) == 1
    assert all(torch.equal(first[k][0], again[k][0]) for k in first)
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight.mul_(2.0)  # one weight changed in place
    changed = ref(model)
    assert len(list(empty_caches.rglob("*.pt"))) == 2
    fresh = step._per_pair_logps(model, encoded, pad, "cpu", 8)
    for pid, (chosen, rejected) in fresh.items():
        torch.testing.assert_close(changed[pid][0], chosen)
        assert not torch.allclose(changed[pid][0], first[pid][0])
    assert ref(model.to(torch.float64))  # another dtype: another entry
    assert len(list(empty_caches.rglob("*.pt"))) == 3


def test_step0_caches_key_on_the_models_weights_and_tokenizer(pairs_and_model, tokenizer,
                                                             empty_caches):
    import copy

    import pandas as pd

    model, _ = pairs_and_model
    calls = []

    def compute():
        calls.append(1)
        return pd.DataFrame({"step": [0], "x": [float(len(calls))]})

    def at_start(net, tok=tokenizer):
        return ev.at_start("perplexity", net, tok, "cpu", {"texts": ["a"]}, compute)

    at_start(model)
    at_start(copy.deepcopy(model))
    assert len(calls) == 1
    with torch.no_grad():
        model.lm_head.weight.add_(0.01)
    at_start(model)
    other = copy.deepcopy(tokenizer)
    other.chat_template = "{{ messages }}"
    at_start(model, other)
    assert len(calls) == 3


# --------------------------------------------------------------------------- the de-quantised model


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A GGUF file and a conversion that writes a small stand-in of the de-quantised folder,
    counting conversions; the model cache in tmp_path."""
    gguf = tmp_path / "pkg" / models.SMOLLM2_GGUF
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF one")
    made = []

    def convert(source: Path, folder: Path) -> None:
        folder.mkdir()
        for name in ("config.json", "tokenizer_config.json"):
            (folder / name).write_text("{}")
        (folder / "model.safetensors").write_bytes(source.read_bytes() * 3)
        made.append(folder)

    monkeypatch.setattr(models, "cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(models, "smollm2_gguf", lambda: gguf if gguf.exists() else None)
    monkeypatch.setattr(models, "_convert", convert)
    return gguf, made


def test_the_dequantised_model_is_made_again_when_its_gguf_or_its_files_change(fake_gguf):
    gguf, made = fake_gguf
    target = models._dequantised_smollm2()
    assert len(made) == 1 and (target / models.MADE_FROM).exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert models._dequantised_smollm2() == target and len(made) == 1  # reused, silently
    cases = [
        (lambda: gguf.write_bytes(b"GGUF two"), "made from another GGUF"),
        (lambda: (target / "model.safetensors").write_bytes(b"damaged"), "files changed"),
        (lambda: (target / models.MADE_FROM).write_text("{not json"), "no readable"),
        (lambda: (target / "tokenizer_config.json").unlink(), "incomplete"),
    ]
    for i, (change, why) in enumerate(cases, start=2):
        change()
        with pytest.warns(models.ModelCacheWarning, match=why) as seen:
            assert models._dequantised_smollm2() == target
        assert str(target) in str(seen[0].message) and len(made) == i
        assert models._dequantised_smollm2() == target and len(made) == i
    assert (target / "model.safetensors").read_bytes() == b"GGUF two" * 3
    assert not list(target.parent.glob(".*"))  # no temporary or replaced folder left


def test_without_its_gguf_the_copy_is_checked_against_its_own_record(fake_gguf):
    gguf, made = fake_gguf
    target = models._dequantised_smollm2()
    gguf.unlink()  # the package uninstalled: the copy is all there is
    assert models._dequantised_smollm2() == target
    (target / "model.safetensors").write_bytes(b"damaged")
    with pytest.raises(FileNotFoundError, match="cannot be used: its files changed"):
        models._dequantised_smollm2()


def test_a_models_fingerprint_follows_its_files_not_its_name(tmp_path, tokenizer):
    folder = tmp_path / "m"
    tokenizer.save_pretrained(folder)
    models.tiny_model(len(tokenizer), seed=0).save_pretrained(folder)
    before = models.source_fingerprint(str(folder))
    assert models.source_fingerprint(str(folder)) == before
    (folder / "README.md").write_text("notes")  # documentation is not the model
    assert models.source_fingerprint(str(folder)) == before
    models.tiny_model(len(tokenizer), seed=1).save_pretrained(folder)
    assert models.source_fingerprint(str(folder)) != before
    assert models.source_fingerprint("tiny", seed=0) != models.source_fingerprint("tiny", seed=1)
    assert models.source_fingerprint("no-such/model-anywhere") is None  # nothing to compare
