"""`prefstudy audit`: loaders, sampling, the audit's statistics on tables whose answer is known,
the figures, the page, and the command end to end on the bundled pairs and on HH transcripts."""

import json
import math
import sys
import types
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from prefstudy import auditplots, auditstats
from prefstudy import diagnostics as dg
from prefstudy.audit import Audit, audit, audit_tables, write_audit
from prefstudy.auditpage import render_page
from prefstudy.cli import main
from prefstudy.data import (
    DataError,
    PairSet,
    PreferencePair,
    data_dir,
    load_any,
    load_pairs,
    sample_pairs,
    strata_keys,
)
from prefstudy.scoring import encode_for_scoring, length_table, score_pairs
from prefstudy.variants import length_variants, script_lang


@pytest.fixture(scope="module")
def bundled():
    return load_pairs(data_dir() / "pairs")


def _ids(pairs):
    return [p.pair_id for p in pairs]


# --------------------------------------------------------------------------- loading


def test_parquet_csv_frame_and_datasets_load_the_same_pairs(bundled, tmp_path):
    datasets = pytest.importorskip("datasets")
    frame = bundled[:40].to_frame()
    frame.to_parquet(tmp_path / "pairs.parquet")
    frame.to_csv(tmp_path / "pairs.csv", index=False)
    dataset = datasets.Dataset.from_pandas(frame)
    dataset.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "saved_dict"))
    want = bundled[:40]
    for source in (frame, tmp_path / "pairs.parquet", str(tmp_path / "pairs.csv"), dataset,
                   tmp_path / "saved", tmp_path / "saved_dict"):
        got = load_any(source)
        assert _ids(got) == _ids(want), source
        assert [p.meta for p in got] == [p.meta for p in want], source
    assert load_any(want) is want
    with pytest.warns(UserWarning, match="duplicate of pairs:0"):
        repeated = load_any([want[0], want[1], want[0]])
    assert _ids(repeated) == _ids(want[:2]) and len(repeated.skipped) == 1


def test_conversational_and_hh_rows_load_from_parquet_and_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    user = [{"role": "user", "content": "Hi"}]
    rows = [{"chosen": user + [{"role": "assistant", "content": "Hello there!"}],
             "rejected": user + [{"role": "assistant", "content": "Go away."}]},
            {"chosen": "\n\nHuman: 2+2?\n\nAssistant: 4.",
             "rejected": "\n\nHuman: 2+2?\n\nAssistant: 5."}]
    pd.DataFrame(rows[:1]).to_parquet(tmp_path / "messages.parquet")
    got = load_any(tmp_path / "messages.parquet")
    assert got[0].prompt == ({"role": "user", "content": "Hi"},) and got[0].chosen == "Hello there!"
    hh = load_any(datasets.Dataset.from_list(rows[1:]))
    assert (hh[0].chosen, hh[0].rejected, hh[0].prompt_text) == ("4.", "5.", "2+2?")
    # UltraFeedback-binarized: the prompt as text, the replies as conversations
    text_prompt = load_any(pd.DataFrame([{"prompt": "Hi", **rows[0]}]))
    assert text_prompt[0].prompt == ({"role": "user", "content": "Hi"},)


def test_dataset_dict_needs_a_split_when_it_has_several(bundled):
    datasets = pytest.importorskip("datasets")
    frame = bundled[:4].to_frame()
    both = datasets.DatasetDict({"train": datasets.Dataset.from_pandas(frame),
                                 "test": datasets.Dataset.from_pandas(frame[:2])})
    with pytest.raises(DataError, match=r"splits \['train', 'test'\]; pass split="):
        load_any(both)
    assert len(load_any(both, split="test")) == 2


def test_a_hub_id_offline_fails_in_one_line_naming_it(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="nobody-here/no-such-dataset: no such file or folder, "
                                        "and the Hugging Face hub dataset could not be loaded"):
        load_any("nobody-here/no-such-dataset")
    with pytest.raises(DataError, match="missing.parquet: no such file"):
        load_any("missing.parquet")


