"""Third-party pair text never reaches the repository: the keep_text rule (`paths.text_rule`) for
audits and runs, their files read back without texts, and the guard that no file tracked by git
holds a passage of the AlpacaEval annotations (shared/datasets/alpaca_eval, Apache-2.0: only
what is derived from them may be committed)."""

import dataclasses
import json
import os
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from prefstudy import paths
from prefstudy.audit import audit, read_audit, write_audit
from prefstudy.auditpage import render_page
from prefstudy.config import TrainConfig, load_config
from prefstudy.data import data_dir
from prefstudy.paths import TEXT_COLUMNS, text_rule

# --------------------------------------------------------------------------- the rule


def _pairs_file(folder: Path, n: int = 6) -> Path:
    """A few pairs nobody on the project wrote, as a user's JSONL file."""
    rows = [{"prompt": f"Question {i}: how do I water a plant of kind {i}?",
             "chosen": f"Water kind {i} once a week, more in summer. " * (1 + i % 3),
             "rejected": f"Never water kind {i}." + " Really." * (i % 4)} for i in range(n)]
    path = folder / "their_pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
    """A repository (`$PREFSTUDY_REPO`) with a reports/ folder, in tmp_path."""
    (tmp_path / "repo" / "reports").mkdir(parents=True)
    monkeypatch.setenv("PREFSTUDY_REPO", str(tmp_path / "repo"))
    return tmp_path / "repo"


def test_the_rule_drops_texts_of_others_pairs_in_reports_only(fake_repo, tmp_path, monkeypatch):
    theirs = _pairs_file(tmp_path)
    committed = fake_repo / "reports" / "audits" / "theirs"
    assert text_rule(committed, theirs) == {
        "keep_text": None, "text_kept": False, "text_kept_why": "third-party pairs written into "
        "the repository's reports/: ids and numbers only"}
    assert text_rule(tmp_path / "audits", theirs)["text_kept"]  # not committed: kept
    for own in (None, "data/pairs", data_dir() / "heldout", [None, "data/heldout"]):
        assert paths.keeps_text(committed, own), own  # the project's own pairs
    assert not paths.keeps_text(committed, ["data/pairs", theirs])  # one of them is not
    assert not paths.keeps_text(committed, "PairSet")  # not a path: not known to be ours
    assert text_rule(committed, theirs, keep_text=True)["text_kept"]
    assert not text_rule(tmp_path, None, keep_text=False)["text_kept"]
    monkeypatch.delenv("PREFSTUDY_REPO")
    monkeypatch.setattr(paths, "CHECKOUT", None)  # an installed package: no repository
    assert text_rule(paths.in_repo("reports", "x"), theirs)["text_kept"]


def test_a_run_decides_from_its_folder_and_its_pairs(fake_repo, tmp_path):
    from prefstudy.inputs import pair_texts

    theirs = str(_pairs_file(tmp_path))
    in_reports = str(fake_repo / "reports" / "runs")
    cfg = TrainConfig(data=theirs, output=in_reports, run_id="r")
    assert not pair_texts(cfg)["text_kept"]
    assert pair_texts(TrainConfig(output=in_reports, run_id="r"))["text_kept"]  # bundled data
    assert pair_texts(TrainConfig(data=theirs, output=str(tmp_path), run_id="r"))["text_kept"]
    assert pair_texts(dataclasses.replace(cfg, keep_text=True))["text_kept"]
    # keep_text changes what is written, not what is trained: the run id stays
    assert (dataclasses.replace(cfg, run_id=None).resolved().run_id
            == dataclasses.replace(cfg, run_id=None, keep_text=False).resolved().run_id)


# --------------------------------------------------------------------------- an audit


@pytest.fixture(scope="module")
def their_audit(tiny, tmp_path_factory):
    """An audit of a few pairs of a user's file at the tiny model, made once."""
    model, tok = tiny
    source = _pairs_file(tmp_path_factory.mktemp("theirs"))
    return audit(source, model=model, tokenizer=tok, factors=(), n_boot=20, progress=False)


def _written(folder: Path) -> tuple[pd.DataFrame, dict]:
    settings = json.loads((folder / "audit.json").read_text())["settings"]
    return pd.read_parquet(folder / "pairs.parquet"), settings


