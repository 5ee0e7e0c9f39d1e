import json
from pathlib import Path

import pandas as pd
import pytest

from prefstudy.data import (
    DataError,
    PreferencePair,
    SkippedPairsWarning,
    load_any,
    load_pairs,
    pairs_from_frame,
)


def write(tmp_path, lines, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_bytes(b"\n".join(
        (line if isinstance(line, bytes) else json.dumps(line, ensure_ascii=False).encode())
        for line in lines) + b"\n")
    return path


GOOD = {"prompt": "How are you?", "chosen": "Fine, thank you!", "rejected": "Whatever."}


def test_plain_jsonl_with_meta(tmp_path):
    rec = {**GOOD, "meta": {"lang": "en", "category": "politeness"}}
    pairs = load_pairs(write(tmp_path, [rec]))
    assert len(pairs) == 1 and pairs.skipped == ()
    p = pairs[0]
    assert (p.prompt, p.chosen, p.rejected) == (GOOD["prompt"], GOOD["chosen"], GOOD["rejected"])
    assert p.meta == {"lang": "en", "category": "politeness"}


def test_pair_id_is_stable_and_content_derived():
    a = PreferencePair("p", "c", "r", {"lang": "en"})
    assert a.pair_id == PreferencePair("p", "c", "r").pair_id  # meta does not change it
    assert a.pair_id != PreferencePair("p", "r", "c").pair_id
    assert len(a.pair_id) == 16 and int(a.pair_id, 16) >= 0


def test_conversational_explicit_and_implicit_prompt(tmp_path):
    user = [{"role": "user", "content": "Hi"}]
    explicit = {"prompt": user, "chosen": [{"role": "assistant", "content": "Hello!"}],
                "rejected": [{"role": "assistant", "content": "What."}]}
    implicit = {"chosen": user + [{"role": "assistant", "content": "Hello there!"}],
                "rejected": user + [{"role": "assistant", "content": "Go away."}]}
    pairs = load_pairs(write(tmp_path, [explicit, implicit]))
    assert [p.chosen for p in pairs] == ["Hello!", "Hello there!"]
    assert pairs[1].prompt == ({"role": "user", "content": "Hi"},)
    assert pairs[1].messages() == [{"role": "user", "content": "Hi"}]


def test_anthropic_hh_transcripts(tmp_path):
    head = "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant:"
    rec = {"chosen": head + " 6.", "rejected": head + " 7, I think."}
    pairs = load_pairs(write(tmp_path, [rec]))
    p = pairs[0]
    assert (p.chosen, p.rejected) == ("6.", "7, I think.")
    assert [m["role"] for m in p.prompt] == ["user", "assistant", "user"]
    assert p.prompt_text == "And 3+3?"


def test_dataframe_extra_columns_become_meta():
    df = pd.DataFrame([{**GOOD, "lang": "en"}, {**GOOD, "chosen": "Good!", "lang": None}])
    pairs = pairs_from_frame(df)
    assert pairs[0].meta == {"lang": "en"} and pairs[1].meta == {}
    with pytest.raises(DataError, match=r"DataFrame row:0: missing field 'rejected'"):
        pairs_from_frame(df.drop(columns="rejected"))


@pytest.mark.parametrize("line, message", [
    (b'{"prompt": "x", "chosen": ', r"pairs.jsonl:2: invalid JSON"),
    (json.dumps({"prompt": "x", "chosen": "y"}).encode(), r"pairs.jsonl:2: missing field 'rejected'"),
    (json.dumps({"prompt": "x", "chosen": 3, "rejected": "z"}).encode(),
     r"pairs.jsonl:2: field 'chosen' must be str, got int"),
    ('{"prompt": "caf\u00e9", "chosen": "a", "rejected": "b"}'.encode("latin-1"),
     r"pairs.jsonl:2: bytes that are not UTF-8"),
    (b'[1, 2]', r"pairs.jsonl:2: expected a JSON object"),
])
def test_malformed_records_name_file_line_and_field(tmp_path, line, message):
    with pytest.raises(DataError, match=message):
        load_pairs(write(tmp_path, [GOOD, line]))


def test_unusable_records_are_skipped_counted_and_strict_raises(tmp_path):
    head = "\n\nHuman: Hi\n\nAssistant:"
    lines = [
        GOOD,                                                  # 1 kept
        {**GOOD, "chosen": "  "},                              # 2 empty response
        {"chosen": head + " a", "rejected": "\n\nHuman: Yo\n\nAssistant: b"},  # 3 HH mismatch
        {**GOOD, "rejected": GOOD["chosen"]},                  # 4 identical
        GOOD,                                                  # 5 duplicate of 1
        {**GOOD, "prompt": "Another?"},                        # 6 kept
    ]
    path = write(tmp_path, lines)
    with pytest.warns(SkippedPairsWarning, match="skipped 4 of 6"):
        pairs = load_pairs(path)
    assert len(pairs) == 2
    assert [s.line for s in pairs.skipped] == [2, 3, 4, 5]
    reasons = " | ".join(s.reason for s in pairs.skipped)
    for word in ("empty chosen", "do not share a prompt", "identical", "duplicate of"):
        assert word in reasons
    with pytest.raises(DataError, match=r"pairs.jsonl:2: empty chosen"):
        load_pairs(path, strict=True)


def test_folder_loads_every_jsonl_in_name_order(tmp_path):
    write(tmp_path, [{**GOOD, "prompt": "b"}], "b.jsonl")
    write(tmp_path, [{**GOOD, "prompt": "a"}], "a.jsonl")
    assert [p.prompt for p in load_pairs(tmp_path)] == ["a", "b"]
    with pytest.raises(DataError, match="no such file"):
        load_pairs(tmp_path / "missing.jsonl")


def test_filter_and_frame(tmp_path):
    lines = [{**GOOD, "meta": {"lang": "en"}}, {**GOOD, "prompt": "你好", "meta": {"lang": "zh"}}]
    pairs = load_pairs(write(tmp_path, lines))
    assert [p.prompt for p in pairs.filter(lang="zh")] == ["你好"]
    df = pairs.to_frame()
    assert list(df.columns[:4]) == ["pair_id", "prompt", "chosen", "rejected"]
    assert df.lang.tolist() == ["en", "zh"]


def test_text_facts_give_length_ratio_and_edit_distance():
    from prefstudy.data import text_facts

    pairs = pd.DataFrame({"pair_id": ["a", "b", "c"], "prompt": "q",
                          "chosen": ["same", "abcd", "abc"], "rejected": ["same", "abce", "xyzxyz"]})
    out = text_facts(pairs)
    # b: one substitution of 4 characters; c: 6 edits (3 substitutions, 3 insertions) of 6
    assert list(out.edit_distance) == pytest.approx([0.0, 0.25, 1.0])
    assert list(out.len_ratio) == pytest.approx([1.0, 1.0, 2.0])


# --------------------------------------------------------------------------- what a loader is given


@pytest.fixture
def no_hang():
    """Fails a test that blocks (a FIFO opened for reading waits for a writer forever)."""
    import signal

    def hung(*_):
        raise TimeoutError("the loader blocked: it opened what it should have refused")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _socket(path):
    import socket

    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    return sock


def test_a_folder_reads_every_pairs_file_and_names_every_other_entry(tmp_path, no_hang):
    import gzip
    import os

    write(tmp_path, [{**GOOD, "prompt": "a"}], "a.jsonl")
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(
        json.dumps({**GOOD, "prompt": "b"}).encode() + b"\n"))
    pd.DataFrame([{**GOOD, "prompt": "c"}]).to_parquet(tmp_path / "c.parquet")
    pd.DataFrame([{**GOOD, "prompt": "d"}]).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame([{**GOOD, "prompt": "e"}]).to_parquet(tmp_path / "e.PQ")
    (tmp_path / "notes.txt").write_text("not pairs")
    write(tmp_path, [{**GOOD, "prompt": "hidden"}], ".hidden.jsonl")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", [{**GOOD, "prompt": "nested"}], "x.jsonl")
    os.mkfifo(tmp_path / "pipe.jsonl")
    sock = _socket(tmp_path / "sock.csv")
    (tmp_path / "loop.jsonl").symlink_to("loop.jsonl")
    (tmp_path / "gone.parquet").symlink_to("nowhere.parquet")
    (tmp_path / "link.jsonl").symlink_to("a.jsonl")  # a link to a pairs file is read (a repeat)
    try:
        for load in (load_pairs, load_any):
            with pytest.warns(SkippedPairsWarning) as caught:
                pairs = load(tmp_path)
            assert [p.prompt for p in pairs] == ["a", "b", "c", "d", "e"]  # nothing valid lost
            reasons = {Path(s.source).name: s.reason for s in pairs.skipped}
            assert set(reasons) == {".hidden.jsonl", "notes.txt", "sub", "pipe.jsonl",
                                    "sock.csv", "loop.jsonl", "gone.parquet", "link.jsonl"}
            assert "hidden" in reasons[".hidden.jsonl"] and "subfolder" in reasons["sub"]
            assert "not read" in reasons["notes.txt"] and "FIFO" in reasons["pipe.jsonl"]
            assert "socket" in reasons["sock.csv"] and "loop" in reasons["loop.jsonl"]
            assert "does not exist" in reasons["gone.parquet"]
            assert "duplicate of" in reasons["link.jsonl"]
            message = str(caught[0].message)
            assert "\n" not in message and "1 of 6 records and 7 folder entries" in message
    finally:
        sock.close()


