"""The bundled data meet their spread requirements, the data card tells the truth, and
length-controlled variants change length only."""

import json
import warnings

import pytest

from prefstudy import datacard
from prefstudy.data import (
    PairSet,
    PreferencePair,
    SkippedPairsWarning,
    data_dir,
    load_pairs,
    load_probes,
    load_texts,
)
from prefstudy.formatting import markdown_table
from prefstudy.variants import length_variants, split_sentences


@pytest.fixture(scope="module")
def stats():
    return datacard.data_stats()


def _row(frame, **where):
    rows = frame
    for column, value in where.items():
        rows = rows[rows[column] == value]
    assert len(rows) == 1, where
    return rows.iloc[0]


# --------------------------------------------------------------------------- spread requirements


def test_at_least_400_training_pairs_150_per_language_all_labelled(stats):
    train = stats["pairs"][stats["pairs"].split == "train"]
    assert len(train) >= 400
    counts = train.lang.value_counts()
    assert counts.get("en", 0) >= 150 and counts.get("zh", 0) >= 150
    for pair in load_pairs(data_dir() / "pairs"):
        assert pair.meta.get("lang") in ("en", "zh") and pair.meta.get("category"), pair.meta


def test_length_spread(stats):
    s = _row(stats["spread"], split="train", lang="all", unit="chars")
    # a quarter of the pairs have one response more than twice as long as the other ...
    assert s.either_over_2x >= 0.25
    # ... in both directions, neither of them a token presence (at least 10% of pairs each)
    assert s.chosen_over_2x >= 0.10 and s.rejected_over_2x >= 0.10
    assert s.within_10pct >= 0.20  # a fifth within 10% of each other
    assert s.low_edit >= 0.15  # 15% with edit distance <= datacard.LOW_EDIT


def test_low_edit_definition():
    assert datacard.edit_distance("abc", "abc") == 0
    assert datacard.edit_distance("abc", "xyz") == 1
    assert datacard.edit_distance("15% of 80 is 12.", "15% of 80 is 16.") <= datacard.LOW_EDIT


def test_heldout_text_and_probes(stats):
    texts = stats["texts"]
    neutral = texts[texts.source == "neutral"]
    assert neutral.n.sum() >= 100 and set(neutral.lang) == {"en", "zh"}
    probes = texts[texts.source == "probes"]
    assert probes.n.sum() >= 24 and set(probes.lang) == {"en", "zh"}
    harmful = probes[probes.kind == "harmful"]
    assert set(harmful.lang) == {"en", "zh"}


def test_heldout_pairs_are_never_seen_in_training(stats):
    o = _row(stats["overlap"], split="heldout")
    assert o.pairs > 0 and o.same_pair_as_train == 0 and o.same_prompt_as_train == 0


def test_loaders_read_every_bundled_file_without_warnings():
    readers = {"pairs": load_pairs, "heldout": load_pairs, "neutral": load_texts,
               "filler": load_texts, "probes": load_probes}
    root = data_dir()
    every = {p.relative_to(root) for p in root.rglob("*.jsonl")}
    read = set()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for folder, reader in readers.items():
            for path in sorted((root / folder).glob("*.jsonl")):
                got = reader(path)
                assert len(got) > 0, path
                assert getattr(got, "skipped", ()) == (), path
                read.add(path.relative_to(root))
    assert read == every


# --------------------------------------------------------------------------- the card


def _section(card: str) -> str:
    """The text between the stats markers of `card`."""
    return card.split(datacard.START, 1)[1].split(datacard.END, 1)[0].lstrip("\n")


def test_card_statistics_are_current(stats, request):
    card = (data_dir() / "README.md").read_text(encoding="utf-8")
    section = _section(card)
    if "--tokens" in section.splitlines()[0]:  # written with token counts: recount them
        current = datacard.data_stats(tokenizer=request.getfixturevalue("tokenizer"))
    else:
        current = stats
    assert section == datacard.render_card(current), \
        "data/README.md is out of date: run `prefstudy data stats --write --tokens`"


