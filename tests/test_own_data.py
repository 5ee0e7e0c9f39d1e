"""A study on a user's own data, through the command line: the default study's tiny profile on
pairs in a parquet file without any metadata and held-out pairs as Anthropic-HH transcripts; bad
input is one line and exit status 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from prefstudy.cli import main
from prefstudy.data import PreferencePair
from prefstudy.paths import in_repo
from prefstudy.records import read_config, read_meta, run_folders
from prefstudy.study import DEFAULT_STUDY, load_study
from prefstudy.tables import load_tables

TOPICS = ["tea", "bicycles", "rain", "chess", "bread", "rivers", "owls", "maps", "glass",
          "clocks", "gardens", "trains", "salt", "kites", "bees", "lamps"]


def _train_rows() -> list[dict]:
    """16 plain pairs of varied lengths: the chosen side grows with i, the rejected one shrinks."""
    rows = []
    for i, topic in enumerate(TOPICS):
        detail = " ".join(f"Point {k + 1} about {topic} is worth a look." for k in range(i % 5))
        rows.append({"prompt": f"Tell me something useful about {topic}." + " Please." * (i % 3),
                     "chosen": f"Here is a clear answer about {topic}. {detail}".strip(),
                     "rejected": "I do not know." + f" {topic.title()} is hard." * (4 - i % 4)})
    return rows


def _heldout_rows() -> list[dict]:
    """4 HH transcripts (as many as the tiny profile evaluates; the last of them two-turn): only
    chosen/rejected text, no prompt, no meta."""
    rows = []
    for i, topic in enumerate(TOPICS[:4]):
        head = f"\n\nHuman: What should I know about {topic}?"
        if i % 4 == 3:
            head = (f"\n\nHuman: Hi there.\n\nAssistant: Hello! How can I help?"
                    f"\n\nHuman: Explain {topic} in a few words.")
        good = f"{topic.title()} is a fine subject." + " It has a long history." * (i % 3)
        bad = "Go away." + " Stop asking." * (i % 2)
        rows.append({"chosen": f"{head}\n\nAssistant: {good}",
                     "rejected": f"{head}\n\nAssistant: {bad}"})
    return rows


def _hh_pair(row: dict) -> PreferencePair:
    """The pair an HH record means, built by hand: the turns before the last assistant turn are
    the prompt, what follows it on each side the responses."""
    cut = "\n\nAssistant: "
    head, good = row["chosen"].rsplit(cut, 1)
    bad = row["rejected"].rsplit(cut, 1)[1]
    turns = []
    for chunk in head.split("\n\n")[1:]:
        role, text = chunk.split(": ", 1)
        turns.append({"role": {"Human": "user", "Assistant": "assistant"}[role], "content": text})
    return PreferencePair(tuple(turns), good, bad)


@pytest.fixture(scope="module")
def own_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    pairs = root / "my_pairs.parquet"
    pd.DataFrame(_train_rows()).to_parquet(pairs, index=False)
    held = root / "my_heldout_hh.jsonl"
    held.write_text("".join(json.dumps(r) + "\n" for r in _heldout_rows()))
    return root, pairs, held


def _study_argv(root: Path, data, heldout, *extra) -> list[str]:
    """`prefstudy study` of the default study's tiny profile on the user's data."""
    return ["study", "--profile", "tiny", "--data", str(data), "--heldout", str(heldout),
            "--output", str(root / "runs"), "--report", str(root / "report"), "--quiet", *extra]


@pytest.fixture(scope="module")
def own_study(own_data):
    root, pairs, held = own_data
    assert main(_study_argv(root, pairs, held)) == 0
    return root, pairs, held


# the tiny profile's 13 runs, the audit and the report: ~65 s on two CPU cores shared with others
@pytest.mark.slow
def test_a_study_runs_on_a_users_parquet_and_hh_transcripts(own_study):
    root, pairs, held = own_study
    folders = run_folders(root / "runs")
    study = load_study(in_repo(DEFAULT_STUDY), profile="tiny")
    assert sorted(f.name for f in folders) == sorted(c.run_id for c in study.configs())
    for folder in folders:
        assert read_meta(folder)["status"] in ("completed", "diverged"), folder.name
        cfg = read_config(folder)
        assert (cfg["data"], cfg["heldout"]) == (str(pairs), str(held))
    assert (root / "runs" / "audit" / "audit.json").exists()
    assert (root / "runs" / "audit" / "heldout" / "audit.json").exists()

    page = (root / "report" / "README.md").read_text()
    for heading in ("## Provenance", "## What held", "## C3", "## C4"):
        assert heading in page, heading
    provenance = page.split("## Provenance", 1)[1].split("\n## ", 1)[0]
    assert f"`{pairs}`" in provenance and f"`{held}`" in provenance


@pytest.mark.slow
def test_the_report_reads_the_pairs_its_runs_name(own_study):
    root, pairs, held = own_study
    train_ids = {PreferencePair(r["prompt"], r["chosen"], r["rejected"]).pair_id
                 for r in _train_rows()}
    held_ids = {_hh_pair(r).pair_id for r in _heldout_rows()}
    assert len(train_ids) == 16 and len(held_ids) == 4 and not train_ids & held_ids
    tables = load_tables(root / "runs")
    split = tables.pairs.set_index("pair_id").split
    assert set(split[split == "train"].index) == train_ids
    assert set(split[split == "heldout"].index) == held_ids
    # what the runs recorded: all the user's pairs and all held-out pairs (the tiny profile's
    # max_pairs = 16 and n_heldout = 4), and n_train_eval = 4 of the training pairs evaluated too
    assert set(tables.records.pair_id) == train_ids
    evals = tables.evals.groupby("split").pair_id.agg(set)
    assert evals["heldout"] == held_ids
    assert len(evals["train"]) == 4 and evals["train"] <= train_ids
    row = tables.pairs.set_index("pair_id").loc[sorted(held_ids)[0]]
    assert row.prompt and "Human:" not in row.chosen and "Assistant:" not in row.rejected


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_missing_data_file_is_one_line(own_data, capsys):
    root, _, held = own_data
    missing = root / "nowhere" / "pairs.parquet"
    assert main(_study_argv(root, missing, held, "--output", str(root / "bad-1"))) == 2
    line = _one_line(capsys)
    assert str(missing) in line and "no such file" in line


def test_a_parquet_without_chosen_is_one_line(own_data, capsys):
    root, _, held = own_data
    bad = root / "no_chosen.parquet"
    pd.DataFrame(_train_rows()).drop(columns="chosen").to_parquet(bad, index=False)
    assert main(_study_argv(root, bad, held, "--output", str(root / "bad-2"))) == 2
    line = _one_line(capsys)
    assert str(bad) in line and "chosen" in line


def test_an_unknown_profile_is_one_line(own_data, capsys):
    root, pairs, held = own_data
    argv = _study_argv(root, pairs, held, "--output", str(root / "bad-3"))
    argv[argv.index("tiny")] = "nosuch"
    assert main(argv) == 2
    line = _one_line(capsys)
    assert "nosuch" in line and "tiny" in line  # the profile asked for, and those there are
    assert not (root / "bad-3").exists()  # refused before anything was written


def test_a_hub_id_offline_is_one_line(own_data):
    root, _, held = own_data
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "prefstudy.cli",
         *_study_argv(root, "no-such-owner/no-such-data", held, "--output",
                      str(root / "bad-4"))],
        cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "no-such-owner/no-such-data" in lines[0] and "hub" in lines[0]
    assert "offline" in lines[0].lower() or "could not be loaded" in lines[0]


def test_data_that_is_not_a_regular_file_is_one_line_before_it_is_opened(own_data, capsys):
    root, _, held = own_data
    fifo = root / "pipe.parquet"  # opening it for reading would wait for a writer forever
    os.mkfifo(fifo)
    assert main(_study_argv(root, fifo, held, "--output", str(root / "bad-5"))) == 2
    line = _one_line(capsys)
    assert str(fifo) in line and "FIFO" in line and "refused before opening" in line


def test_a_folder_of_mixed_files_is_read_whole(tmp_path):
    from prefstudy.data import SkippedPairsWarning, load_any

    rows = _train_rows()
    pd.DataFrame(rows[:8]).to_parquet(tmp_path / "a.parquet", index=False)
    pd.DataFrame(rows[8:12]).assign(meta='{"lang": "en"}').to_csv(tmp_path / "b.csv",
                                                                   index=False)
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[12:]))
    (tmp_path / "README.md").write_text("my pairs")
    with pytest.warns(SkippedPairsWarning, match=r"skipped 1 folder entry: .*README\.md"):
        loaded = load_any(tmp_path)
    assert len(loaded) == 16 and [p.meta for p in loaded[8:12]] == [{"lang": "en"}] * 4
