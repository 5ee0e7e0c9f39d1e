"""The data card: statistics of a data folder, and the Markdown section of data/README.md they fill.

`data_stats` measures a data folder laid out like the bundled one (pairs/, heldout/, neutral/,
probes/, filler/; a folder that is absent is left out) and returns tidy DataFrames. `render_card`
turns them into the Markdown between the markers `<!-- stats:start -->` and `<!-- stats:end -->` of
data/README.md, and `write_card` puts it there, so the card says what the data hold now:

    prefstudy data stats [--write] [--tokens]      (`stats_command`)

Definitions used throughout (characters unless the unit says tokens):
- length ratio = longer response / shorter response (≥ 1);
- edit distance = normalised Levenshtein (edit) distance of chosen and rejected on characters
  (`data.edit_distance`): the fewest single-character insertions, deletions and substitutions,
  divided by the longer response's length; 0 for identical texts, 1 for texts with no character
  in common; "low" is ≤ LOW_EDIT.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from .cache import write_atomic
from .data import (
    PairSet,
    data_dir,
    edit_distance,
    length_ratio,
    load_pairs,
    load_probes,
    load_texts,
)
from .formatting import markdown_table, percent, whole

SPLITS = {"train": "pairs", "heldout": "heldout"}  # split name → folder of pairs
TEXTS = {"neutral": "neutral", "filler": "filler"}  # source name → folder of {"text"} records
LONG = 2.0  # "one response is more than twice as long as the other"
CLOSE = 1.1  # "within 10% of each other": length ratio ≤ 1.1
LOW_EDIT = 0.25  # "low edit distance": normalised edit distance ≤ 0.25
QUANTILES = {"min": 0.0, "p10": 0.1, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p90": 0.9, "max": 1.0}
START, END = "<!-- stats:start -->", "<!-- stats:end -->"


def _token_counter(tokenizer) -> Callable[[list[str]], list[int]]:
    def count(texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    return count


def pair_table(pairs: PairSet, tokenizer=None) -> pd.DataFrame:
    """One row per pair: pair_id, prompt, lang, category, length_kind, chars_chosen,
    chars_rejected, edit_distance, and tokens_chosen / tokens_rejected when a tokenizer is given
    (response text alone, no special tokens)."""
    rows = [{"pair_id": p.pair_id, "prompt": p.prompt_text, "lang": p.meta.get("lang"),
             "category": p.meta.get("category"), "length_kind": p.meta.get("length_kind"),
             "chars_chosen": len(p.chosen), "chars_rejected": len(p.rejected),
             "edit_distance": edit_distance(p.chosen, p.rejected)} for p in pairs]
    df = pd.DataFrame(rows, columns=["pair_id", "prompt", "lang", "category", "length_kind",
                                     "chars_chosen", "chars_rejected", "edit_distance"])
    if tokenizer is not None:
        count = _token_counter(tokenizer)
        df["tokens_chosen"] = count([p.chosen for p in pairs])
        df["tokens_rejected"] = count([p.rejected for p in pairs])
    return df


def _length_units(df: pd.DataFrame) -> list[str]:
    return [u for u in ("chars", "tokens") if f"{u}_chosen" in df.columns]


def _by_lang(df: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(split, lang, rows) for every split × language, then every split with lang "all"."""
    groups = []
    for split, g in df.groupby("split", sort=False):
        groups += [(split, lang, gl) for lang, gl in g.groupby("lang", sort=True)]
        groups.append((split, "all", g))
    return groups


def _quantiles(values: pd.Series) -> dict[str, float]:
    return {name: float(values.quantile(q)) for name, q in QUANTILES.items()}


# --------------------------------------------------------------------------- the tables


def _counts(df: pd.DataFrame, column: str) -> pd.DataFrame:
    return (df.groupby(["split", "lang", column], sort=False).size().rename("pairs")
            .reset_index())


