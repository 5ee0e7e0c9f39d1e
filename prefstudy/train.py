"""The training loop: an objective in, per-pair records out.

`train(config)` runs on `accelerate`: one process by default, several under `accelerate launch`
or `torchrun` (each process takes an equal share of every batch, gradients are averaged, and each
process records its own pairs, so every pair is recorded exactly once per step). Reference
log-probs are computed once per pair with the frozen starting model and cached on disk, and so
are the starting model's step-0 evaluations, which every run of a study shares. A
non-finite loss stops the run cleanly and marks it `diverged`: a diverging run is data.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from .config import TrainConfig, resolve_path
from .data import PairSet, load_pairs, load_probes, load_texts
from .encode import Encoded, EncodedPair, collate, encode_pairs
from .gradstats import PerPairGradients
from .logprobs import TokenLogps, split_pairs, token_logps
from .models import cache_dir, load_model, set_trainable
from .objectives import PairLogps, compute, get_objective
from .records import RunWriter, load_table, read_meta

# --------------------------------------------------------------------------- data order


def batch_indices(n_pairs: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The pairs of optimiser step `step` (1-based): a fresh seeded permutation every epoch.

    A pure function of its arguments, so a resumed run sees the batches it would have seen.
    """
    start = (step - 1) * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n_pairs)
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(n_pairs, generator=g).tolist()
        out.extend(perm[offset:offset + batch_size - len(out)])
    return out


# --------------------------------------------------------------------------- reference cache


def _reference_key(cfg: TrainConfig, encoded: Encoded) -> str:
    ident = {"model": cfg.model, "model_seed": cfg.model_seed if cfg.model == "tiny" else None,
             "dtype": cfg.dtype, "encoding": encoded.settings,
             "pairs": [(e.pair_id, e.prompt_ids, e.chosen_ids, e.rejected_ids)
                       for e in encoded.items]}
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:20]


@torch.no_grad()
def reference_logps(model, encoded: Encoded, cfg: TrainConfig, pad_id: int, device,
                    *, batch_size: int = 8) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """pair_id → (chosen, rejected) per-token reference log-probs, cached on disk.

    The cache key covers the model, its dtype, the encoding settings and every token, so a
    change to any of them computes afresh.
    """
    path = cache_dir() / "reference" / f"{_reference_key(cfg, encoded)}.pt"
    if path.exists():
        return torch.load(path)
    was_training = model.training
    model.eval()
    out = {}
    for start in range(0, len(encoded.items), batch_size):
        items = encoded.items[start:start + batch_size]
        chosen, rejected = split_pairs(token_logps(model, collate(items, pad_id).to(device)))
        for i, e in enumerate(items):
            out[e.pair_id] = (chosen.logps[i][chosen.mask[i]].cpu(),
                              rejected.logps[i][rejected.mask[i]].cpu())
    model.train(was_training)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(out, tmp)
    tmp.replace(path)
    return out


def _scatter(like: TokenLogps, per_pair: Sequence[torch.Tensor]) -> TokenLogps:
    """Per-pair token vectors placed on the mask of `like`."""
    flat = torch.cat(list(per_pair)).to(like.logps.device)
    return TokenLogps(torch.zeros_like(like.logps).masked_scatter(like.mask, flat), like.mask)


# --------------------------------------------------------------------------- one forward


@dataclass
class Forward:
    """What one forward pass over a batch produced, per pair."""

    logps: PairLogps
    loss: torch.Tensor  # (B,) objective loss
    margin: torch.Tensor  # (B,)


def forward(model, batch, cfg: TrainConfig, ref: dict | None, *,
            start: dict | None = None) -> Forward:
    """Per-token log-probs of the batch, and the objective's loss and margin per pair.

    start: per-token log-probs of the untrained starting model (`reference_logps`' output, for
    these pairs), standing in for the model's forward pass when the model is that model.
    """
    if start is None:
        chosen, rejected = split_pairs(token_logps(model, batch))
    else:
        mask = batch.response_mask[:, 1:]
        like = split_pairs(TokenLogps(torch.zeros(mask.shape, device=mask.device), mask))
        chosen = _scatter(like[0], [start[p][0] for p in batch.pair_ids])
        rejected = _scatter(like[1], [start[p][1] for p in batch.pair_ids])
    ref_c = ref_r = None
    if ref is not None:
        ref_c = _scatter(chosen, [ref[p][0] for p in batch.pair_ids])
        ref_r = _scatter(rejected, [ref[p][1] for p in batch.pair_ids])
    logps = PairLogps(chosen, rejected, ref_c, ref_r)
    out = compute(cfg.objective, logps, **cfg.params)
    return Forward(logps, out.loss, out.margin)