def test_write_card_replaces_only_the_section(tmp_path, stats):
    card = tmp_path / "README.md"
    card.write_text(f"# head\n\n{datacard.START}\nold\n{datacard.END}\n\ntail\n", encoding="utf-8")
    datacard.write_card(card, stats)
    text = card.read_text(encoding="utf-8")
    assert text.startswith("# head\n\n") and text.endswith(f"{datacard.END}\n\ntail\n")
    assert "old" not in text and _section(text) == datacard.render_card(stats)
    with pytest.raises(ValueError, match="stats:start"):
        datacard.replace_section("no markers", "x")


def test_stats_of_another_data_root(tmp_path):
    (tmp_path / "pairs").mkdir()
    rows = [{"prompt": f"q{i}", "chosen": "A short answer." * (1 + 2 * (i % 2)),
             "rejected": "Another answer.", "meta": {"lang": "en", "category": "c"}}
            for i in range(4)]
    (tmp_path / "pairs" / "x.jsonl").write_text("\n".join(map(json.dumps, rows)), encoding="utf-8")
    stats = datacard.data_stats(tmp_path)
    s = _row(stats["spread"], split="train", lang="all", unit="chars")
    assert s.pairs == 4 and s.chosen_over_2x == 0.5 and s.rejected_over_2x == 0
    assert stats["overlap"].empty and stats["texts"].empty
    assert "| train | en | 4 | 4 |" in datacard.render_card(stats)


def test_markdown_table_escapes_pipes():
    import pandas as pd

    table = markdown_table(pd.DataFrame({"a": ["x|y"], "n": [1.5]}))
    assert table.splitlines() == ["| a | n |", "|---|---:|", "| x\\|y | 1.50 |"]


def test_numbers_have_one_meaning_per_name():
    import math

    import pandas as pd

    from prefstudy.formatting import interval_column, interval_label, number, percent, whole

    assert number(0.876, 2) == "0.88" and number(3891.4, 2) == "3891.40"
    assert number(123456.0, 2) == "1.23e+05" and number(math.nan) == "–" and number(None) == "–"
    assert whole(26.6) == "27" and percent(0.36) == "36.0%" and percent(0.364, 0) == "36%"
    assert interval_label(0.88, 0.79, 0.94) == "0.88 [0.79, 0.94]"
    assert interval_label(0.88, math.nan, math.nan) == "0.88"  # one seed: no interval
    assert interval_label(math.nan, 0.1, 0.2) == "–"
    assert interval_label(0.5, -0.2, 1.3, digits=0, share=True) == "50% [0, 100]"  # clipped to a share
    table = pd.DataFrame({"r2": [0.5, math.nan], "r2_lo": [0.4, 0.1], "r2_hi": [0.6, 0.2]})
    assert interval_column(table, "r2", 1).tolist() == ["0.5 [0.4, 0.6]", "–"]
    assert interval_column(table[["r2"]], "r2", 1).tolist() == ["0.5", "–"]  # no bound columns


# --------------------------------------------------------------------------- length variants

EN = PreferencePair(
    "How do I water a cactus?",
    "Water it deeply, then let the soil dry out completely before watering again.",
    "Cacti are fascinating plants. They come from many places. Some are tall. Some are small. "
    "They store water in their stems. Many have spines. Water them now and then.",
    {"lang": "en", "category": "helpfulness"},
)
ZH = PreferencePair("怎么给仙人掌浇水？", "浇透以后等土完全干了再浇。",
                    "仙人掌很有意思。它们来自很多地方。有的很高。有的很矮。偶尔浇点水就行。",
                    {"lang": "zh", "category": "helpfulness"})
FILLER = {"en": ["Filler one.", "Filler two here.", "Filler three is longer."],
          "zh": ["希望有帮助。", "祝你顺利。", "有问题再问我。"]}


def _by_factor(variants):
    return {p.meta["factor"]: p for p in variants}


@pytest.mark.parametrize("pair", [EN, ZH], ids=["en", "zh"])
def test_lengthening_appends_filler_of_the_language(pair):
    v = _by_factor(length_variants([pair], (2, 4)))
    for factor, variant in v.items():
        assert len(variant.rejected) >= factor * len(pair.rejected)
        assert variant.rejected.startswith(pair.rejected) and variant.chosen == pair.chosen
        assert variant.meta["achieved_ratio"] == len(variant.rejected) / len(pair.rejected)
        added = variant.rejected[len(pair.rejected):]
        assert (added.isascii() if pair.meta["lang"] == "en" else not any(
            c.isascii() and c.isalpha() for c in added))
    assert v[4.0].rejected.startswith(v[2.0].rejected)  # a larger factor extends a smaller one