def _lengths(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for split, lang, g in _by_lang(df):
        for unit in _length_units(df):
            for side in ("chosen", "rejected"):
                v = g[f"{unit}_{side}"]
                rows.append({"split": split, "lang": lang, "unit": unit, "side": side,
                             "pairs": len(v), "mean": float(v.mean()), **_quantiles(v)})
    return pd.DataFrame(rows)


def _ratio(g: pd.DataFrame, unit: str) -> pd.Series:
    return length_ratio(g[f"{unit}_chosen"], g[f"{unit}_rejected"])


def _ratios(df: pd.DataFrame) -> pd.DataFrame:
    rows = [{"split": split, "lang": lang, "unit": unit, **_quantiles(_ratio(g, unit))}
            for split, lang, g in _by_lang(df) for unit in _length_units(df)]
    return pd.DataFrame(rows)


def _spread_shares(df: pd.DataFrame) -> pd.DataFrame:
    """The shares the data's spread requirements name, per split × language and unit."""
    rows = []
    for split, lang, g in _by_lang(df):
        for unit in _length_units(df):
            c, r = g[f"{unit}_chosen"], g[f"{unit}_rejected"]
            rows.append({"split": split, "lang": lang, "unit": unit, "pairs": len(g),
                         "chosen_over_2x": float((c > LONG * r).mean()),
                         "rejected_over_2x": float((r > LONG * c).mean()),
                         "either_over_2x": float(((c > LONG * r) | (r > LONG * c)).mean()),
                         "within_10pct": float((_ratio(g, unit) <= CLOSE).mean()),
                         "low_edit": float((g.edit_distance <= LOW_EDIT).mean())})
    return pd.DataFrame(rows)


def _edit(df: pd.DataFrame) -> pd.DataFrame:
    rows = [{"split": split, "lang": lang, "pairs": len(g), **_quantiles(g.edit_distance)}
            for split, lang, g in _by_lang(df)]
    return pd.DataFrame(rows)


def _length_kinds(df: pd.DataFrame) -> pd.DataFrame:
    """What each length_kind label means in numbers, over all splits (characters)."""
    df = df.assign(ratio=_ratio(df, "chars"),
                   longer=(df.chars_chosen > df.chars_rejected).map({True: "chosen",
                                                                      False: "rejected"}))
    rows = []
    for kind, g in df.groupby("length_kind", sort=True):
        rows.append({"length_kind": kind, "pairs": len(g),
                     "chosen_longer": float((g.longer == "chosen").mean()),
                     "ratio_min": float(g.ratio.min()), "ratio_p50": float(g.ratio.median()),
                     "ratio_max": float(g.ratio.max()),
                     "edit_p50": float(g.edit_distance.median()),
                     "edit_max": float(g.edit_distance.max())})
    return pd.DataFrame(rows)


def _overlap(pairs: dict[str, PairSet]) -> pd.DataFrame:
    """For each split but train: pairs, and how many share a pair_id or a prompt with train."""
    if "train" not in pairs:
        return pd.DataFrame(columns=["split", "pairs", "same_pair_as_train", "same_prompt_as_train"])
    ids = {p.pair_id for p in pairs["train"]}
    prompts = {p.prompt_text for p in pairs["train"]}
    rows = [{"split": split, "pairs": len(ps),
             "same_pair_as_train": sum(p.pair_id in ids for p in ps),
             "same_prompt_as_train": sum(p.prompt_text in prompts for p in ps)}
            for split, ps in pairs.items() if split != "train"]
    return pd.DataFrame(rows, columns=["split", "pairs", "same_pair_as_train",
                                       "same_prompt_as_train"])


def _texts(root: Path, tokenizer) -> pd.DataFrame:
    """Held-out text, filler sentences and probes: counts and lengths by language (and kind)."""
    frames = [load_texts(root / folder).assign(source=name)
              for name, folder in TEXTS.items() if (root / folder).is_dir()]
    if (root / "probes").is_dir():
        frames.append(load_probes(root / "probes").rename(columns={"prompt": "text"})
                      .assign(source="probes"))
    columns = ["source", "lang", "kind", "n", "chars_mean", "chars_min", "chars_max"]
    if not frames:
        return pd.DataFrame(columns=columns)
    df = pd.concat(frames, ignore_index=True)
    df["kind"] = df["kind"].fillna("-") if "kind" in df.columns else "-"
    df["chars"] = df.text.str.len()
    if tokenizer is not None:
        df["tokens"] = _token_counter(tokenizer)(list(df.text))
    rows = []
    for (source, lang, kind), g in df.groupby(["source", "lang", "kind"], sort=False):
        row = {"source": source, "lang": lang, "kind": kind, "n": len(g)}
        for unit in ("chars", "tokens") if tokenizer is not None else ("chars",):
            row.update({f"{unit}_mean": float(g[unit].mean()), f"{unit}_min": int(g[unit].min()),
                        f"{unit}_max": int(g[unit].max())})
        rows.append(row)
    return pd.DataFrame(rows)


def data_stats(root: str | Path | None = None, tokenizer=None) -> dict[str, pd.DataFrame]:
    """Statistics of a data folder (default: the bundled data) as tidy DataFrames.

    tokenizer: when given, lengths are also counted in its tokens (response text, no special
    tokens) and every length table gains rows with unit "tokens".

    Returns {name: DataFrame}; "all" in a lang column means every language of that split:
      pairs         per pair (pair_table) with a split column
      categories    split, lang, category, pairs
      length_kinds  split, lang, length_kind, pairs
      lengths       split, lang, unit, side, pairs, mean, min, p10, …, max  (response lengths)
      ratios        split, lang, unit, min, p10, …, max  (longer / shorter response)
      spread        split, lang, unit, pairs, chosen_over_2x, rejected_over_2x, either_over_2x,
                    within_10pct, low_edit  (shares of pairs, 0–1)
      edit          split, lang, pairs, min, p10, …, max  (edit distance)
      kinds         length_kind, pairs, chosen_longer, ratio_min/p50/max, edit_p50/max
      overlap       split, pairs, same_pair_as_train, same_prompt_as_train
      texts         source, lang, kind, n, chars_mean/min/max (and tokens_…)
    """
    root = Path(root) if root is not None else data_dir()
    pairs = {split: load_pairs(root / folder) for split, folder in SPLITS.items()
             if (root / folder).exists()}
    df = pd.concat([pair_table(ps, tokenizer).assign(split=split) for split, ps in pairs.items()],
                   ignore_index=True)
    for column in ("lang", "category", "length_kind"):
        df[column] = df[column].fillna("?")
    return {
        "pairs": df,
        "categories": _counts(df, "category"),
        "length_kinds": _counts(df, "length_kind"),
        "lengths": _lengths(df),
        "ratios": _ratios(df),
        "spread": _spread_shares(df),
        "edit": _edit(df),
        "kinds": _length_kinds(df),
        "overlap": _overlap(pairs),
        "texts": _texts(root, tokenizer),
    }


# --------------------------------------------------------------------------- Markdown


def _wide(counts: pd.DataFrame, column: str) -> pd.DataFrame:
    """split × lang rows, one column per value of `column`, and a total."""
    wide = counts.pivot_table(index=["split", "lang"], columns=column, values="pairs",
                              aggfunc="sum", fill_value=0, sort=False)
    wide = wide[sorted(wide.columns)]
    wide["total"] = wide.sum(axis=1)
    return wide.reset_index().rename_axis(columns=None)


def _section(title: str, table: str, text: str = "") -> str:
    return f"### {title}\n\n" + (f"{text}\n\n" if text else "") + f"{table}\n"


def _intro(units: list[str]) -> str:
    command = "prefstudy data stats --write" + (" --tokens" if "tokens" in units else "")
    words = " and ".join({"chars": "characters", "tokens": "SmolLM2 tokens"}[u] for u in units)
    return (f"<!-- generated by `{command}`; edit the data, then run it again -->\n\n"
            f"Lengths are in {words} of the response text alone. Length ratio = longer / shorter "
            f"response. Edit distance = normalised Levenshtein (edit) distance of chosen and "
            f"rejected on characters: the fewest single-character insertions, deletions and "
            f"substitutions, divided by the longer response's length (0 identical, 1 nothing in "
            f"common); low means ≤ {LOW_EDIT}. Shares are of the pairs in the row.\n")


SHARES = ("chosen_over_2x", "rejected_over_2x", "either_over_2x", "within_10pct", "low_edit")


def render_card(stats: dict[str, pd.DataFrame]) -> str:
    """The statistics section of the data card, as Markdown (without the markers)."""
    units = sorted(stats["lengths"].unit.unique())
    in_units = {c: whole for c in ["mean", *QUANTILES]}
    means = {c: whole for c in stats["texts"].columns if c.endswith("_mean")}
    parts = [
        _intro(units),
        _section("Pairs by split, language and category",
                 markdown_table(_wide(stats["categories"], "category"))),
        _section("Pairs by length kind", markdown_table(_wide(stats["length_kinds"], "length_kind"))),
        _section("Spread", markdown_table(stats["spread"], dict.fromkeys(SHARES, percent)),
                 f"chosen_over_2x: chosen more than {LONG:g}× as long as rejected; "
                 f"rejected_over_2x: the reverse; within_10pct: length ratio ≤ {CLOSE}; "
                 f"low_edit: edit distance ≤ {LOW_EDIT}."),
        _section("What the length kinds measure",
                 markdown_table(stats["kinds"], {"chosen_longer": percent}),
                 "All splits, characters; chosen_longer is the share of pairs whose chosen "
                 "response is the longer one."),
        _section("Response lengths", markdown_table(stats["lengths"], in_units)),
        _section("Length ratio (longer / shorter)", markdown_table(stats["ratios"])),
        _section("Edit distance", markdown_table(stats["edit"])),
        _section("Held-out split", markdown_table(stats["overlap"]),
                 "Pairs of other splits that also occur in train (same pair_id) or share a "
                 "prompt with a train pair."),
        _section("Held-out text, filler and probes", markdown_table(stats["texts"], means)),
    ]
    return "\n".join(parts)


def card_path() -> Path:
    return data_dir() / "README.md"


def replace_section(card: str, section: str) -> str:
    """`card` with the text between the stats markers replaced by `section`."""
    start, end = card.find(START), card.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the card has no {START} … {END} section")
    return card[: start + len(START)] + "\n" + section + card[end:]


def write_card(path: str | Path | None = None, stats: dict[str, pd.DataFrame] | None = None) -> Path:
    """Regenerate the statistics section of the card at `path` (default data/README.md),
    written under a temporary name and renamed into place (`cache.write_atomic`): an
    interrupted write leaves the card as it was."""
    path = Path(path) if path is not None else card_path()
    section = render_card(stats if stats is not None else data_stats())
    card = replace_section(path.read_text(encoding="utf-8"), section)
    write_atomic(path, lambda tmp: tmp.write_text(card, encoding="utf-8"))
    return path


def stats_command(write: bool = False, tokens: bool = False) -> str:
    """`prefstudy data stats [--write] [--tokens]`: the statistics as Markdown (returned, not
    printed); write=True also puts them into data/README.md; tokens=True adds SmolLM2 token
    counts (loads the tokenizer, a few seconds)."""
    tokenizer = None
    if tokens:
        from .models import load_tokenizer

        tokenizer = load_tokenizer()
    stats = data_stats(tokenizer=tokenizer)
    if write:
        write_card(stats=stats)
    return render_card(stats)
