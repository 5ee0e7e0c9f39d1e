"""A pair source split by prompt (prefstudy.split, config heldout_prompts / neutral_prompts /
neutral_model / too_long): on AlpacaEval-style files the test writes, whose answer is known."""

import json
import warnings

import pytest

from prefstudy.config import ConfigError, TrainConfig, check
from prefstudy.data import load_any
from prefstudy.inputs import heldout_pairs, neutral_texts, source_counts, training_pairs
from prefstudy.split import fitting, prompt_groups, prompt_key, split_prompts

MODELS = ["model-a", "model-b", "model-c"]
SOURCES = ["koala", "oasst"]


def _write_alpaca(folder, n_prompts=40, long_every=0):
    """AlpacaEval annotations: n_prompts instructions, one file per model compared with the
    reference ("ref"); instruction i is from SOURCES[i % 2]; every `long_every`-th answer of
    model-a is very long. Preference alternates, so each side wins sometimes."""
    folder.mkdir(parents=True, exist_ok=True)
    for m, model in enumerate(MODELS):
        records = []
        for i in range(n_prompts):
            long = long_every and i % long_every == 0 and model == "model-a"
            answer = f"{model} answers {i}: " + ("very long words " * 400 if long else "short.")
            records.append({"instruction": f"Question number {i}?", "output_1": f"ref answer {i}",
                            "generator_1": "ref", "output_2": answer, "generator_2": model,
                            "dataset": SOURCES[i % 2], "annotator": "judge",
                            "preference": 1 + (i + m) % 2})
        (folder / f"{model}.json").write_text(json.dumps(records))
    return folder


def _config(folder, **changes):
    values = dict(data=str(folder), heldout="", neutral_text="", heldout_prompts=8,
                  neutral_prompts=10, n_heldout=1000, n_neutral=1000, model="tiny")
    return TrainConfig(**{**values, **changes})


def test_no_prompt_is_on_two_sides_and_held_out_prompts_bring_every_pair(tmp_path):
    pairs = load_any(_write_alpaca(tmp_path / "ae"))
    split = split_prompts(pairs, 8, 10, seed=0, neutral_model="ref")
    train = {prompt_key(p) for p in split.train}
    held = {prompt_key(p) for p in split.heldout}
    assert len(held) == 8 and not train & held and len(train) == 40 - 8 - 10
    assert len(split.heldout) == 8 * 3  # all three models' pairs of each held-out prompt
    assert {p.meta["chosen_model"] for p in split.heldout} | {
        p.meta["rejected_model"] for p in split.heldout} == {"ref", *MODELS}
    # stratified over the instruction's source: 8 prompts, half from each
    assert sorted(p.meta["dataset"] for p in split.heldout).count("koala") == 12
    neutral = split.neutral
    assert len(neutral) == 10 and all(t.startswith("ref answer") for t in neutral.text)
    neutral_prompts = {int(t.split()[-1]) for t in neutral.text}
    used = {int(k.split("number ")[1].split("?")[0]) for k in train | held}
    assert not neutral_prompts & used
    assert split.counts == {"prompts": 40, "heldout_prompts": 8, "neutral_prompts": 10,
                            "train_prompts": 22, "neutral_prompts_without_answer": 0}
    again = split_prompts(pairs, 8, 10, seed=0, neutral_model="ref")
    assert [p.pair_id for p in again.heldout] == [p.pair_id for p in split.heldout]
    other = split_prompts(pairs, 8, 10, seed=1, neutral_model="ref")
    assert {p.pair_id for p in other.heldout} != {p.pair_id for p in split.heldout}


def test_neutral_answers_without_a_model_are_a_seeded_side_and_missing_ones_are_counted(tmp_path):
    pairs = load_any(_write_alpaca(tmp_path / "ae"))
    split = split_prompts(pairs, 4, 12, seed=0)
    sides = {t.split()[0] for t in split.neutral.text}
    assert len(split.neutral) == 12 and sides <= {"ref", *MODELS} and len(sides) > 1
    none = split_prompts(pairs, 4, 12, seed=0, neutral_model="nobody")
    assert none.neutral.empty and none.counts["neutral_prompts_without_answer"] == 12
    with pytest.raises(ValueError, match="40 distinct prompts"):
        split_prompts(pairs, 30, 10)


def test_prompts_are_whole_conversations():
    from prefstudy.data import PreferencePair

    a = PreferencePair("Hi?", "x", "y")
    b = PreferencePair("Hi?", "z", "w")
    c = PreferencePair(({"role": "user", "content": "Hi?"},), "x", "q")
    d = PreferencePair(({"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Hi?"}), "x", "y")
    assert list(prompt_groups([a, b, c, d]).values()) == [[0, 1, 2], [3]]


