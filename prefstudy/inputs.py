"""What a run trains and evaluates on, and the order it sees its training pairs in.

`prepare_inputs` loads and encodes the training pairs and the held-out material a config names
(held-out pairs, neutral text for perplexity, probe prompts for generations), each sample taken
round-robin over languages, and the training pairs also evaluated like held-out ones
(`train_eval_pairs`); `batch_indices` is the batch order, a pure function of the step.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .config import TrainConfig
from .data import DataError, PairSet, load_any, load_probes, load_texts, pair_facts, sample_pairs
from .encode import Encoded, encode_pairs
from .paths import TEXT_COLUMNS, resolve_path, text_rule
from .records import check_disjoint
from .sources import is_url
from .split import PromptSplit, fitting, split_prompts


def batch_indices(n_pairs: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The pairs of optimiser step `step` (1-based): a fresh seeded permutation every epoch.

    A batch that spans two epochs never holds a pair twice (a run records one row per pair and
    step): the next epoch's order moves a pair the batch already holds past the batch's end
    (`_epoch_order`). A pure function of its arguments, so a resumed run sees the batches it
    would have seen.
    """
    start = (step - 1) * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n_pairs)
        perm = _epoch_order(n_pairs, batch_size, seed, epoch)
        out.extend(perm[offset:offset + batch_size - len(out)])
    return out


def _permutation(n_pairs: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n_pairs, generator=g).tolist()


_ORDERS: dict[tuple[int, int, int], list[list[int]]] = {}  # small sets' epochs, in order


def _epoch_order(n_pairs: int, batch_size: int, seed: int, epoch: int) -> list[int]:
    """Epoch `epoch`'s order of the pairs (`_reordered`). With at least 2 × batch_size pairs an
    epoch's reordered start never reaches its end, so the epoch before is its permutation;
    with fewer, every epoch is built in turn (kept, one list per epoch)."""
    if n_pairs >= 2 * batch_size or epoch == 0:
        before = _permutation(n_pairs, seed, epoch - 1) if epoch else None
        return _reordered(n_pairs, batch_size, seed, epoch, before)
    orders = _ORDERS.setdefault((n_pairs, batch_size, seed), [])
    while len(orders) <= epoch:
        e = len(orders)
        orders.append(_reordered(n_pairs, batch_size, seed, e, orders[e - 1] if e else None))
    return orders[epoch]


def _reordered(n_pairs: int, batch_size: int, seed: int, epoch: int,
               before: list[int] | None) -> list[int]:
    """The epoch's seeded permutation with its first pairs (those in one batch with the end of
    `before`, the epoch before's order) chosen among the pairs not at that end, in the
    permutation's order, the rest following in it: unchanged where no pair would repeat."""
    perm = _permutation(n_pairs, seed, epoch)
    shared = (epoch * n_pairs) % batch_size  # the batch spanning both epochs: its pairs before
    if before is None or not shared or n_pairs < batch_size:
        return perm
    end = set(before[n_pairs - shared:])
    first = [i for i in perm if i not in end][:batch_size - shared]
    chosen = set(first)
    return first + [i for i in perm if i not in chosen]


# what the held-out samples (pairs, neutral text, probes) are balanced over, where present
ROUND_ROBIN_STRATA = ("lang", "kind", "category")


def round_robin(df: pd.DataFrame, n: int,
                by: str | tuple[str, ...] = ROUND_ROBIN_STRATA) -> pd.DataFrame:
    """n rows taken round-robin over the combinations of the `by` columns the frame has (e.g.
    language × probe kind, so harmful and benign probes of every language are represented), in
    file order within each combination; the first n rows when it has none of them."""
    columns = [c for c in ((by,) if isinstance(by, str) else by) if c in df.columns]
    if not columns or n >= len(df):
        return df.head(n)
    strata = df[columns].astype(str).agg("|".join, axis=1)
    df = df.assign(_rank=df.groupby(strata).cumcount(), _stratum=strata)
    return (df.sort_values(["_rank", "_stratum"], kind="stable").head(n)
            .drop(columns=["_rank", "_stratum"]))