def test_write_audit_keeps_or_drops_the_texts_and_every_number(their_audit, fake_repo,
                                                               tmp_path):
    assert set(TEXT_COLUMNS) <= set(their_audit.pairs.columns)  # in memory: always
    write_audit(their_audit, tmp_path / "kept", keep_text=True)
    write_audit(their_audit, tmp_path / "dropped", keep_text=False)
    kept, kept_settings = _written(tmp_path / "kept")
    dropped, settings = _written(tmp_path / "dropped")
    assert set(TEXT_COLUMNS) <= set(kept.columns)
    assert not set(TEXT_COLUMNS) & set(dropped.columns)
    pd.testing.assert_frame_equal(dropped, kept.drop(columns=list(TEXT_COLUMNS)))
    for column in ("chars_p", "chars_n", "edit_distance", "prompt_group", "len_p", "gap"):
        assert dropped[column].notna().all(), column
    assert (kept_settings["keep_text"], kept_settings["text_kept"]) == (True, True)
    assert (settings["keep_text"], settings["text_kept"]) == (False, False)
    assert settings["text_kept_why"] == "keep_text=False given: ids and numbers only"
    # None: the rule, by where the audit is written
    committed = fake_repo / "reports" / "audit"
    write_audit(their_audit, committed, nested={"heldout": their_audit})
    write_audit(their_audit, tmp_path / "elsewhere")
    for folder in (committed, committed / "heldout"):
        pairs, settings = _written(folder)
        assert not set(TEXT_COLUMNS) & set(pairs.columns), folder
        assert settings["keep_text"] is None and "third-party" in settings["text_kept_why"]
    assert set(TEXT_COLUMNS) <= set(_written(tmp_path / "elsewhere")[0].columns)
    ours = dataclasses.replace(their_audit, settings={**their_audit.settings,
                                                      "data": "data/pairs"})
    write_audit(ours, fake_repo / "reports" / "ours")  # the bundled pairs: kept
    assert set(TEXT_COLUMNS) <= set(_written(fake_repo / "reports" / "ours")[0].columns)


def test_an_audit_without_texts_reads_back_and_renders(their_audit, tmp_path):
    write_audit(their_audit, tmp_path / "ids", keep_text=False)
    again = read_audit(tmp_path / "ids")
    assert not set(TEXT_COLUMNS) & set(again.pairs.columns)
    pd.testing.assert_frame_equal(again.length.reset_index(drop=True),
                                  their_audit.length.reset_index(drop=True))
    page = render_page(again, tmp_path / "page")
    assert "edit (Levenshtein) distance between chosen and rejected" in page
    assert (tmp_path / "page" / "figures").is_dir()


# --------------------------------------------------------------------------- a run


def test_a_run_with_keep_text_false_writes_ids_and_numbers(tmp_path):
    from prefstudy.explorer import TEXT_NOT_KEPT, _pair_html, explorer_data
    from prefstudy.report import build_report
    from prefstudy.tables import PAIR_COLUMNS, load_tables
    from prefstudy.train import train

    cfg = load_config(paths.REPO / "configs" / "tiny.toml", output=str(tmp_path / "runs"),
                      steps=2, eval_every=0, n_neutral=0, n_probes=0, keep_text=False)
    run = train(cfg, progress=False)
    pairs = pd.read_parquet(run / "pairs.parquet")
    assert not set(TEXT_COLUMNS) & set(pairs.columns)
    assert set(PAIR_COLUMNS) <= set(pairs.columns) and pairs.edit_distance.notna().all()
    config = json.loads((run / "config.json").read_text())
    assert (config["keep_text"], config["text_kept"]) == (False, False)
    assert config["text_kept_why"] == "keep_text=False given: ids and numbers only"
    tables = load_tables(run)
    assert set(tables.pairs.split) == {"train", "heldout"} and "prompt" not in tables.pairs
    pair_id = tables.evals.pair_id.iloc[0]
    data = explorer_data(tables.evals, pair_id=pair_id, pairs=tables.pairs)
    assert data.pair["text_kept"] is False and TEXT_NOT_KEPT in _pair_html(data)
    assert build_report(tmp_path / "runs", tmp_path / "report").exists()


# --------------------------------------------------------------------------- the guard

SHINGLE = 12  # words: a passage this long shared with the data is copied, not a coincidence
WORD = re.compile(r"[^\W_]+")  # a run of letters or digits
SKIPPED = (".png", ".jpg", ".jpeg", ".gguf", ".pt")  # binary: no text to hold
MAX_BYTES = 50 << 20
ALPACA_FIELDS = ("instruction", "output_1", "output_2")


def _words(text: str) -> list[str]:
    """Lower-cased runs of letters and digits; an escaped newline (backslash n, as JSON
    writes one) is a space, so `\\nHello` reads as `hello`."""
    return WORD.findall(text.replace("\\n", " ").lower())


def _shingles(words: list[str]):
    return (hash(tuple(words[i:i + SHINGLE])) for i in range(len(words) - SHINGLE + 1))