def test_a_folder_with_nothing_to_read_names_what_it_holds(tmp_path):
    (tmp_path / "README.md").write_text("# data")
    (tmp_path / "sub").mkdir()
    with pytest.raises(DataError, match=r"holds no pairs file .*README\.md, sub"):
        load_any(tmp_path)


@pytest.mark.parametrize("kind", ["fifo", "device", "socket", "loop", "dangling"])
@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.parquet", "pairs.csv", "pairs"])
def test_what_is_not_a_regular_file_is_refused_before_it_is_opened(tmp_path, no_hang, kind, name):
    import os

    path, sock = tmp_path / name, None
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = _socket(path)
    elif kind == "loop":
        path.symlink_to(name)
    elif kind == "dangling":
        path.symlink_to(tmp_path / "nowhere")
    else:
        path.symlink_to("/dev/zero")
    expected = {"fifo": "a FIFO", "device": "a character device", "socket": "a socket",
                "loop": "a loop of symbolic links", "dangling": "which does not exist"}[kind]
    try:
        for load in (load_any, load_pairs):
            with pytest.raises(DataError, match=expected) as caught:
                load(path)
            assert str(path) in str(caught.value) and "\n" not in str(caught.value)
        with pytest.raises(DataError, match=expected):
            load_any("/dev/zero" if kind == "device" else str(path))
    finally:
        if sock is not None:
            sock.close()


