"""The bundled neutral text is a sample to bootstrap over: at least 200 distinct passages, both
languages well represented, each at least 50 SmolLM2 tokens as perplexity counts them."""

import json

import pytest

from prefstudy.data import data_dir, load_texts

MIN_PASSAGES = 200
MIN_PER_LANG = 100
MIN_TOKENS = 50


@pytest.fixture(scope="module")
def neutral():
    return load_texts(data_dir() / "neutral")


def test_at_least_200_passages_with_both_languages(neutral):
    assert len(neutral) >= MIN_PASSAGES
    counts = neutral.lang.value_counts()
    assert set(counts.index) == {"en", "zh"}
    assert counts["en"] >= MIN_PER_LANG and counts["zh"] >= MIN_PER_LANG, counts.to_dict()


def test_no_passage_repeats(neutral):
    texts = neutral.text.str.strip()
    assert not texts.duplicated().any(), list(texts[texts.duplicated()])


def test_every_passage_is_at_least_50_tokens(neutral, tokenizer):
    # the tiny preset's tokenizer (SmolLM2's, offline: tests/conftest.py), shared with the other
    # tests; a passage tokenised as prefstudy.evaluate.perplexity tokenises it
    lengths = [len(ids) for ids in tokenizer(list(neutral.text))["input_ids"]]
    short = {t[:60]: n for t, n in zip(neutral.text, lengths) if n < MIN_TOKENS}
    assert not short, short


def test_files_keep_their_format():
    for path in sorted((data_dir() / "neutral").glob("*.jsonl")):
        lang = path.stem
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            assert list(record) == ["text", "lang"] and record["lang"] == lang, line
            assert json.dumps(record, ensure_ascii=False) == line, line