def pair_rows(fw: Forward, batch, cfg: TrainConfig, step: int, lr: float) -> list[dict]:
    """One record per pair of the batch (see prefstudy.records.RECORD_COLUMNS)."""
    c, r = fw.logps.chosen.detach(), fw.logps.rejected.detach()
    sums_c, sums_r, n_c, n_r = c.sum.tolist(), r.sum.tolist(), c.count.tolist(), r.count.tolist()
    has_ref = fw.logps.ref_chosen is not None
    ref_c = fw.logps.ref_chosen.sum.tolist() if has_ref else [math.nan] * len(n_c)
    ref_r = fw.logps.ref_rejected.sum.tolist() if has_ref else [math.nan] * len(n_c)
    loss, margin = fw.loss.detach().tolist(), fw.margin.detach().tolist()
    rows = []
    for i, pid in enumerate(batch.pair_ids):
        loss_p, loss_n = -sums_c[i] / n_c[i], -sums_r[i] / n_r[i]
        rows.append({
            "run_id": cfg.run_id, "objective": cfg.objective, "norm": cfg.norm, "seed": cfg.seed,
            "step": step, "pair_id": pid, "len_p": int(n_c[i]), "len_n": int(n_r[i]),
            "loss_p": loss_p, "loss_n": loss_n, "nll_sum_p": -sums_c[i], "nll_sum_n": -sums_r[i],
            "gap": loss_n - loss_p, "ref_logp_p": ref_c[i], "ref_logp_n": ref_r[i],
            "margin": margin[i], "pair_loss": loss[i], "lr": lr,
            "grad_norm": math.nan, "grad_cos": math.nan,
        })
    return rows


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_pairs(model, encoded: Encoded, cfg, ref, pad_id, device, step, *,
                   start: dict | None = None) -> pd.DataFrame:
    """Records of the held-out pairs (no gradient statistics); `start`: see `forward`."""
    rows = []
    for i in range(0, len(encoded.items), 8):
        batch = collate(encoded.items[i:i + 8], pad_id).to(device)
        rows += pair_rows(forward(model, batch, cfg, ref, start=start), batch, cfg, step,
                          math.nan)
    return pd.DataFrame(rows)


def _cached_at_start(kind: str, cfg: TrainConfig, device, inputs: dict, compute) -> pd.DataFrame:
    """`compute()` of the untrained starting model, cached on disk like the reference log-probs:
    every run of a study starts from the same model, so its step-0 perplexity and generations
    are computed once. The key covers the model, its dtype, the device type and `inputs`."""
    ident = {"kind": kind, "model": cfg.model,
             "model_seed": cfg.model_seed if cfg.model == "tiny" else None, "dtype": cfg.dtype,
             "device": torch.device(device).type, "inputs": inputs}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()
    path = cache_dir() / "start" / f"{kind}-{key[:20]}.parquet"
    if path.exists():
        return pd.read_parquet(path)
    df = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)
    return df


PPL_MAX_TOKENS = 256  # a held-out passage is scored on its first this-many tokens