@pytest.mark.parametrize("pair", [EN, ZH], ids=["en", "zh"])
def test_shortening_keeps_leading_sentences(pair):
    half = _by_factor(length_variants([pair], (0.5,)))[0.5]
    assert pair.rejected.startswith(half.rejected) and half.rejected
    assert 0.35 <= half.meta["achieved_ratio"] <= 0.65
    assert half.rejected[-1] in ".。"  # whole sentences
    assert half.chosen == pair.chosen


def test_shortening_never_empty_and_one_sentence_is_cut_at_a_word():
    for factor in (0.01, 0.3):
        v = length_variants([EN], (factor,), side="chosen")[0]
        assert v.chosen and EN.chosen.startswith(v.chosen)
        cut = len(v.chosen)
        assert EN.chosen[cut] == " " or not EN.chosen[cut - 1].isalnum()
    assert length_variants([EN], (0.01,))[0].rejected == "Cacti are fascinating plants."
    assert length_variants([ZH], (0.5,), side="chosen")[0].chosen == ZH.chosen[:6]  # round(0.5 × 13) characters


def test_meta_records_variant_and_keeps_labels():
    variants = length_variants([EN, ZH], (0.5, 1, 2), side="chosen", filler=FILLER)
    assert len(variants) == 6
    assert [p.meta["factor"] for p in variants] == [0.5, 1.0, 2.0] * 2
    for p in variants:
        original = EN if p.meta["lang"] == "en" else ZH
        assert p.meta["variant_of"] == original.pair_id and p.meta["side"] == "chosen"
        assert p.meta["category"] == "helpfulness"
        assert p.rejected == original.rejected and p.chosen != p.rejected
        assert p.meta["achieved_ratio"] == pytest.approx(len(p.chosen) / len(original.chosen))
    assert _by_factor(variants[:3])[1.0] == EN  # factor 1 is the unchanged control


def test_variants_are_deterministic_in_the_seed():
    def texts(seed):
        return [p.rejected for p in length_variants([EN, ZH], (3, 6), seed=seed)]

    assert texts(0) == texts(0)
    assert texts(0) != texts(1)


def test_variant_equal_to_the_other_side_is_skipped():
    pair = PreferencePair("q", "Yes.", "Yes. But no.", {"lang": "en"})
    with pytest.warns(SkippedPairsWarning, match="would equal"):
        got = length_variants([pair], (0.3, 1))
    assert isinstance(got, PairSet) and [p.meta["factor"] for p in got] == [1.0]
    assert len(got.skipped) == 1


def test_variant_arguments_are_checked():
    with pytest.raises(ValueError, match="side"):
        length_variants([EN], side="both")
    with pytest.raises(ValueError, match="positive"):
        length_variants([EN], (0,))
    with pytest.raises(ValueError, match="no filler for meta lang='fr'"):
        length_variants([PreferencePair("q", "a", "b", {"lang": "fr"})], (2,))


def test_split_sentences_concatenates_back():
    for text in (EN.rejected, ZH.rejected, "Pi is 3.14. Yes!  Fine", "他说：“好。”然后走了。"):
        assert "".join(split_sentences(text)) == text
    assert split_sentences("Pi is 3.14. Yes!") == ["Pi is 3.14. ", "Yes!"]
    assert split_sentences("他说：“好。”然后走了。") == ["他说：“好。”", "然后走了。"]


def test_variants_of_the_bundled_pairs_stay_valid():
    pairs = load_pairs(data_dir() / "pairs")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        variants = length_variants(pairs, (0.5, 2))
    assert len(variants) == 2 * len(pairs)
    assert all(p.chosen and p.rejected and p.chosen != p.rejected for p in variants)
    doubled = [p.meta["achieved_ratio"] for p in variants if p.meta["factor"] == 2]
    assert min(doubled) >= 2
