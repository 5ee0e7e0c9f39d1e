import json

import pandas as pd
import pytest

from prefstudy.data import (
    DataError,
    PreferencePair,
    SkippedPairsWarning,
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
    with pytest.raises(DataError, match="missing column.*rejected"):
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
    assert list(out.edit_distance) == pytest.approx([0.0, 0.25, 1.0])  # 1 − 2·3/8 for b
    assert list(out.len_ratio) == pytest.approx([1.0, 1.0, 2.0])