@torch.no_grad()
def perplexity(model, tokenizer, texts: pd.DataFrame, device, step, *,
               batch_size: int = 16, max_tokens: int = PPL_MAX_TOKENS) -> pd.DataFrame:
    """Summed NLL and token count of each held-out passage (perplexity = exp(nll_sum / n)).

    Every token after the first is scored, through the same chunked log-prob path as training.
    """
    from .encode import Batch

    texts = texts.reset_index(drop=True)
    rows = []
    for start in range(0, len(texts), batch_size):
        part = texts.iloc[start:start + batch_size]
        ids = [tokenizer(t)["input_ids"][:max_tokens] for t in part.text]
        width = max(map(len, ids))
        input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(ids), width), dtype=torch.long)
        for i, seq in enumerate(ids):
            input_ids[i, :len(seq)] = torch.tensor(seq)
            attention[i, :len(seq)] = 1
        scored = attention.bool().clone()
        scored[:, 0] = False  # the first token has no prediction
        batch = Batch(input_ids, attention, scored, [str(i) for i in part.index]).to(device)
        t = token_logps(model, batch)
        for i, (idx, row) in enumerate(part.iterrows()):
            rows.append({"step": step, "text_id": int(idx), "lang": row.get("lang", ""),
                         "nll_sum": -float(t.sum[i]), "n_tokens": int(t.count[i])})
    return pd.DataFrame(rows)


@torch.no_grad()
def generate(model, tokenizer, probes: pd.DataFrame, device, step, max_new_tokens) -> pd.DataFrame:
    """Greedy continuations of the probe prompts, in one left-padded batch (chat template where
    the tokenizer has one)."""
    probes = probes.reset_index(drop=True)
    if tokenizer.chat_template:
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                 add_generation_prompt=True)
                   for p in probes.prompt]
    else:
        prompts = list(probes.prompt)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    enc = enc.to(device)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id, use_cache=True)
    width = enc["input_ids"].shape[1]
    rows = []
    for i, row in probes.iterrows():
        text = tokenizer.decode(out[i, width:], skip_special_tokens=True)
        rows.append({"step": step, "probe_id": i, "lang": row.get("lang", ""),
                     "kind": row.get("kind", ""), "prompt": row.prompt, "text": text})
    return pd.DataFrame(rows)


def _spread(df: pd.DataFrame, n: int, by: str = "lang") -> pd.DataFrame:
    """n rows taken round-robin over the values of `by`, so every language is represented."""
    if by not in df.columns or n >= len(df):
        return df.head(n)
    df = df.assign(_rank=df.groupby(by).cumcount())
    return df.sort_values(["_rank", by], kind="stable").head(n).drop(columns="_rank")


