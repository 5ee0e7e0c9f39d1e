"""Every layout as a user's file: written by the test in each file format it is published in,
read through the Python API (`load_any`), the command line (`prefstudy data read`, `audit`'s
and `train`'s --layout / --columns) and a run's config, with the right chosen and rejected for
every pair and the skips counted by reason."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from prefstudy.cli import main
from prefstudy.config import ConfigError, check, from_dict
from prefstudy.data import DataError, SkippedPairsWarning, load_any

# Each layout: records whose labelled winner is "W…" and loser "L…"; a last record that is a
# tie (or has no label), which must be skipped and counted, never guessed.
ARENA = [
    {"id": 1, "model_a": "m1", "model_b": "m2", "prompt": json.dumps(["Q1"]),
     "response_a": json.dumps(["W1"]), "response_b": json.dumps(["L1"]),
     "winner_model_a": 1, "winner_model_b": 0, "winner_tie": 0},
    {"id": 2, "model_a": "m1", "model_b": "m2", "prompt": json.dumps(["Q2"]),
     "response_a": json.dumps(["L2"]), "response_b": json.dumps(["W2"]),
     "winner_model_a": 0, "winner_model_b": 1, "winner_tie": 0},
    {"id": 3, "model_a": "m1", "model_b": "m2", "prompt": json.dumps(["Q3"]),
     "response_a": json.dumps(["x"]), "response_b": json.dumps(["y"]),
     "winner_model_a": 0, "winner_model_b": 0, "winner_tie": 1},
]
SHP = [
    {"post_id": "a", "domain": "askscience", "history": "Q1", "human_ref_A": "W1",
     "human_ref_B": "L1", "labels": 1, "score_A": 10, "score_B": 2},
    {"post_id": "b", "domain": "askscience", "history": "Q2", "human_ref_A": "L2",
     "human_ref_B": "W2", "labels": 0, "score_A": 1, "score_B": 9},
    {"post_id": "c", "domain": "askscience", "history": "Q3", "human_ref_A": "x",
     "human_ref_B": "y", "labels": 0.5, "score_A": 1, "score_B": 1},
]
ALPACA = [
    {"instruction": "Q1", "output_1": "W1", "generator_1": "g1", "output_2": "L1",
     "generator_2": "g2", "annotator": "alpaca_eval_gpt4", "preference": 1},
    {"instruction": "Q2", "output_1": "L2", "generator_1": "g1", "output_2": "W2",
     "generator_2": "g2", "annotator": "alpaca_eval_gpt4", "preference": 2},
    {"instruction": "Q3", "output_1": "x", "generator_1": "g1", "output_2": "y",
     "generator_2": "g2", "annotator": "alpaca_eval_gpt4", "preference": 1.5},
]
ULTRA = [
    {"instruction": "Q1", "completions": [
        {"model": "m1", "response": "W1", "overall_score": 9},
        {"model": "m2", "response": "L1", "overall_score": 3}]},
    {"instruction": "Q2", "completions": [
        {"model": "m1", "response": "L2", "overall_score": 2},
        {"model": "m2", "response": "W2", "overall_score": 8}]},
    {"instruction": "Q3", "completions": [
        {"model": "m1", "response": "x", "overall_score": 5},
        {"model": "m2", "response": "y", "overall_score": 5}]},
]
MESSAGES = [
    {"prompt": [{"role": "user", "content": f"Q{i}"}],
     "chosen": [{"role": "assistant", "content": f"W{i}"}],
     "rejected": [{"role": "assistant", "content": f"L{i}"}]} for i in (1, 2)
] + [{"prompt": [{"role": "user", "content": "Q3"}],
      "chosen": [{"role": "assistant", "content": "same"}],
      "rejected": [{"role": "assistant", "content": "same"}]}]
HH = [{"chosen": f"\n\nHuman: Q{i}\n\nAssistant: W{i}",
       "rejected": f"\n\nHuman: Q{i}\n\nAssistant: L{i}"} for i in (1, 2)] + [
    {"chosen": "\n\nHuman: Q3\n\nAssistant: a", "rejected": "\n\nHuman: other\n\nAssistant: b"}]
PLAIN = [{"prompt": f"Q{i}", "chosen": f"W{i}", "rejected": f"L{i}"} for i in (1, 2)] + [
    {"prompt": "Q3", "chosen": "same", "rejected": "same"}]
IMPLICIT = [{"chosen": f"Q{i} asked. W{i}", "rejected": f"Q{i} asked. L{i}"} for i in (1, 2)] + [
    {"chosen": "x", "rejected": "y"}]

LAYOUTS = {  # layout: (records, the formats it is published in, the kind of the skip)
    "arena": (ARENA, ("jsonl", "json", "csv", "parquet"), "tie"),
    "shp": (SHP, ("jsonl", "json", "csv", "parquet"), "fractional label"),
    "alpaca_eval": (ALPACA, ("json", "jsonl", "csv", "parquet"), "tie"),
    "ultrafeedback": (ULTRA, ("jsonl", "json", "parquet"), "score tie"),
    "messages": (MESSAGES, ("jsonl", "json", "parquet"), "identical answers"),
    "hh": (HH, ("jsonl", "json", "csv", "parquet"), "no shared prompt"),
    "plain": (PLAIN, ("jsonl", "json", "csv", "parquet"), "identical answers"),
    "implicit": (IMPLICIT, ("jsonl", "json", "csv", "parquet"), "no shared prompt"),
}


def write(records: list[dict], path, fmt: str):
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif fmt == "json":
        path.write_text(json.dumps(records, indent=2))
    elif fmt == "csv":
        pd.DataFrame(records).to_csv(path, index=False)
    else:
        pd.DataFrame(records).to_parquet(path, index=False)
    return path


def answers(pair) -> tuple[str, str]:
    return pair.chosen.strip(), pair.rejected.strip()


@pytest.mark.parametrize("layout, fmt", [(name, fmt) for name, (_, fmts, _) in LAYOUTS.items()
                                         for fmt in fmts])
def test_every_layout_loads_from_every_format_with_the_labelled_winner(tmp_path, layout, fmt):
    records, _, kind = LAYOUTS[layout]
    path = write(records, tmp_path / f"{layout}.{fmt}", fmt)
    with pytest.warns(SkippedPairsWarning, match=f"1 of 3 records \\({kind}: 1\\)"):
        pairs = load_any(path)
    assert pairs.layout == layout
    assert [answers(p) for p in pairs] == [("W1", "L1"), ("W2", "L2")]
    assert pairs.skip_counts().to_dict() == {kind: 1}
    with pytest.warns(SkippedPairsWarning):
        named = load_any(path, layout=layout)  # naming the layout reads the same pairs
    assert [p.pair_id for p in named] == [p.pair_id for p in pairs]


def test_what_the_file_carries_is_kept_in_meta(tmp_path):
    with pytest.warns(SkippedPairsWarning):
        arena = load_any(write(ARENA, tmp_path / "a.csv", "csv"))
        alpaca = load_any(write(ALPACA, tmp_path / "e.json", "json"))
        shp = load_any(write(SHP, tmp_path / "s.parquet", "parquet"))
    assert [(p.meta["chosen_model"], p.meta["rejected_model"]) for p in arena] == [
        ("m1", "m2"), ("m2", "m1")]
    assert [(p.meta["chosen_model"], p.meta["judge"]) for p in alpaca] == [
        ("g1", "alpaca_eval_gpt4"), ("g2", "alpaca_eval_gpt4")]
    assert [(p.meta["chosen_score"], p.meta["rejected_score"], p.meta["domain"])
            for p in shp] == [(10, 2, "askscience"), (9, 1, "askscience")]
    for pair in (*arena, *alpaca, *shp):  # the file's order is not kept to leak into analysis
        assert not {"winner_model_a", "preference", "labels", "output_1"} & set(pair.meta)


def test_a_datasets_object_in_any_layout(tmp_path):
    datasets = pytest.importorskip("datasets")
    with pytest.warns(SkippedPairsWarning, match="tie: 1"):
        pairs = load_any(datasets.Dataset.from_list(ALPACA))
    assert [answers(p) for p in pairs] == [("W1", "L1"), ("W2", "L2")]
    datasets.Dataset.from_list(SHP).save_to_disk(str(tmp_path / "saved"))
    with pytest.warns(SkippedPairsWarning, match="fractional label: 1"):
        assert len(load_any(tmp_path / "saved")) == 2


def test_columns_map_a_users_names_onto_a_layout(tmp_path, capsys):
    frame = pd.DataFrame({"question": ["Q1", "Q2"], "good": ["W1", "W2"], "bad": ["L1", "L2"]})
    path = write(frame.to_dict("records"), tmp_path / "mine.csv", "csv")
    with pytest.raises(DataError, match=r"mine\.csv row:0: no layout recognises"):
        load_any(path)
    pairs = load_any(path, columns="prompt=question,chosen=good,rejected=bad")
    assert [(p.prompt, *answers(p)) for p in pairs] == [("Q1", "W1", "L1"), ("Q2", "W2", "L2")]
    assert main(["data", "read", str(path), "--columns",
                 "prompt=question,chosen=good,rejected=bad", "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert "2 pairs read (2 in layout plain)" in out and "chosen: 'W1'" in out
    assert main(["data", "read", str(path), "--columns", "prompt=question,chosen"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "'chosen'" in error


def test_data_read_says_the_layout_and_every_skip_by_reason(tmp_path, capsys):
    path = write(ARENA + [{**ARENA[0], "id": 4, "winner_model_a": None}], tmp_path / "a.csv",
                 "csv")
    assert main(["data", "read", str(path), "--show", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("2 pairs read (2 in layout arena)")
    assert any(line.strip().startswith("skipped 1: tie (first:") and "a.csv row:2" in line
               for line in out)
    assert any(line.strip().startswith("skipped 1: no label") for line in out)


def test_a_malformed_label_is_one_line_naming_file_row_and_field(tmp_path, capsys):
    path = write([*ALPACA[:1], {**ALPACA[1], "preference": "second"}], tmp_path / "e.json",
                 "json")
    assert main(["data", "read", str(path)]) == 2
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1 and "e.json item:2" in line and "preference" in line


def test_a_run_reads_its_data_in_the_layout_its_config_names(tmp_path):
    from prefstudy.inputs import training_pairs

    path = write(ALPACA, tmp_path / "judged.json", "json")
    cfg = from_dict({"data": str(path), "layout": "alpaca_eval", "heldout": None}, "test")
    check(cfg)
    with pytest.warns(SkippedPairsWarning):
        assert [answers(p) for p in training_pairs(cfg)] == [("W1", "L1"), ("W2", "L2")]
    with pytest.raises(ConfigError, match=r"config field 'layout' = 'alpaca'; allowed: 'auto'"):
        check(from_dict({"layout": "alpaca"}, "test"))
    with pytest.raises(ConfigError, match=r"config field 'columns'"):
        check(from_dict({"columns": "prompt"}, "test"))