def test_without_datasets_the_error_names_the_extra(monkeypatch, tmp_path):
    (tmp_path / "state.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"prefstudy\[audit\]"):
        load_any(tmp_path)


# --------------------------------------------------------------------------- sampling


def test_max_pairs_sample_is_stratified_seeded_and_not_the_first(bundled):
    a, b, c = (sample_pairs(bundled, 24, seed=s) for s in (0, 0, 1))
    assert _ids(a) == _ids(b) and _ids(a) != _ids(c)
    assert _ids(a) != _ids(bundled[:24])
    assert strata_keys(bundled) == ("lang", "category")
    strata = pd.Series([(p.meta["lang"], p.meta["category"]) for p in a]).value_counts()
    assert len(strata) == 10 and strata.sum() == 24  # every lang × category is represented
    sizes = pd.Series([(p.meta["lang"], p.meta["category"]) for p in bundled]).value_counts()
    assert (strata - 24 * sizes / len(bundled)).abs().max() < 1  # proportional allocation
    order = {pid: i for i, pid in enumerate(_ids(bundled))}
    assert [order[i] for i in _ids(a)] == sorted(order[i] for i in _ids(a))
    assert sample_pairs(bundled, 10_000) is bundled


def test_pairs_without_metadata_are_sampled_at_random():
    pairs = PairSet(tuple(PreferencePair(f"q{i}", f"a{i}", f"b{i}") for i in range(50)))
    assert strata_keys(pairs) == ()
    got = sample_pairs(pairs, 10, seed=3)
    assert len(got) == 10 and _ids(got) == _ids(sample_pairs(pairs, 10, seed=3))
    assert _ids(got) != _ids(pairs[:10])


# --------------------------------------------------------------------------- variants and cuts

EN = PreferencePair("How?", "Like this.", "Watering a cactus is easy. Do it rarely.")
ZH = PreferencePair("怎么给仙人掌浇水？", "浇透以后等土干了再浇。", "仙人掌很有意思。偶尔浇点水就行。")


def test_variants_without_lang_use_the_filler_of_their_script():
    assert (script_lang(ZH.rejected), script_lang(EN.rejected), script_lang("123")) == (
        "zh", "en", "en")
    for pair, ascii_filler in ((EN, True), (ZH, False)):
        longer = length_variants([pair], (3,))[0].rejected
        added = longer[len(pair.rejected):]
        assert longer.startswith(pair.rejected) and len(longer) >= 3 * len(pair.rejected)
        assert any(c.isascii() and c.isalpha() for c in added) == ascii_filler
    french = PreferencePair("Quoi ?", "Une réponse utile.", "Non.", {"lang": "fr"})
    with pytest.raises(ValueError, match="no filler for meta lang='fr'"):
        length_variants([french], (2,))
    got = length_variants([french], (2,), unknown_lang="script")[0]
    assert got.meta["filler_lang"] == "en" and got.meta["lang"] == "fr"


def test_score_pairs_cuts_nothing_without_max_length(tiny):
    model, tok = tiny
    long = PreferencePair("Tell me.", "word " * 300, "other " * 280)
    whole = score_pairs(model, tok, [long], max_length=None).iloc[0]
    assert whole.len_p == whole.len_p_full > 256 and not whole.truncated
    cut = score_pairs(model, tok, [long], max_length=64, max_prompt_length=32).iloc[0]
    assert cut.truncated and cut.len_p == 64 - cut.prompt_len < cut.len_p_full == whole.len_p


@pytest.mark.parametrize("attention, row_tokens", [("sdpa", 4096), ("eager", 4096),
                                                   ("sdpa", 40)])
def test_packed_rows_score_what_one_row_per_sequence_scores(tiny, bundled, monkeypatch,
                                                            attention, row_tokens):
    import prefstudy.scoring as scoring

    model, tok = tiny
    monkeypatch.setattr(model.config, "_attn_implementation", attention)
    monkeypatch.setattr(scoring, "MAX_ROW_TOKENS", row_tokens)  # 40: a prompt over several rows
    pairs = list(sample_pairs(bundled, 10, seed=4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        variants = list(length_variants(pairs[:3], (0.5, 1, 2)))  # factor 1 repeats a pair
    both = pairs + variants
    plain = score_pairs(model, tok, both, max_length=None, packed=False, batch_size=3)
    packed = score_pairs(model, tok, both, max_length=None, packed=True, batch_size=3)
    assert len(plain) == len(packed) == len(both)  # one row per pair given, repeats too
    assert (packed.pair_id == plain.pair_id).all() and (packed.len_n == plain.len_n).all()
    for column in ("nll_sum_p", "nll_sum_n", "loss_p", "loss_n"):
        assert np.allclose(packed[column], plain[column], rtol=1e-5, atol=1e-3), column


def test_cut_table_says_what_encode_pairs_does(tiny, bundled):
    _, tok = tiny
    pairs = sample_pairs(bundled, 60, seed=1)
    inputs = encode_for_scoring(pairs, tok, max_length=48, max_prompt_length=40)
    cuts = auditstats.cut_table(length_table(inputs.full), max_length=48, max_prompt_length=40)
    kept = {e.pair_id: e.truncated for e in inputs.encoded.items}
    dropped = {pid for pid, _ in inputs.dropped}
    assert set(cuts.pair_id[cuts.identical]) == dropped and dropped
    live = cuts[~cuts.identical]
    assert dict(zip(live.pair_id, live.truncated)) == kept
    summary = auditstats.cut_summary(cuts)
    assert summary["identical"] == len(dropped) and summary["truncated"] == int(cuts.truncated.sum())


# --------------------------------------------------------------------------- statistics


def _scores(rows):
    """A score table from (len_p, len_n, gap_sum, gap) rows, with consistent record columns."""
    df = pd.DataFrame(rows, columns=["len_p", "len_n", "gap_sum", "gap"])
    df.insert(0, "pair_id", [f"p{i}" for i in range(len(df))])
    df["nll_sum_p"] = 2.0 * df.len_p
    df["nll_sum_n"] = df.nll_sum_p + df.gap_sum
    df["loss_p"] = 1.0
    df["loss_n"] = 1.0 + df.gap
    return df


def test_length_effect_of_a_gap_exactly_proportional_to_dlen():
    rng = np.random.default_rng(0)
    len_p, len_n = rng.integers(5, 200, 40), rng.integers(5, 200, 40)
    scores = _scores(list(zip(len_p, len_n, 2.5 * (len_n - len_p), rng.normal(0, 0.1, 40))))
    length = audit_tables(scores, n_boot=200)["length"].set_index("normalisation")
    assert list(length.index) == ["sum", "mean"]
    assert length.r2["sum"] == pytest.approx(1.0) and length.slope["sum"] == pytest.approx(2.5)
    assert length.spearman["sum"] == pytest.approx(1.0)
    assert length.slope_lo["sum"] == pytest.approx(2.5) and length.slope_hi["sum"] == pytest.approx(2.5)
    assert length.n["sum"] == 40 and length.r2["mean"] < 0.3


ACCURACY_ROWS = [  # len_p, len_n, gap_sum, gap
    (30, 10, 1.0, 0.1), (30, 10, -1.0, 0.2), (15, 10, -2.0, 0.0),     # chosen longer (15 = 1.5×)
    (10, 20, 5.0, -0.1), (10, 15, 3.0, 0.1),                         # rejected longer
    (10, 12, 0.0, 0.3), (14, 10, -1.0, 0.3), (10, 10, 2.0, -0.2),    # similar
]


def test_accuracy_counts_by_hand():
    scores = _scores(ACCURACY_ROWS)
    assert list(auditstats.length_kinds(scores)) == (
        ["chosen longer"] * 3 + ["rejected longer"] * 2 + ["similar"] * 3)
    acc = auditstats.preference_accuracy(scores).set_index(["normalisation", "length_kind"])
    by_hand = {("sum", "chosen longer"): (1, 3, 0), ("sum", "rejected longer"): (2, 2, 0),
               ("sum", "similar"): (1, 3, 1), ("sum", "all"): (4, 8, 1),
               ("mean", "chosen longer"): (2, 3, 1), ("mean", "rejected longer"): (1, 2, 0),
               ("mean", "similar"): (2, 3, 0), ("mean", "all"): (5, 8, 1)}
    for key, (k, n, ties) in by_hand.items():
        row = acc.loc[key]
        assert (row.k, row.n, row.n_ties) == (k, n, ties), key
        # exact Clopper–Pearson: beta quantiles
        lo = stats.beta.ppf(0.025, k, n - k + 1) if k else 0.0
        hi = stats.beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
        assert (row.accuracy_lo, row.accuracy_hi) == pytest.approx((lo, hi), abs=1e-9), key
    longer = auditstats.chosen_longer_share(scores).iloc[0]
    assert (longer.k, longer.n, longer.n_equal) == (4, 8, 1)


def _dose_rows():
    """Three pairs, four variants each; achieved token ratios differ from the nominal factors,
    and each pair's summed gap is exactly slope × log2(achieved ratio) + its own offset."""
    rows = []
    for pair, (slope, base, offset) in enumerate([(3.0, 20, 1.0), (4.0, 40, -2.0),
                                                  (5.0, 10, 0.5)]):
        for factor, ratio in ((0.5, 0.4), (1.0, 1.0), (2.0, 2.5), (4.0, 3.0)):
            len_n = base * ratio
            rows.append({"variant_of": f"v{pair}", "factor": factor, "len_p": 12,
                         "len_n": len_n, "gap_sum": offset + slope * math.log2(ratio),
                         "gap": 0.01 * pair, "achieved_ratio": factor * 1.1})
    return pd.DataFrame(rows)


def test_dose_slope_per_achieved_doubling_on_constructed_variants():
    dose = auditstats.dose_token_ratios(_dose_rows())
    assert dose.token_ratio.round(6).tolist() == [0.4, 1.0, 2.5, 3.0] * 3
    slopes = auditstats.dose_pair_slopes(dose)
    per_pair = slopes[slopes.normalisation == "sum"].set_index("variant_of").slope
    assert per_pair.to_dict() == pytest.approx({"v0": 3.0, "v1": 4.0, "v2": 5.0})
    assert slopes[slopes.normalisation == "mean"].slope.abs().max() < 1e-12
    summary = auditstats.dose_slope_summary(slopes, n_boot=500).set_index("normalisation")
    assert summary.slope["sum"] == pytest.approx(4.0) and summary.n_pairs["sum"] == 3
    assert 3.0 <= summary.slope_lo["sum"] <= 4.0 <= summary.slope_hi["sum"] <= 5.0
    factors = auditstats.dose_by_factor(dose).set_index(["normalisation", "factor"])
    assert factors.token_ratio[("sum", 2.0)] == pytest.approx(2.5)
    assert factors.char_ratio[("sum", 4.0)] == pytest.approx(4.4)
    assert factors.dgap[("sum", 2.0)] == pytest.approx(4.0 * math.log2(2.5))


def test_dose_variants_without_a_scored_control_are_left_out():
    rows = _dose_rows()
    rows = rows[~((rows.variant_of == "v1") & (rows.factor == 1.0))]
    assert set(auditstats.dose_token_ratios(rows).variant_of) == {"v0", "v2"}


def test_near_duplicates_are_pairs_of_one_prompt_with_close_answers():
    frame = pd.DataFrame({"pair_id": ["a", "b", "c", "d"],
                          "prompt": ["Hi there", "hi  THERE", "Hi there", "Other"],
                          "chosen": ["Hello, friend!", "Hello, friend.", "Something else", "x"],
                          "rejected": ["Go away now.", "Go away now!", "Go away now.", "y"]})
    got = auditstats.near_duplicates(frame).set_index("pair_id")
    assert got.prompt_group.to_dict() == {"a": 3, "b": 3, "c": 3, "d": 1}
    assert got.duplicate_of.isna().tolist() == [True, False, True, True]
    assert got.duplicate_of["b"] == "a"


# --------------------------------------------------------------------------- gradients


def _fake_gradients():
    """Two objectives × 12 pairs in 3 batches of 4; naive's norm is 2 × tokens, DPO's β/2 =
    0.05 × naive's, naive-mean's constant; cosines known."""
    rows = []
    for label, scale in (("naive-sum", 1.0), ("dpo", 0.05), ("naive-mean", None)):
        for i in range(12):
            len_p, len_n = 10 + 3 * i, 40 - 2 * i
            tokens = len_p + len_n
            rows.append({"objective": label.split("-")[0], "label": label, "pair_id": f"p{i}",
                         "batch": f"a{i // 4}",
                         "len_p": len_p, "len_n": len_n,
                         "grad_norm": 1.0 if scale is None else scale * 2.0 * tokens + 0 * i,
                         "grad_cos_loo": 0.1 * (i % 4) - 0.05, "grad_cos_orthogonal": 0.0,
                         "entanglement": 0.5 + 0.01 * i, "ches": float(i)})
    frame = pd.DataFrame(rows)
    return frame


def test_gradient_summary_and_the_dpo_scale():
    grads = _fake_gradients()
    summary = auditstats.gradient_summary(grads, n_boot=200).set_index("label")
    assert summary.norm_r2["naive-sum"] == pytest.approx(1.0)
    assert summary.cos_loo["naive-sum"] == pytest.approx(np.mean([-0.05, 0.05, 0.15, 0.25]))
    assert summary.n_pairs["dpo"] == 12
    assert summary.share_opposed["naive-sum"] == pytest.approx(0.25)
    unlabelled = auditstats.gradient_summary(grads.drop(columns="label"), n_boot=0)
    assert unlabelled.objective.tolist() == ["dpo", "naive"]  # without labels, by objective
    scale = auditstats.gradient_scale(grads, of="dpo", to="naive-sum")
    assert scale["n"] == 12 and scale["median"] == pytest.approx(0.05)


def test_audit_calls_the_gradient_audit_by_its_contract(tiny, bundled, monkeypatch, tmp_path):
    calls = []

    def gradient_audit(model, tokenizer, pairs, *, objectives=(), batch_size=4,
                       max_length=None, max_prompt_length=None, seed=0, progress=None):
        calls.append({"pairs": len(pairs), "batch_size": batch_size, "seed": seed,
                      "max_length": max_length, "objectives": objectives})
        fake = _fake_gradients()
        ids = [p.pair_id for p in pairs]
        return fake.assign(pair_id=fake.pair_id.map({f"p{i}": pid for i, pid in enumerate(ids)}))

    monkeypatch.setitem(sys.modules, "prefstudy.gradaudit", types.SimpleNamespace(
        gradient_audit=gradient_audit, DEFAULT_GRADIENT_OBJECTIVES=(("naive", {"norm": "sum"}),)))
    model, tok = tiny
    result = audit(sample_pairs(bundled, 12), model=model, tokenizer=tok, gradients=True,
                   gradient_pairs=12, dose_pairs=3, factors=(2.0,), n_boot=50)
    assert calls == [{"pairs": 12, "batch_size": 4, "seed": 0, "max_length": None,
                      "objectives": (("naive", {"norm": "sum"}), ("dpo", {}))}]
    assert set(result.gradient_summary.label) == {"naive-sum", "dpo", "naive-mean"}
    page = write_audit(result, tmp_path).read_text()
    assert "β/2 × the gradient of the naive summed objective" in page
    assert "grad_norm(dpo) / grad_norm(naive-sum) = 0.0500" in page
    for name in ("gradient_norm", "gradient_cosine", "entanglement"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 0
    assert len(pd.read_parquet(tmp_path / "gradients.parquet")) == 36


# --------------------------------------------------------------------------- figures


def test_audit_figures_draw_the_tables_they_are_given():
    scores = _scores(ACCURACY_ROWS)
    acc = auditstats.preference_accuracy(scores)
    acc = acc[acc.length_kind != "all"]
    ax = auditplots.accuracy_plot(acc, order=list(auditstats.LENGTH_KINDS), hue_order=["sum", "mean"])
    assert [t.get_text() for t in ax.get_yticklabels()] == list(auditstats.LENGTH_KINDS)
    assert "1 of 3" in [t.get_text() for t in ax.texts]
    dose = auditstats.dose_token_ratios(_dose_rows())
    slopes = auditstats.dose_slope_summary(auditstats.dose_pair_slopes(dose), n_boot=100)
    grid = auditplots.dose_plot(auditstats.dose_gaps(dose), summary=auditstats.dose_by_factor(dose),
                           slopes=slopes, col_order=["sum", "mean"])
    titles = [ax.get_title() for ax in grid.axes.flat]
    assert titles[0].startswith("sum\nper doubling: 4.00") and len(titles) == 2
    assert len(grid.axes.flat[0].lines) >= 3  # one line per pair, then the means
    grads = _fake_gradients()
    ax = auditplots.distribution_plot(grads, x="grad_cos_loo", y="label",
                                 baseline="grad_cos_orthogonal")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["dpo", "naive-mean", "naive-sum"]
    fig = auditplots.distribution_panels(grads, columns=("entanglement", "ches"), y="label")
    assert len(fig.axes) == 2
    ax = auditplots.histogram_plot(pd.DataFrame({"edit_distance": [0.1, 0.2, 0.9]}), bins=10,
                              binrange=(0, 1))
    assert sum(p.get_height() for p in ax.patches) == 3


# --------------------------------------------------------------------------- end to end


def _cli(args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(["audit", *map(str, args), "--model", "tiny", "--device", "cpu",
                     "--n-boot", "100"])


def test_audit_command_on_the_bundled_pairs(tmp_path, bundled):
    out = tmp_path / "audit"
    assert _cli([data_dir() / "pairs", "--max-pairs", 24, "--dose-pairs", 8, "--out", out]) == 0
    table = pd.read_parquet(out / "pairs.parquet")
    assert len(table) == 24 and table.pair_id.is_unique
    for column in ("pair_id", "len_p", "len_n", "loss_p", "loss_n", "nll_sum_p", "nll_sum_n",
                   "gap", "gap_sum", "dlen", "length_kind", "edit_distance", "meta_length_kind"):
        assert column in table.columns, column
    assert np.allclose(table.gap, table.loss_n - table.loss_p)
    assert np.allclose(table.loss_p, table.nll_sum_p / table.len_p)
    assert set(table.pair_id) == set(_ids(sample_pairs(bundled, 24, seed=0)))
    assert table.groupby(["lang", "category"]).size().size == 10
    saved = json.loads((out / "audit.json").read_text())
    gaps = dg.gap_normalisations(table, keep=("pair_id",))
    r2 = dg.length_effect(gaps, n_boot=0).set_index("normalisation").r2
    assert {r["normalisation"]: r["r2"] for r in saved["length"]} == pytest.approx(r2.to_dict())
    page = (out / "README.md").read_text()
    k, n = int((table.gap_sum > 0).sum()), len(table)
    assert f"| sum | all | {k} of {n} (" in page
    assert "stratified random sample of 24 (over lang × category, seed 0)" in page
    assert "Nothing was cut" in page
    for name in ("gap_vs_length", "accuracy", "dose", "edit_distance"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000, name
    dose = pd.read_parquet(out / "dose.parquet")
    assert dose.variant_of.nunique() == 8 and set(dose.factor) == {0.5, 1.0, 2.0, 4.0}
    assert set(dose.variant_of) <= set(table.pair_id)


def _hh_lines():
    heads = ["What is the capital of France?", "How do I boil an egg?", "我应该怎么学习编程？",
             "Can you help me write a haiku?", "如何保持健康？", "Why is the sky blue?"]
    answers = [("Paris. It is also the largest city.", "I think it might be Lyon or Nice."),
               ("Put it in boiling water for nine minutes, then cool it.", "Eggs are hard."),
               ("先学一门语言，每天写一点代码。多做小项目。", "编程很难，别学了。"),
               ("Sure: quiet pond, a frog leaps in, splash of sound.", "No."),
               ("规律作息，均衡饮食，适量运动。", "随便吧。"),
               ("Sunlight scatters off air molecules; blue scatters most.", "Because it is.")]
    lines = []
    for i, (head, (good, bad)) in enumerate(zip(heads * 2, answers * 2)):
        prompt = f"\n\nHuman: {head}{' Please.' if i >= 6 else ''}\n\nAssistant:"
        lines.append({"chosen": f"{prompt} {good}", "rejected": f"{prompt} {bad}"})
    return lines


def test_audit_command_on_hh_transcripts_without_metadata(tmp_path):
    data = tmp_path / "hh.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in _hh_lines()) + "\n")
    out = tmp_path / "audit"
    assert _cli([data, "--dose-pairs", 6, "--max-length", 40, "--out", out]) == 0
    table = pd.read_parquet(out / "pairs.parquet")
    assert len(table) == 12 and "lang" not in table.columns
    page = (out / "README.md").read_text()
    assert "audited: all of them" in page
    truncated = int(table.truncated.fillna(True).sum())
    assert f"Each side was cut to 40 tokens (prompt ≤ 20): {truncated} of 12 pairs lose" in page
    assert (table.len_p <= table.len_p_full).all()
    dose = pd.read_parquet(out / "dose.parquet")
    assert dose.variant_of.nunique() == 6
    assert (out / "figures" / "dose.png").exists() and (out / "figures" / "accuracy.png").exists()


def test_render_page_without_dose_or_gradients(tiny, bundled, tmp_path):
    model, tok = tiny
    result = audit(bundled[:6], model=model, tokenizer=tok, factors=(), n_boot=20)
    assert isinstance(result, Audit) and result.dose.empty
    page = render_page(result, tmp_path)
    assert "No dose-response" in page and "Not computed: `prefstudy audit --gradients`" in page


def test_audit_with_the_real_gradient_audit(tiny, bundled, tmp_path):
    pytest.importorskip("prefstudy.gradaudit")
    model, tok = tiny
    result = audit(sample_pairs(bundled, 8), model=model, tokenizer=tok, gradients=True,
                   gradient_pairs=8, objectives=(("naive", {"norm": "sum"}), ("dpo", {})),
                   dose_pairs=2, factors=(2.0,), n_boot=50)
    assert set(result.gradients.label) == {"naive-sum", "dpo"}
    scale = auditstats.gradient_scale(result.gradients, of="dpo", to="naive-sum")
    assert scale["n"] == 8 and scale["min"] == pytest.approx(0.05, rel=1e-3)  # β/2, β = 0.1
    assert scale["max"] == pytest.approx(0.05, rel=1e-3)
    assert "grad_norm(dpo) / grad_norm(naive-sum) = 0.0500" in write_audit(
        result, tmp_path).read_text()


# --------------------------------------------------------------------------- degenerate input


@pytest.mark.parametrize("option, value, match", [
    ("max_pairs", 0, r"max_pairs = 0 \(--max-pairs\): must be a whole number ≥ 1, or None"),
    ("n_boot", 0, r"n_boot = 0 \(--n-boot\): must be a whole number ≥ 1"),
    ("n_boot", -5, r"n_boot = -5 \(--n-boot\)"),
    ("dose_pairs", -1, r"dose_pairs = -1 \(--dose-pairs\): .*0 on the command line"),
    ("gradient_pairs", 0, r"gradient_pairs = 0 \(--gradient-pairs\)"),
    ("batch_size", 0, r"batch_size = 0 \(--batch-size\)"),
    ("max_length", 1, r"max_length = 1 \(--max-length\): must be a whole number ≥ 2"),
    ("max_pairs", 2.5, r"max_pairs = 2.5 \(--max-pairs\)"),
    ("seed", -1, r"seed = -1 \(--seed\)"),
    ("factors", (2.0, float("nan")), r"factors = \(2.0, nan\): every factor must be a finite"),
])
def test_an_option_the_audit_cannot_use_is_refused_before_anything_loads(option, value, match):
    from prefstudy.audit import AuditError

    # neither the data nor the model exists: the option is refused before either is opened
    with pytest.raises(AuditError, match=match):
        audit("no/such-data.jsonl", model="no/such-model", **{option: value})


def test_the_command_names_the_flag_it_refuses(capsys, bundled):
    assert main(["audit", str(data_dir() / "pairs"), "--max-pairs", "0", "--model",
                 "no/such-model"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--max-pairs" in err and "≥ 1" in err


def _shared_prefix_pairs(n=4):
    return PairSet(tuple(PreferencePair(f"q{i}", "The answer to this question is surely A"
                                        + " x" * i, "The answer to this question is surely B")
                         for i in range(n)))


def test_a_cut_that_leaves_no_pair_is_refused_with_why(tiny):
    from prefstudy.audit import AuditError

    model, tok = tiny
    with pytest.raises(AuditError, match=r"max_length = 6 \(--max-length\) cuts away every one "
                                         r"of the 4 pairs \(chosen and rejected are identical"):
        audit(_shared_prefix_pairs(), model=model, tokenizer=tok, max_length=6, n_boot=20,
              progress=False)


def test_non_finite_scores_are_named_and_every_undefined_number_says_why(tiny, bundled,
                                                                         tmp_path):
    import copy

    import torch

    from prefstudy.audit import AuditWarning

    model, tok = tiny
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.model.norm.weight[:] = float("nan")
    with pytest.warns(AuditWarning, match=r"scored 5 of the 5 pairs non-finite"):
        result = audit(bundled[:5], model=broken, tokenizer=tok, factors=(2.0,), n_boot=20,
                       progress=False)
    assert set(result.length.reason) == {
        "no row with a finite dlen and gap_value (5 left out: not finite)"}
    assert result.accuracy.reason.str.contains("has a finite gap").any()
    assert set(result.dose_summary.reason) == {
        "none of its 5 pairs has a dose slope (a slope needs two distinct achieved token "
        "ratios with a finite gap)"}
    page = write_audit(result, tmp_path / "audit").read_text()  # every figure drawn, empty
    assert "could not be judged (no row with a finite dlen and gap_value" in page
    assert (tmp_path / "audit" / "figures" / "gap_vs_length.png").exists()


def test_a_single_pair_is_audited_and_says_why_its_numbers_are_undefined(tiny, bundled,
                                                                         tmp_path, capsys):
    model, tok = tiny
    result = audit(bundled[:1], model=model, tokenizer=tok, factors=(2.0,), n_boot=20,
                   gradients=True, objectives=(("naive", {"norm": "sum"}),))
    assert "audit: gradients" in capsys.readouterr().err  # progress, stage by stage
    assert set(result.length.reason) == {
        "1 row with a finite dlen and gap_value; a fit needs at least 3"}
    assert set(result.dose_summary.reason) == {"1 pair: a bootstrap interval resamples at "
                                               "least 3"}
    assert result.gradient_summary.reason.str.contains("none of its 1 pairs has one").all()
    page = write_audit(result, tmp_path / "audit").read_text()
    assert "too few pairs" not in page and "a fit needs at least 3" in page


# --------------------------------------------------------------------------- written whole


def test_an_interrupted_audit_leaves_the_earlier_one_whole(tiny, bundled, tmp_path, monkeypatch):
    from prefstudy import auditpage
    from prefstudy.audit import AuditError

    model, tok = tiny
    out = tmp_path / "audit"
    first = audit(bundled[:6], model=model, tokenizer=tok, factors=(2.0,), dose_pairs=3,
                  n_boot=20, progress=False)
    held = audit(bundled[6:10], model=model, tokenizer=tok, factors=(), n_boot=20,
                 progress=False)
    write_audit(first, out, nested={"heldout": held})
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert (out / "dose.parquet").exists() and (out / "heldout" / "audit.json").exists()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the page is written last: everything else already was

    monkeypatch.setattr(auditpage, "render_page", killed)
    second = held  # 4 pairs, no dose-response
    with pytest.raises(KeyboardInterrupt):
        write_audit(second, out)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the old audit, untouched: no new pairs.parquet beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit"]  # no temporary left
    monkeypatch.undo()
    write_audit(second, out)  # complete: the new audit, whole; its nested audit kept
    assert not (out / "dose.parquet").exists()  # the old audit's, not this one's
    assert len(pd.read_parquet(out / "pairs.parquet")) == 4
    assert (out / "heldout" / "audit.json").read_bytes() == before[
        (out / "heldout" / "audit.json").relative_to(out)]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(AuditError, match="not empty and holds no audit"):
        write_audit(second, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_the_audit_shows_its_progress(tiny, bundled, capsys):
    model, tok = tiny
    audit(bundled[:4], model=model, tokenizer=tok, factors=(2.0,), n_boot=20)
    err = capsys.readouterr().err
    for stage in ("audit: scoring", "audit: dose-response"):  # gradients: the test above
        assert stage in err, stage
    audit(bundled[:4], model=model, tokenizer=tok, factors=(), n_boot=20, progress=False)
    assert "audit:" not in capsys.readouterr().err