def _strings(value):
    """Every string in a parquet cell, however nested (lists, arrays, structs)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple) or hasattr(value, "tolist"):
        items = value.tolist() if hasattr(value, "tolist") else value
        for v in items if isinstance(items, list) else [items]:
            yield from _strings(v)


def _texts(path: Path):
    """The text a file holds: a parquet file's string cells (each once), else its bytes read as
    UTF-8 (undecodable bytes replaced)."""
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
        for column in frame.columns:
            if frame[column].dtype == object or pd.api.types.is_string_dtype(frame[column]):
                seen = set()
                for cell in frame[column]:
                    for text in _strings(cell):
                        if text not in seen:
                            seen.add(text)
                            yield text
        return
    yield path.read_bytes().decode("utf-8", errors="replace")


def third_party_passages(files, known: set[int]) -> list[str]:
    """`path: the first words` of each file among `files` holding a SHINGLE-word passage whose
    hash is in `known`; files over MAX_BYTES and binary images (SKIPPED) are not read."""
    found = []
    for path in map(Path, files):
        if path.suffix.lower() in SKIPPED or not path.is_file() or path.stat().st_size > MAX_BYTES:
            continue
        for text in _texts(path):
            words = _words(text)
            hit = next((i for i, h in enumerate(_shingles(words)) if h in known), None)
            if hit is not None:
                found.append(f"{path}: {' '.join(words[hit:hit + SHINGLE])}")
                break
    return found


def _alpaca_folder() -> Path | None:
    env = os.environ.get("PREFSTUDY_ALPACA_EVAL")
    folder = Path(env) if env else (paths.CHECKOUT / ".." / "shared" / "datasets" / "alpaca_eval"
                                    if paths.CHECKOUT else None)
    return folder if folder is not None and list(folder.glob("*.json")) else None


@pytest.fixture(scope="module")
def alpaca():
    """(the annotations' records, the hashes of their SHINGLE-word passages)."""
    folder = _alpaca_folder()
    if folder is None:
        pytest.skip("no AlpacaEval annotations ($PREFSTUDY_ALPACA_EVAL or "
                    "../shared/datasets/alpaca_eval beside the checkout)")
    records = [r for f in sorted(folder.glob("*.json")) for r in json.loads(f.read_text())]
    known = {h for r in records for k in ALPACA_FIELDS if isinstance(r.get(k), str)
             for h in _shingles(_words(r[k]))}
    assert len(known) > 10_000, folder
    return records, known


def _tracked() -> list[Path]:
    if paths.CHECKOUT is None:
        pytest.skip("not a source checkout")
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=paths.CHECKOUT, check=True,
                                capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (or no git)")
    return [paths.CHECKOUT / name for name in listed.decode().split("\0") if name]


def test_no_tracked_file_holds_a_passage_of_the_alpaca_eval_annotations(alpaca):
    files = _tracked()
    assert files, "git lists no files"
    found = third_party_passages(files, alpaca[1])
    assert not found, ("third-party text is committed (write ids and numbers only: "
                       "keep_text=False / --ids-only):\n" + "\n".join(found))


@pytest.fixture
def guarded():
    """What the guard is checked against: the AlpacaEval annotations where they are here, else
    records the test writes (so that the check that the guard can fail runs everywhere)."""
    folder = _alpaca_folder()
    if folder is not None:
        records = [r for f in sorted(folder.glob("*.json")) for r in json.loads(f.read_text())]
    else:
        words = [f"word{i}" for i in range(400)]
        records = [{k: "\n".join(" ".join(words[j + 40 * n:j + 40 * n + 20]) for j in (0, 20))
                    for n, k in enumerate(ALPACA_FIELDS)}]
    known = {h for r in records for k in ALPACA_FIELDS if isinstance(r.get(k), str)
             for h in _shingles(_words(r[k]))}
    return records, known


def test_the_guard_finds_a_copied_instruction_in_text_and_in_parquet(guarded, tmp_path):
    records, known = guarded
    record = next(r for r in records if r["output_2"].isascii() and all(
        len(_words(r[k])) >= SHINGLE + 3 for k in ALPACA_FIELDS))
    copied = tmp_path / "notes.md"
    copied.write_text("Some notes.\n\n> " + record["instruction"].upper() + "\n")
    nested = tmp_path / "pairs.parquet"
    pd.DataFrame({"pair_id": ["a"], "turns": [[{"role": "assistant",
                                                 "content": record["output_1"]}]]}
                 ).to_parquet(nested)
    escaped = tmp_path / "escaped.json"
    escaped.write_text(json.dumps({"text": record["output_2"]}))
    clean = tmp_path / "clean.txt"
    clean.write_text(" ".join(record["instruction"].split()[::-1]))  # the words, reordered
    found = third_party_passages([copied, nested, escaped, clean], known)
    assert [f.split(":")[0] for f in found] == [str(copied), str(nested), str(escaped)]