def test_dropping_long_pairs_counts_them_before_the_sample(tmp_path, tokenizer):
    folder = _write_alpaca(tmp_path / "ae", long_every=5)
    pairs = load_any(folder)
    kept, dropped = fitting(pairs, tokenizer, max_length=128, max_prompt_length=64)
    assert dropped == 8 and all("very long" not in p.chosen + p.rejected for p in kept)
    cfg = _config(folder, too_long="drop", max_length=128, max_prompt_length=64, max_pairs=30)
    train, held = training_pairs(cfg), heldout_pairs(cfg)
    assert len(train) == 30 and all("very long" not in p.chosen + p.rejected for p in train)
    counts = source_counts(cfg)
    assert counts["pairs_too_long"] + counts["heldout_pairs_too_long"] <= 8
    assert len(held) == 24 - counts["heldout_pairs_too_long"]
    assert counts["split_heldout_prompts"] == 8
    neutral = neutral_texts(_config(folder, neutral_model="ref", n_neutral=4))
    assert len(neutral) == 4 and neutral.text.str.startswith("ref answer").all()


def test_a_split_config_refuses_a_second_source_of_the_same_thing(tmp_path):
    folder = _write_alpaca(tmp_path / "ae")
    check(_config(folder))
    with pytest.raises(ConfigError, match="heldout_prompts.*heldout"):
        check(_config(folder, heldout="data/heldout"))
    with pytest.raises(ConfigError, match="neutral_prompts.*neutral_text"):
        check(_config(folder, neutral_text="data/neutral"))
    with pytest.raises(ConfigError, match="neutral_model.*neutral_prompts"):
        check(_config(folder, neutral_prompts=0, neutral_model="ref"))
    with pytest.raises(ConfigError, match="too_long"):
        check(_config(folder, too_long="cut"))


def test_a_run_trains_and_evaluates_on_its_split(tmp_path):
    from prefstudy.records import read_config
    from prefstudy.tables import load_tables
    from prefstudy.train import train

    folder = _write_alpaca(tmp_path / "ae", n_prompts=24)
    cfg = _config(folder, heldout_prompts=4, neutral_prompts=6, neutral_model="ref",
                  steps=2, batch_size=4, max_length=64, max_prompt_length=32, n_probes=0,
                  eval_every=2, output=str(tmp_path / "runs"), lr=1e-3).resolved()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = train(cfg, progress=False)
    saved = read_config(run)
    assert saved["split_heldout_prompts"] == 4 and saved["split_train_prompts"] == 14
    tables = load_tables([run])
    held = tables.evals[tables.evals.split == "heldout"]
    assert held.pair_id.nunique() == 12  # every pair of the 4 held-out prompts
    assert tables.perplexity.text_id.nunique() == 6
    trained = set(tables.records.pair_id)
    assert not trained & set(held.pair_id)


def test_the_real_data_study_splits_by_instruction_and_runs_the_focused_set_first(tmp_path):
    from prefstudy.paths import in_repo
    from prefstudy.study import load_study

    folder = _write_alpaca(tmp_path / "ae", n_prompts=300)
    study = load_study(in_repo("configs/real.toml"), profile="cpu-full", output=tmp_path / "r",
                       overrides={"data": str(folder), "neutral_model": "ref"})
    configs = study.configs()
    first = configs[0]
    assert first.heldout_prompts >= 60 and first.neutral_prompts >= 200
    assert first.too_long == "drop" and first.warmup_steps == first.eval_every
    assert first.keep_text is False  # staged outside reports/, committed later: no texts
    focused = {"naive-sum", "naive-mean", "negative_only", "dpo", "dpop", "rpo"}
    seeds = {label: {c.seed for c in configs if c.label == label} for label in study.listed}
    assert all(seeds[label] == {0, 1, 2} for label in focused)
    assert all(seeds[label] == {0} for label in set(study.listed) - focused)
    assert len(study.lrs) >= 3 and max(study.lrs) / min(study.lrs) >= 10
    betas = {c.params["beta"] for c in configs if c.objective == "dpo" and c.trainable_blocks == 4}
    assert betas == {0.05, 0.1, 0.5}
    assert {c.label for c in configs if c.trainable_blocks == 30} == {"naive-sum-all", "dpo-all"}
    held = heldout_pairs(first)
    train = training_pairs(first)
    assert not {prompt_key(p) for p in held} & {prompt_key(p) for p in train}


def test_a_split_that_leaves_nothing_usable_says_why_in_one_line(tmp_path, tokenizer):
    from prefstudy.data import DataError
    from prefstudy.inputs import prepare_inputs

    folder = _write_alpaca(tmp_path / "ae", n_prompts=30)
    with pytest.raises(DataError, match="neutral_model 'nobody' wrote none of the answers to "
                                       "the 10 neutral prompts; the data's models: model-a"):
        neutral_texts(_config(folder, neutral_model="nobody"))
    tight = _config(folder, too_long="drop", max_length=40, max_prompt_length=20)
    with pytest.raises(DataError, match=r"0 usable pairs, fewer than batch_size=4 \(36 left out "
                                        r"as longer than max_length=40"):
        prepare_inputs(tight, tokenizer)