def test_a_meta_column_holding_json_text_becomes_the_pairs_meta(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{**GOOD, "meta": json.dumps({"lang": "zh", "category": "tone", "n": 2}),
             "source": "web"},
            {**GOOD, "prompt": "Two?", "meta": "", "source": "book"}]
    pd.DataFrame(rows).to_csv(tmp_path / "pairs.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "text.parquet")
    for name in ("pairs.csv", "text.parquet"):
        pairs = load_any(tmp_path / name)
        assert pairs[0].meta == {"lang": "zh", "category": "tone", "n": 2, "source": "web"}
        assert pairs[1].meta == {"source": "book"}  # an empty cell: no meta, not lost text
    # a parquet map column (key/value pairs) and a struct column are meta too
    table = pa.table({"prompt": ["p"], "chosen": ["c"], "rejected": ["r"],
                      "meta": pa.array([[("lang", "en")]], pa.map_(pa.string(), pa.string()))})
    pq.write_table(table, tmp_path / "map.parquet")
    assert load_any(tmp_path / "map.parquet")[0].meta == {"lang": "en"}
    pd.DataFrame([{**GOOD, "meta": {"lang": "en"}}]).to_parquet(tmp_path / "struct.parquet")
    assert load_any(tmp_path / "struct.parquet")[0].meta == {"lang": "en"}
    # text that is not a JSON object names the file, the row and the column
    pd.DataFrame([{**GOOD, "meta": "lang=zh"}]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=r"bad\.csv row:0: field 'meta' must be a JSON object"):
        load_any(tmp_path / "bad.csv")
    pd.DataFrame([{**GOOD, "meta": "[1, 2]"}]).to_csv(tmp_path / "list.csv", index=False)
    with pytest.raises(DataError, match=r"list\.csv row:0: field 'meta' must be an object"):
        load_any(tmp_path / "list.csv")


def test_iterable_datasets_are_read_up_to_a_bound_or_refused_in_one_line(monkeypatch):
    datasets = pytest.importorskip("datasets")
    from prefstudy import data

    rows = [{**GOOD, "prompt": f"q{i}", "meta": {"i": i}} for i in range(5)]
    stream = datasets.Dataset.from_list(rows).to_iterable_dataset()
    assert [p.prompt for p in load_any(stream)] == [f"q{i}" for i in range(5)]
    both = datasets.IterableDatasetDict({"train": stream, "test": stream})
    assert len(load_any(both, split="test")) == 5
    with pytest.raises(DataError, match=r"splits \['train', 'test'\]; pass split="):
        load_any(both)

    def endless():  # a generator without features: columns come from its first row
        i = 0
        while True:
            yield {**GOOD, "prompt": f"p{i}"}
            i += 1

    forever = datasets.IterableDataset.from_generator(endless)
    monkeypatch.setattr(data, "STREAM_MAX_ROWS", 50)
    with pytest.raises(DataError, match=r"more than 50 rows .*pass max_rows=N") as caught:
        load_any(forever)
    assert "\n" not in str(caught.value)
    assert [p.prompt for p in load_any(forever, max_rows=3)] == ["p0", "p1", "p2"]

    def broken():
        yield GOOD
        raise ConnectionError("the hub went away")

    with pytest.raises(DataError, match=r"failed while it was read \(ConnectionError: the hub"):
        load_any(datasets.IterableDataset.from_generator(broken))
    no_chosen = datasets.IterableDataset.from_generator(lambda: iter([{"prompt": "p"}]))
    with pytest.raises(DataError, match=r"row:0: no layout recognises a record with fields "
                                        r"\['prompt'\]; layouts known: arena_conversations"):
        load_any(no_chosen)


def test_an_object_it_cannot_read_is_one_line_naming_what_it_reads():
    with pytest.raises(TypeError, match=r"cannot read pairs from a generator; it reads a path"):
        load_any(row for row in [GOOD])


# --------------------------------------------------------------------------- edit distance

# (a, b, Levenshtein edits counted by hand, longer length)
LEVENSHTEIN = [
    ("kitten", "sitting", 3, 7),  # k→s, e→i, insert g
    ("flaw", "lawn", 2, 4),  # delete f, insert n
    ("same", "same", 0, 4),
    ("", "abc", 3, 3),  # three insertions
    ("ab", "ba", 2, 2),  # two substitutions: shared characters, yet distance 1
    ("我喜欢猫", "我喜欢狗", 1, 4),  # one character substituted
    ("你好", "你好吗", 1, 3),  # one inserted
]


@pytest.mark.parametrize(("a", "b", "edits", "longer"), LEVENSHTEIN)
def test_edit_distance_is_levenshtein_over_the_longer_length(a, b, edits, longer):
    from prefstudy.data import edit_distance

    assert edit_distance(a, b) == pytest.approx(edits / longer)
    assert edit_distance(b, a) == edit_distance(a, b)  # symmetric (difflib's ratio is not)


def test_edit_distance_of_two_empty_texts_is_0_and_batches_match_single_calls():
    from prefstudy.data import edit_distance, edit_distances

    assert edit_distance("", "") == 0.0
    a, b = [x for x, _, _, _ in LEVENSHTEIN], [y for _, y, _, _ in LEVENSHTEIN]
    batch = edit_distances(a, b)
    assert batch.dtype == "float64" and batch.shape == (len(a),)
    assert batch.tolist() == [edit_distance(x, y) for x, y in zip(a, b)]
    assert edit_distances([], []).shape == (0,)
