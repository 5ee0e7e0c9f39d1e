"""Length-controlled variants of preference pairs: one response cut to its leading sentences or
lengthened with neutral filler sentences of its language, the meaning kept and only the length
(characters) moved. `length_variants` builds them for the audit's dose-response.
"""

from __future__ import annotations

import math
import random
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from .data import PairSet, PreferencePair, Skipped, SkippedPairsWarning, data_dir, load_texts

SIDES = ("chosen", "rejected")
# Sentence ends: ASCII ones count when whitespace or the end follows (so "3.5" and "e.g.x" stay
# whole); CJK ones always end a sentence. Closing quotes and brackets stay with their sentence.
_SENTENCE = re.compile(r".*?(?:[.!?]+[\"'”’)\]]*(?=\s|$)|[。！？]+[”’」』）)]*|$)\s*", re.DOTALL)
_JOINER = {"zh": ""}  # how filler sentences are appended; any other language joins with a space


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`, each with its trailing whitespace; they concatenate back to `text`.

    Ends are `.!?` followed by whitespace or the end (English) and `。！？` (Chinese), so a text in
    either language, or one that mixes them, splits the same way.
    """
    return [m.group(0) for m in _SENTENCE.finditer(text) if m.group(0)]


def _in_word(text: str, i: int) -> bool:
    """Whether position `i` falls between two letters or digits of one (ASCII) word."""
    def word(c: str) -> bool:
        return c.isascii() and c.isalnum()

    return 0 < i < len(text) and word(text[i - 1]) and word(text[i])


def _truncate(text: str, n_chars: int) -> str:
    """The first `n_chars` characters of `text`, never empty and never ending inside a word.

    A cut inside a word moves back to the word's start, or, for the first word, on to its end.
    Chinese text has no word marks, so it is cut between any two characters.
    """
    cut = max(1, min(n_chars, len(text)))
    if _in_word(text, cut):
        back = cut
        while _in_word(text, back):
            back -= 1
        if text[:back].strip():
            cut = back
        else:
            while _in_word(text, cut):
                cut += 1
    return text[:cut].rstrip()


def shorten(text: str, factor: float) -> str:
    """A prefix of `text` about `factor` × its length (characters), never empty.

    Several sentences: the leading sentences whose length is closest to the target (at least the
    first; on a tie the shorter). One sentence: cut by characters at a word boundary (between any
    two characters for Chinese).
    """
    target = factor * len(text)
    sentences = split_sentences(text)
    if len(sentences) == 1:
        return _truncate(text, round(target))
    prefixes = ["".join(sentences[:k]).rstrip() for k in range(1, len(sentences) + 1)]
    return min(prefixes, key=lambda s: (abs(len(s) - target), len(s)))


def lengthen(text: str, factor: float, filler: Sequence[str], rng: random.Random,
             joiner: str = " ") -> str:
    """`text` followed by filler sentences until its length is at least `factor` × the original.

    Sentences are drawn from `filler` in an order shuffled by `rng`, without repeats until the list
    is used up. With the same `rng` state, a larger factor extends the text of a smaller one.
    """
    if not filler:
        raise ValueError("lengthen: the filler list is empty")
    target, out, pool = factor * len(text), text.rstrip(), []
    while len(out) < target:
        if not pool:
            pool = list(filler)
            rng.shuffle(pool)
        out += joiner + pool.pop()
    return out


# Han, kana, hangul and CJK punctuation: text written without spaces between words.
_CJK = re.compile(r"[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
                  r"\uf900-\ufaff\uff00-\uffef]")


def script_lang(text: str) -> str:
    """The filler language for a text without a `lang` label, from its script: "zh" when CJK
    characters (Han, kana, hangul) are at least as many as ASCII letters, else "en"."""
    cjk = len(_CJK.findall(text))
    latin = sum(c.isascii() and c.isalpha() for c in text)
    return "zh" if cjk and cjk >= latin else "en"


def _filler_by_lang(filler) -> dict[str, tuple[str, ...]]:
    if filler is None:
        filler = load_texts(data_dir() / "filler")
    if isinstance(filler, pd.DataFrame):
        if not {"text", "lang"} <= set(filler.columns):
            raise ValueError(f"filler frame needs text and lang columns, has {list(filler.columns)}")
        return {lang: tuple(g.text) for lang, g in filler.groupby("lang", sort=True)}
    return {lang: tuple(texts) for lang, texts in filler.items()}


def _filler_lang(pair: PreferencePair, text: str, by_lang: Mapping, unknown_lang: str) -> str:
    """The filler language of a pair: its lang label, else (or, with unknown_lang="script", for
    a label the filler lacks) the script of `text`."""
    lang = pair.meta.get("lang") or script_lang(text)
    if lang in by_lang:
        return lang
    if unknown_lang == "script" and script_lang(text) in by_lang:
        return script_lang(text)
    raise ValueError(f"pair {pair.pair_id}: no filler for meta lang={lang!r}; "
                     f"filler languages: {sorted(by_lang)}")


def length_variants(
    pairs: Iterable[PreferencePair],
    factors: Sequence[float] = (0.5, 1, 2, 4),
    *,
    side: str = "rejected",
    filler: Mapping[str, Sequence[str]] | pd.DataFrame | None = None,
    seed: int = 0,
    unknown_lang: str = "raise",
) -> PairSet:
    """Copies of each pair whose `side` response is stretched or cut to `factor` × its length.

    For the dose-response of the length difference alone: the meaning of the response is kept and
    only its length (characters) moves.

    factor > 1: neutral filler sentences of the pair's language (`meta["lang"]`; for a pair
                without one, the script of the response: `script_lang`) are appended
                until the response is at least `factor` × as long. `filler` maps language → list of
                sentences, or is a DataFrame with text / lang columns; default: the bundled
                data/filler. The draw is seeded by (`seed`, pair_id, side), not by the factor, so
                the factor-4 text extends the factor-2 text. A `lang` the filler lacks raises
                ValueError, or, with unknown_lang="script", takes the filler of the script.
    factor < 1: leading sentences are kept (see `shorten`); the result is a prefix of the
                original and never empty.
    factor = 1: the pair unchanged (the control).

    Returns a PairSet with, for each pair, one pair per factor in the given order; meta is the
    original meta plus `variant_of` (the original pair_id), `factor`, `side` and `achieved_ratio`
    (length achieved / original length, in characters), and `filler_lang` where filler was
    appended. A variant whose response would equal the
    other side is skipped, listed in `PairSet.skipped` and announced in a `SkippedPairsWarning`.
    """
    if side not in SIDES:
        raise ValueError(f"side={side!r}; allowed: {', '.join(map(repr, SIDES))}")
    factors = [float(f) for f in factors]
    bad = [f for f in factors if not (f > 0 and math.isfinite(f))]
    if bad:
        raise ValueError(f"factors must be positive and finite, got {bad}")
    if unknown_lang not in ("raise", "script"):
        raise ValueError(f"unknown_lang={unknown_lang!r}; allowed: 'raise', 'script'")
    by_lang = _filler_by_lang(filler) if any(f > 1 for f in factors) else {}
    out, skipped = [], []
    for pair in pairs:
        original = getattr(pair, side)
        lang = _filler_lang(pair, original, by_lang, unknown_lang) if by_lang else None
        for factor in factors:
            if factor > 1:
                rng = random.Random(f"{seed}:{pair.pair_id}:{side}")
                text = lengthen(original, factor, by_lang[lang], rng, _JOINER.get(lang, " "))
            else:
                text = shorten(original, factor) if factor < 1 else original
            other = pair.rejected if side == "chosen" else pair.chosen
            if text == other:
                skipped.append(Skipped(f"variant of {pair.pair_id}", None,
                                       f"factor {factor:g}: {side} would equal the other side"))
                continue
            meta = {**pair.meta, "variant_of": pair.pair_id, "factor": factor, "side": side,
                    "achieved_ratio": len(text) / len(original),
                    **({"filler_lang": lang} if factor > 1 else {})}
            sides = {"chosen": pair.chosen, "rejected": pair.rejected, side: text}
            out.append(PreferencePair(pair.prompt, sides["chosen"], sides["rejected"], meta))
    if skipped:
        warnings.warn(f"length_variants skipped {len(skipped)} variant(s): "
                      + "; ".join(str(s) for s in skipped[:10]), SkippedPairsWarning, stacklevel=2)
    return PairSet(tuple(out), tuple(skipped))