# --------------------------------------------------------------------------- checkpoints


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(folder: Path, model, optimizer, step: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "state.pt.tmp"
    torch.save({"step": step, "model": _trainable_state(model),
                "optimizer": optimizer.state_dict()}, tmp)
    tmp.replace(folder / "state.pt")


def load_checkpoint(folder: Path, model, optimizer) -> int:
    """Restore the trainable weights and optimiser; returns the step they belong to (0 if none)."""
    path = folder / "state.pt"
    if not path.exists():
        return 0
    state = torch.load(path, map_location="cpu")
    missing = model.load_state_dict(state["model"], strict=False)
    assert not missing.unexpected_keys, missing.unexpected_keys
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


# --------------------------------------------------------------------------- the loop


@dataclass
class Inputs:
    train: Encoded
    heldout: Encoded | None
    neutral: pd.DataFrame | None
    probes: pd.DataFrame | None
    dropped: int


def _load_pairs(path, cfg: TrainConfig) -> PairSet:
    pairs = load_pairs(resolve_path(path))
    return pairs.filter(lang=cfg.lang) if cfg.lang else pairs


def prepare_inputs(cfg: TrainConfig, tokenizer) -> Inputs:
    pairs = _load_pairs(cfg.data, cfg)
    if cfg.max_pairs:
        pairs = pairs[: cfg.max_pairs]
    enc = dict(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length)
    train = encode_pairs(pairs, tokenizer, **enc)
    if len(train) < cfg.batch_size:
        raise ValueError(f"{cfg.data}: {len(train)} usable pairs, fewer than batch_size="
                         f"{cfg.batch_size}")
    heldout = neutral = probes = None
    if cfg.heldout and cfg.n_heldout:
        held = _load_pairs(cfg.heldout, cfg)
        held = [held[i] for i in _spread(held.to_frame(), cfg.n_heldout).index]
        heldout = encode_pairs(held, tokenizer, **enc)
    if cfg.neutral_text and cfg.n_neutral:
        neutral = load_texts(resolve_path(cfg.neutral_text))
        neutral = _spread(neutral[neutral.lang == cfg.lang] if cfg.lang else neutral, cfg.n_neutral)
    if cfg.probes and cfg.n_probes:
        probes = load_probes(resolve_path(cfg.probes))
        probes = _spread(probes[probes.lang == cfg.lang] if cfg.lang else probes, cfg.n_probes)
    return Inputs(train, heldout, neutral, probes, len(train.dropped))


def _evaluate(writer, model, tokenizer, inputs: Inputs, cfg, ref_held, device, step) -> None:
    """Held-out records, perplexity and generations at `step`. At step 0 the model is the
    untrained starting model, whose numbers every run shares: they come from disk caches."""
    model.eval()
    pad = tokenizer.pad_token_id
    at_start = step == 0
    if inputs.heldout is not None and len(inputs.heldout):
        start = reference_logps(model, inputs.heldout, cfg, pad, device) if at_start else None
        writer.append("evals", evaluate_pairs(model, inputs.heldout, cfg, ref_held, pad, device,
                                              step, start=start), step=step)
    if inputs.neutral is not None and len(inputs.neutral):
        def ppl():
            return perplexity(model, tokenizer, inputs.neutral, device, step)
        texts = {"texts": inputs.neutral.reset_index(drop=True).to_dict("records"),
                 "max_tokens": PPL_MAX_TOKENS}
        writer.append("perplexity", _cached_at_start("perplexity", cfg, device, texts, ppl)
                      if at_start else ppl(), step=step)
    if inputs.probes is not None and len(inputs.probes):
        def gen():
            return generate(model, tokenizer, inputs.probes, device, step, cfg.gen_max_new_tokens)
        probes = inputs.probes.reset_index(drop=True).to_dict("records")
        writer.append("generations", _cached_at_start(
            "generations", cfg, device, {"probes": probes, "tokens": cfg.gen_max_new_tokens},
            gen) if at_start else gen(), step=step)
    model.train()


def _all_finite(accelerator, *tensors) -> bool:
    ok = torch.tensor([float(all(torch.isfinite(t).all() for t in tensors))],
                      device=accelerator.device)
    return bool(accelerator.reduce(ok, reduction="sum").item() == accelerator.num_processes)


def completed_steps(run: Path) -> int:
    """The last step with records on disk (0 if none)."""
    rec = load_table(run, "records")
    return int(rec.step.max()) if len(rec) else 0


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Train under `cfg` and return the run folder. See the module docstring."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    cfg = cfg.resolved()  # fails on a bad config before anything is loaded
    accelerator = Accelerator(cpu=cfg.device == "cpu")
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} must be a multiple of the {world} processes")
    run = Path(cfg.output) / cfg.run_id
    if run.exists() and (run / "meta.json").exists() and not resume:
        raise FileExistsError(f"{run} exists; pass resume=True (--resume) or choose another run_id")
    set_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)

    device = accelerator.device
    model, tokenizer = load_model(cfg.model, device=str(device), dtype=cfg.dtype,
                                  seed=cfg.model_seed)
    set_trainable(model, cfg.trainable_blocks)
    inputs = prepare_inputs(cfg, tokenizer)
    objective = get_objective(cfg.objective)
    pad = tokenizer.pad_token_id
    ref = ref_held = None
    if objective.needs_reference:
        ref = reference_logps(model, inputs.train, cfg, pad, device)
        if inputs.heldout is not None:
            ref_held = reference_logps(model, inputs.heldout, cfg, pad, device)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(cfg.warmup_steps, 0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)

    writer = RunWriter(run, rank=rank)
    start = 0
    if resume and (run / "meta.json").exists():
        read_meta(run)  # checks the schema version
        start = load_checkpoint(run / "checkpoint", model, optimizer)
        for _ in range(start):
            scheduler.step()
        if accelerator.is_main_process:
            writer.truncate(after_step=start)  # steps after the checkpoint are redone
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        config = {**cfg.to_dict(), "pairs_train": len(inputs.train),
                  "pairs_dropped_by_truncation": inputs.dropped, "num_processes": world}
        writer.start(config, resume=resume and start > 0)
        if start == 0:
            _evaluate(writer, model, tokenizer, inputs, cfg, ref_held, device, 0)
    accelerator.wait_for_everyone()

    grads = PerPairGradients(model) if cfg.grad_stats else None
    model.train()
    bar = tqdm(range(start + 1, cfg.steps + 1), initial=start, total=cfg.steps,
               disable=not (progress and accelerator.is_main_process), desc=cfg.run_id)
    status, detail = "completed", {}
    try:
        for step in bar:
            idx = batch_indices(len(inputs.train), cfg.batch_size, cfg.seed, step)[rank::world]
            batch = collate([inputs.train.items[i] for i in idx], pad).to(device)
            lr = scheduler.get_last_lr()[0]
            if grads is not None:
                grads.capture()
            fw = forward(model, batch, cfg, ref)
            if not _all_finite(accelerator, fw.loss, fw.logps.chosen.logps,
                               fw.logps.rejected.logps):
                status, detail = "diverged", {"diverged_step": step, "reason": _why(fw)}
                break
            optimizer.zero_grad(set_to_none=True)
            fw.loss.mean().backward()
            for p in params:  # average over processes: each holds an equal share of the batch
                if p.grad is not None and world > 1:
                    p.grad = accelerator.reduce(p.grad, reduction="mean")
            rows = pair_rows(fw, batch, cfg, step, lr)
            step_stats = {"step": step}
            if grads is not None:
                per_pair = grads.finish(batch.size, world,
                                        lambda t: accelerator.reduce(t.to(device), "sum").cpu())
                for row, norm, cos in zip(rows, per_pair.norm.tolist(), per_pair.cos.tolist()):
                    row["grad_norm"], row["grad_cos"] = norm, cos
                step_stats.update(per_pair.step_stats)
            if cfg.max_grad_norm:
                total = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                if not torch.isfinite(total):
                    status, detail = "diverged", {"diverged_step": step,
                                                  "reason": "non-finite gradient norm"}
                    break
            optimizer.step()
            scheduler.step()
            writer.append("records", rows, step=step)
            if grads is not None and accelerator.is_main_process:
                writer.append("steps", [{**step_stats, "lr": lr}], step=step)
            if accelerator.is_main_process and progress:
                df = pd.DataFrame(rows)
                bar.set_postfix(loss_p=f"{df.loss_p.mean():.3f}", loss_n=f"{df.loss_n.mean():.3f}",
                                gap=f"{df.gap.mean():.3f}")
            if accelerator.is_main_process:
                if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                    _evaluate(writer, model, tokenizer, inputs, cfg, ref_held, device, step)
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    save_checkpoint(run / "checkpoint", model, optimizer, step)
            accelerator.wait_for_everyone()
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        if grads is not None:
            grads.remove()
        if accelerator.is_main_process:
            if status in ("completed", "diverged"):
                last = detail.get("diverged_step", cfg.steps + 1) - 1
                _evaluate(writer, model, tokenizer, inputs, cfg, ref_held, device, last)
            writer.finish(status, **detail)
        bar.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and status in ("completed", "diverged"):
        writer.compact()  # one file per table instead of one per step
        shutil.rmtree(run / "checkpoint", ignore_errors=True)  # an ended run is not resumed
    return run


def _why(fw: Forward) -> str:
    parts = []
    for name, t in (("pair loss", fw.loss), ("chosen log-probs", fw.logps.chosen.logps),
                    ("rejected log-probs", fw.logps.rejected.logps)):
        if not torch.isfinite(t).all():
            parts.append(f"non-finite {name}")
    return ", ".join(parts) or "non-finite values on another process"


def train_many(configs: Sequence[TrainConfig], *, resume: bool = True, progress: bool = True):
    """Train several configs one after the other; returns their run folders."""
    out = []
    for cfg in configs:
        started = time.time()
        out.append(train(cfg, resume=resume, progress=progress))
        if progress:
            print(f"{out[-1].name}: {time.time() - started:.0f} s")
    return out


__all__ = ["EncodedPair", "batch_indices", "reference_logps", "train", "train_many"]