@dataclass
class Inputs:
    train: Encoded
    heldout: Encoded | None  # held-out pairs, evaluated, never trained on
    neutral: pd.DataFrame | None  # held-out text for perplexity
    probes: pd.DataFrame | None  # prompts for greedy generations
    dropped: int  # training pairs truncation would have emptied (or left identical)
    # what loading and truncation left out or cut, and whether `pairs` keeps the pair texts
    # and why (`paths.text_rule`): all recorded in the run's config.json
    counts: dict = field(default_factory=dict)
    pairs: pd.DataFrame = field(default_factory=pd.DataFrame)  # `facts`: the pairs kept
    train_eval: Encoded | None = None  # training pairs also evaluated (`train_eval_pairs`)


def _load_pairs(path, cfg: TrainConfig) -> PairSet:
    source = path if is_url(path) else resolve_path(path)  # a file, folder, URL, saved or hub dataset
    key = _local_state(source)
    if key is None:
        pairs = load_any(source, layout=cfg.layout, columns=cfg.columns)
    else:  # a local file or folder is read once per process while it is unchanged
        pairs = _load_local(key, cfg.layout, cfg.columns)
    return pairs.filter(lang=cfg.lang) if cfg.lang else pairs


def _local_state(source) -> tuple | None:
    """A local file's or folder's path with each entry's size and modification time (what
    `_load_local` keys on); None for a URL, a hub id or a path that does not exist."""
    if not isinstance(source, Path) or not source.exists():
        return None
    entries = sorted(source.iterdir()) if source.is_dir() else [source]
    return (str(source), *((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries))


@functools.lru_cache(maxsize=8)
def _load_local(key: tuple, layout: str, columns: str | None) -> PairSet:
    return load_any(Path(key[0]), layout=layout, columns=columns)


def _in_lang(df: pd.DataFrame, cfg: TrainConfig, n: int) -> pd.DataFrame:
    """n rows of `df` in the config's language (all languages without one), round-robin."""
    return round_robin(df[df.lang == cfg.lang] if cfg.lang else df, n)


SAMPLE_SEED = 0  # the training sample's seed: every run of a study trains on the same pairs


def _splits(cfg: TrainConfig) -> bool:
    return bool(cfg.heldout_prompts or cfg.neutral_prompts)


def prompt_split(cfg: TrainConfig) -> PromptSplit:
    """cfg.data (in cfg.lang) split by prompt (`split.split_prompts`, SAMPLE_SEED): the same in
    every run of a study. DataError, one line, where the data has too few prompts or no
    neutral answer by neutral_model."""
    pairs = _load_pairs(cfg.data, cfg)
    try:
        split = split_prompts(pairs, cfg.heldout_prompts, cfg.neutral_prompts,
                              seed=SAMPLE_SEED, neutral_model=cfg.neutral_model)
    except ValueError as e:
        raise DataError(f"{cfg.data}: {e}") from None
    if cfg.neutral_prompts and split.neutral.empty:
        models = sorted({str(p.meta[k]) for p in pairs for k in ("chosen_model", "rejected_model")
                         if k in p.meta})
        raise DataError(f"{cfg.data}: neutral_model {cfg.neutral_model!r} wrote none of the "
                        f"answers to the {cfg.neutral_prompts} neutral prompts; the data's "
                        f"models: {', '.join(models[:12]) or 'none named'}")
    return split


_FITS: dict[tuple, bool] = {}  # (tokenizer, max_length, max_prompt_length, pair_id) → fits


def _fitting(pairs: PairSet, cfg: TrainConfig) -> tuple[PairSet, int]:
    """With too_long = "drop", the pairs max_length would not cut and how many were left out
    (`split.fitting`; a pair's answer is kept per process by its id, which is its content);
    else the pairs and 0."""
    if cfg.too_long != "drop":
        return pairs, 0
    settings = (cfg.model, cfg.max_length, cfg.max_prompt_length)
    todo = PairSet(tuple(p for p in pairs if (*settings, p.pair_id) not in _FITS))
    if len(todo):
        kept, _ = fitting(todo, _tokenizer(cfg.model), cfg.max_length, cfg.max_prompt_length)
        ids = {p.pair_id for p in kept}
        _FITS.update({(*settings, p.pair_id): p.pair_id in ids for p in todo})
    kept = tuple(p for p in pairs if _FITS[(*settings, p.pair_id)])
    return PairSet(kept, pairs.skipped, pairs.layouts), len(pairs) - len(kept)


@functools.lru_cache(maxsize=4)
def _tokenizer(model: str):
    from .models import load_tokenizer

    return load_tokenizer(model)


def training_pool(cfg: TrainConfig) -> tuple[PairSet, int]:
    """(the pairs a training sample is drawn from, how many too_long = "drop" left out):
    cfg.data in cfg.lang, less the held-out and neutral prompts' pairs of a prompt split."""
    pairs = prompt_split(cfg).train if _splits(cfg) else _load_pairs(cfg.data, cfg)
    return _fitting(pairs, cfg)


def training_pairs(cfg: TrainConfig) -> PairSet:
    """The pairs a run trains on: `training_pool`, or with max_pairs a stratified random
    sample of that many over language × category (`data.sample_pairs`, SAMPLE_SEED), never the
    first N of the files."""
    pairs, _ = training_pool(cfg)
    return sample_pairs(pairs, cfg.max_pairs, seed=SAMPLE_SEED) if cfg.max_pairs else pairs


def heldout_pool(cfg: TrainConfig) -> tuple[PairSet | None, int]:
    """(every held-out pair a run may evaluate, how many too_long = "drop" left out): those of
    cfg.heldout, or of a prompt split's held-out prompts; None without any."""
    if not cfg.n_heldout or not (cfg.heldout or cfg.heldout_prompts):
        return None, 0
    held = prompt_split(cfg).heldout if cfg.heldout_prompts else _load_pairs(cfg.heldout, cfg)
    return _fitting(held, cfg)


def heldout_pairs(cfg: TrainConfig) -> PairSet | None:
    """The held-out pairs a run evaluates: n_heldout of `heldout_pool` taken round-robin over
    language × kind × category (`round_robin`), None without any."""
    held, _ = heldout_pool(cfg)
    if held is None:
        return None
    return PairSet(tuple(held[i] for i in round_robin(held.to_frame(), cfg.n_heldout).index),
                   held.skipped)


def neutral_texts(cfg: TrainConfig) -> pd.DataFrame | None:
    """The neutral passages a run scores (n_neutral of them, round-robin over language): from
    cfg.neutral_text, or a prompt split's neutral prompts; None without any."""
    if not cfg.n_neutral or not (cfg.neutral_text or cfg.neutral_prompts):
        return None
    texts = (prompt_split(cfg).neutral if cfg.neutral_prompts
             else load_texts(resolve_path(cfg.neutral_text)))
    return _in_lang(texts, cfg, cfg.n_neutral)


def source_counts(cfg: TrainConfig) -> dict[str, int]:
    """What a prompt split and too_long = "drop" counted on the way (`split.PromptSplit.counts`
    prefixed split_; pairs_too_long, heldout_pairs_too_long); empty for neither."""
    counts = ({f"split_{k}": v for k, v in prompt_split(cfg).counts.items()}
              if _splits(cfg) else {})
    if cfg.too_long == "drop":
        counts["pairs_too_long"] = training_pool(cfg)[1]
        counts["heldout_pairs_too_long"] = heldout_pool(cfg)[1]
    return counts


def prepare_inputs(cfg: TrainConfig, tokenizer) -> Inputs:
    pairs = training_pairs(cfg)
    enc = dict(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length)
    train = encode_pairs(pairs, tokenizer, **enc)
    if len(train) < cfg.batch_size:
        _, too_long = training_pool(cfg)
        why = (f" ({too_long} left out as longer than max_length={cfg.max_length} tokens, or a "
               f"prompt over max_prompt_length={cfg.max_prompt_length}: too_long = \"drop\")"
               if too_long else "")
        raise DataError(f"{cfg.data}: {len(train)} usable pairs, fewer than batch_size="
                        f"{cfg.batch_size}{why}")
    heldout = neutral = probes = None
    held = heldout_pairs(cfg)
    if held is not None:
        check_disjoint([p.pair_id for p in pairs], [p.pair_id for p in held], train=cfg.data,
                       heldout=cfg.heldout)  # a PairsOverlapWarning where they share pairs
        heldout = encode_pairs(held, tokenizer, **enc)
    neutral = neutral_texts(cfg)
    if cfg.probes and cfg.n_probes:
        probes = _in_lang(load_probes(resolve_path(cfg.probes)), cfg, cfg.n_probes)
    texts = pair_texts(cfg, held is not None)
    counts = {**_counts("", pairs, train),
              **(_counts("heldout_", held, heldout) if heldout else {}), **texts,
              **source_counts(cfg)}
    train_eval = train_eval_pairs(pairs, train, cfg.n_train_eval,
                                  exclude=[p.pair_id for p in held or ()])
    return Inputs(train, heldout, neutral, probes, len(train.dropped), counts,
                  facts(pairs, train, held, heldout, keep_text=texts["text_kept"]), train_eval)


def train_eval_pairs(pairs: PairSet, train: Encoded, n: int,
                     exclude=()) -> Encoded | None:
    """The n training pairs a run also evaluates like held-out pairs (config n_train_eval):
    taken round-robin over language × kind × category (`round_robin`, file order within each)
    from the training pairs in the order `inputs` stores them (`training_pairs`: the files'
    order), among those truncation kept and not also held out (`exclude`, their ids: those are
    evaluated as held out). A pure function of the training pairs and their encoding, so the
    same in every run of a study; all of them where fewer than n are left; None for n = 0."""
    if not n:
        return None
    left_out = set(exclude)
    kept = {e.pair_id: e for e in train.items if e.pair_id not in left_out}
    frame = pairs.to_frame()
    chosen = round_robin(frame[frame.pair_id.isin(kept)], n).pair_id
    return Encoded(tuple(kept[pid] for pid in chosen), (), train.settings)


def pair_texts(cfg: TrainConfig, heldout: bool = True) -> dict:
    """Whether the run's per-pair facts keep the pair texts, and why (`paths.text_rule` for
    its folder, <output>/<run_id>, and its training and held-out pairs; cfg.keep_text forces
    it)."""
    sources = [cfg.data, *([cfg.heldout] if heldout and cfg.heldout else [])]
    return text_rule(Path(cfg.output) / str(cfg.run_id), sources, cfg.keep_text)


def facts(pairs: PairSet, train: Encoded, held: PairSet | None,
          heldout: Encoded | None, *, keep_text: bool = True) -> pd.DataFrame:
    """The per-pair facts (`data.pair_facts`) of the training and held-out pairs a run keeps
    after truncation, one row per pair: what its folder holds for the analysis. keep_text=False:
    without the texts (TEXT_COLUMNS), their lengths and edit distances computed first."""
    frames = [_kept(pair_facts(pairs, "train"), train)]
    if held is not None and heldout is not None:
        frames.append(_kept(pair_facts(held, "heldout"), heldout))
    table = pd.concat(frames, ignore_index=True)
    return table if keep_text else table.drop(columns=list(TEXT_COLUMNS), errors="ignore")


def _kept(frame: pd.DataFrame, encoded: Encoded) -> pd.DataFrame:
    return frame[frame.pair_id.isin({e.pair_id for e in encoded.items})]


def _counts(prefix: str, pairs: PairSet | list, encoded: Encoded) -> dict[str, int]:
    """What a run's config records of its pairs: records the loader skipped, pairs truncation
    dropped, and kept pairs whose prompt or a response it cut."""
    return {f"{prefix}records_skipped": len(getattr(pairs, "skipped", ())),
            f"{prefix}pairs_dropped_by_truncation": len(encoded.dropped),
            f"{prefix}pairs_truncated": encoded.n_truncated}
