"""A study: many objectives × seeds on the same model and data, described by one TOML file.

    model = "smollm2-135m-instruct"           # any TrainConfig field: shared by every run
    [[runs]]                                  # one entry per configuration compared
    label = "naive-sum"                       # the name figures and tables use
    objective = "naive"
    params = { norm = "sum" }
    [profiles.cpu]                            # what a 2-core machine can finish in minutes
    seeds = [0]
    lrs = [1e-4, 3e-4, 1e-3]                  # a learning-rate sweep: every run at every lr
    labels = ["naive-sum", "dpo"]             # optional: only these runs in this profile
    steps = 24                                # any TrainConfig field, overriding the shared ones
    [profiles.gpu]                            # the full-size study
    seeds = [0, 1, 2]

Objectives are compared at matched progress along the sweep (prefstudy.progress), never at one
learning rate: a run's id is `<label>-lr<lr>-s<seed>` in a sweep, `<label>-s<seed>` without one.

`run_study` trains what is missing (a completed or diverged run is kept, a killed one resumed),
so re-running a study after an interruption finishes it, and audits the pairs it trains on
(`audit_study`: claims C1 and C2 at the starting model).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from .config import FIELDS, ConfigError, TrainConfig, from_dict, listed, read_toml, run_name, shown
from .paths import resolve_path
from .records import default_runs_dir, read_config, read_meta, run_folders
from .tables import AUDIT_DIR, STUDY_FILE

DEFAULT_STUDY = "configs/study.toml"  # relative to the working directory, else bundled


@dataclass(frozen=True)
class RunSpec:
    label: str
    objective: str
    params: dict[str, Any]
    seeds: list[int] | None = None  # this run's own seeds; None: the study's
    lrs: list[float] | None = None  # this run's own learning rates; None: the study's
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)  # TrainConfig overrides


@dataclass
class Study:
    name: str
    profile: str
    seeds: list[int]
    runs: list[RunSpec]
    shared: dict[str, Any]  # TrainConfig fields common to every run (profile applied)
    output: Path
    lrs: list[float] | None = None  # the learning-rate sweep; None: the one lr of `shared`
    listed: list[str] | None = None  # every label of the profile, in order (`runs` may be fewer)

    def configs(self) -> list[TrainConfig]:
        """One checked TrainConfig per (run, lr, seed), seeds outermost, then learning rates: a
        study stopped early has every configuration at every lr with its first seeds. A run
        with its own `seeds` / `lrs` takes part at those only."""
        seeds = [*self.seeds, *_extra(self.seeds, (s for r in self.runs for s in r.seeds or ()))]
        lrs = [*(self.lrs or [None]), *_extra(self.lrs or [None],
                                              (v for r in self.runs for v in r.lrs or ()))]
        out = []
        for seed in seeds:
            for lr in lrs:
                out += [self._config(spec, seed, lr) for spec in self.runs
                        if seed in (spec.seeds or self.seeds)
                        and lr in (spec.lrs or self.lrs or [None])]
        _check_run_ids(self.name, out)
        return out

    def _config(self, spec: RunSpec, seed: int, lr: float | None) -> TrainConfig:
        swept = {} if lr is None else {"lr": lr}
        run_id = run_name(spec.label, lr, seed)
        values = {**self.shared, **spec.fields, **swept, "objective": spec.objective,
                  "params": dict(spec.params), "label": spec.label, "seed": seed,
                  "output": str(self.output), "run_id": run_id}
        where = f"study {self.name!r}, runs[label={spec.label!r}]"
        try:
            return from_dict(values, where).resolved()
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def _extra(given: Sequence, more) -> list:
    """The values of `more` that `given` lacks, once each, in order (a run's own seeds or
    learning rates beyond the study's: the study's own list is kept as written, repeats and
    all, so a repeated seed is refused as one run id, not silently merged)."""
    return [v for v in dict.fromkeys(more) if v not in given]


def _where(cfg: TrainConfig) -> str:
    return f"runs[label={cfg.label!r}] at lr {cfg.lr:g}, seed {cfg.seed}"


def _check_run_ids(name: str, configs: Sequence[TrainConfig]) -> None:
    """Refuse two configurations of a study that map to one run id (equal, or equal but for
    case, which a case-insensitive file system reads as one folder): ConfigError naming both."""
    seen: dict[str, TrainConfig] = {}
    for cfg in configs:
        other = seen.setdefault(cfg.run_id.casefold(), cfg)
        if other is not cfg:
            both = (repr(cfg.run_id) if other.run_id == cfg.run_id else
                    f"{other.run_id!r} / {cfg.run_id!r} (one folder where case does not count)")
            raise ConfigError(f"study {name!r}: {_where(other)} and {_where(cfg)} map to one "
                              f"run id {both}; give them distinct labels, learning rates or "
                              "seeds")


def hardware_profile() -> str:
    return "gpu" if torch.cuda.is_available() else "cpu"


def load_study(path: str | Path, *, profile: str | None = None, seeds: Sequence[int] | None = None,
               output: str | Path | None = None, overrides: dict[str, Any] | None = None,
               labels: Sequence[str] | None = None) -> Study:
    """Read a study file and apply a profile ("cpu", "gpu", or any profile the file names;
    None → from the hardware), then `overrides` (TrainConfig fields for every run, None values
    ignored: e.g. a user's own `data`, `heldout` and `model`).

    `profiles` is a table of profiles, or the name of another study file (relative to this one)
    whose profiles this study shares (all but their `labels`, which name that study's runs).
    A run's `objective` is any name `config.resolve_objective` takes (a TRL loss_type too); its
    label defaults to that name (`trl:ipo` → `trl-ipo`). Anything wrong with the file, however
    it is malformed, is a ConfigError: one short line naming the file and what is wrong.

    A [[runs]] entry may name its own `seeds` and `lrs` (it runs at those only: a β sweep at one
    learning rate, a focused set with more seeds; `seeds` given here override a run's own) and any TrainConfig field for itself
    (`trainable_blocks = 30`). `labels`: train only these of the profile's runs now (the study's
    `listed` labels, its order, stay all of them)."""
    path, now = Path(path), None if labels is None else list(labels)
    doc = read_toml(path, "study")
    profiles = _profiles(path, doc.pop("profiles", {}))
    runs = doc.pop("runs", [])
    name = doc.pop("name", path.stem)
    if not isinstance(name, str) or not name.strip() or any(c in name for c in "/\\\0"):
        raise ConfigError(f"{path}: name = {shown(name)} must be a plain folder name")
    profile = profile or hardware_profile()
    if profiles and profile not in profiles:
        raise ConfigError(f"{path}: no profile {shown(profile)}; profiles: {listed(profiles)}")
    shared = {**doc, **profiles.get(profile, {}),
              **{k: v for k, v in (overrides or {}).items() if v is not None}}
    study_seeds = list(seeds) if seeds is not None else _seeds(path, shared.pop("seeds", [0]))
    shared.pop("seeds", None)
    lrs, only = _sweep(path, shared.pop("lrs", None)), shared.pop("labels", None)
    for key in ("objective", "params", "seed", "run_id", "label", "output"):
        if key in shared:
            raise ConfigError(f"{path}: {key!r} is set per run, not for the whole study")
    unknown = [k for k in shared if k not in FIELDS]
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {shown(unknown)}; allowed: "
                          f"{', '.join(FIELDS)}, and seeds, lrs, labels")
    specs = _run_specs(path, runs)
    if seeds is not None:  # seeds given here override every run's own, too
        specs = [dataclasses.replace(s, seeds=None) for s in specs]
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{path}: labels must be unique: {shown(labels)}")
    if only is not None:
        if (not isinstance(only, list) or not only
                or not all(isinstance(x, str) for x in only) or set(only) - set(labels)):
            raise ConfigError(f"{path}: profile {profile!r}: labels = {shown(only)} must be a "
                              f"non-empty list of the study's run labels: {listed(labels)}")
        specs = [s for s in specs if s.label in only]
    listed_labels = [s.label for s in specs]
    if now is not None:
        if not now or set(now) - set(listed_labels):
            raise ConfigError(f"{path}: labels {shown(now)}: name runs of profile "
                              f"{profile!r}: {listed(listed_labels)}")
        specs = [s for s in specs if s.label in now]
    out = Path(output) if output else Path("runs") / f"{name}-{profile}"
    study = Study(name, profile, study_seeds, specs, shared, out, lrs, listed_labels)
    try:
        study.configs()  # every run checked before anything is trained
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return study


def _profiles(path: Path, profiles: Any, shared: bool = True) -> dict[str, dict[str, Any]]:
    """The study's profiles: a table of tables, or (where `shared`) another study file's, all
    but their `labels` (that file's own profiles must be a table: no chains)."""
    if isinstance(profiles, str) and shared:  # another study's; its `labels` name its own runs
        other = path.parent / profiles
        theirs = _profiles(other, read_toml(other, "study").get("profiles", {}), shared=False)
        return {name: {k: v for k, v in values.items() if k != "labels"}
                for name, values in theirs.items()}
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
        raise ConfigError(f"{path}: profiles = {shown(profiles)} must be a table of profiles "
                          "([profiles.<name>] tables) or the name of another study file")
    return profiles


def _run_specs(path: Path, runs: Any) -> list[RunSpec]:
    """The [[runs]] entries: each a table with `objective` (a string), optionally `label` (a
    string) and `params` (a table)."""
    if not isinstance(runs, list) or not runs:
        raise ConfigError(f"{path}: no [[runs]]" if runs in ([], {}) else
                          f"{path}: runs = {shown(runs)} must be [[runs]] tables")
    specs = []
    for i, run in enumerate(runs):
        if not isinstance(run, dict):
            raise ConfigError(f"{path}: runs[{i}] = {shown(run)} must be a table")
        extra = set(run) - {"label", "objective", "params", "seeds", "lrs", *RUN_FIELDS}
        if not isinstance(run.get("objective"), str) or extra:
            raise ConfigError(f"{path}: runs[{i}] needs 'objective', a string (and optionally "
                              "'label', 'params', 'seeds', 'lrs' and TrainConfig fields)"
                              + (f"; unknown: {shown(sorted(extra))}" if extra else ""))
        label = run.get("label", run["objective"].replace(":", "-"))
        params = run.get("params", {})
        if not isinstance(label, str) or not isinstance(params, dict):
            raise ConfigError(f"{path}: runs[{i}]: label must be a string and params a table, "
                              f"got label = {shown(label)}, params = {shown(params)}")
        seeds = _seeds(path, run["seeds"]) if "seeds" in run else None
        lrs = _sweep(path, run.get("lrs"))
        fields = {k: v for k, v in run.items() if k in RUN_FIELDS}
        specs.append(RunSpec(label, run["objective"], params, seeds, lrs, fields))
    return specs


# TrainConfig fields a [[runs]] entry may set for itself (not those a study sets per run)
RUN_FIELDS = frozenset(FIELDS) - {"objective", "params", "seed", "run_id", "label", "output", "lr",
                                   "objective_given"}


def _seeds(path: Path, seeds: Any) -> list[int]:
    """The study's seeds: a list of whole numbers."""
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool)
                                              for s in seeds):
        raise ConfigError(f"{path}: seeds = {shown(seeds)} must be a list of whole numbers")
    return seeds


def _sweep(path: Path, lrs: Any) -> list[float] | None:
    """The study's learning rates: a non-empty list of distinct positive numbers, or None."""
    if lrs is None:
        return None
    ok = (isinstance(lrs, list) and lrs
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in lrs)
          and len(set(lrs)) == len(lrs))
    if not ok:
        raise ConfigError(f"{path}: lrs = {shown(lrs)} must be a non-empty list of distinct "
                          "learning rates > 0")
    return [float(v) for v in lrs]


def pending(study: Study) -> list[TrainConfig]:
    """The configs of runs that have not ended (completed or diverged) yet.

    A run folder of the same id already in the study's output must have been made with these
    settings (`train.resume_changes`: every field that changes results): ConfigError naming the
    folder and the settings that differ otherwise, so that a run made with other settings is
    never kept, resumed or reported as this study's."""
    from .train import resume_changes

    todo = []
    for cfg in study.configs():
        folder = study.output / cfg.run_id
        if (folder / "meta.json").exists():
            changes = resume_changes(read_config(folder), cfg)
            if changes:
                raise ConfigError(f"{folder}: the study's output already holds run "
                                  f"{cfg.run_id!r}, made with other settings "
                                  f"({'; '.join(changes)}); move it away or give the study "
                                  "another output")
            if read_meta(folder)["status"] in ENDED:
                continue
        todo.append(cfg)
    return todo


def shard_of(run_id: str, n: int) -> int:
    """The share (1..n) of a study's grid that run `run_id` belongs to: a stable hash of its id,
    so that workers started at different times, on other machines, agree."""
    return int(hashlib.sha1(run_id.encode()).hexdigest(), 16) % n + 1


def parse_shard(text: str) -> tuple[int, int]:
    """`i/n` (1 ≤ i ≤ n) as (i, n); ValueError naming what is wrong otherwise."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text[:40]!r}: expected i/n, e.g. 1/4") from None
    if not 1 <= i <= n:
        raise ValueError(f"--shard {text}: i must be between 1 and n")
    return i, n


def _locked(folder: Path) -> bool:
    """Whether another process holds run folder `folder`'s lock now (it is training there)."""
    from filelock import FileLock, Timeout

    from .locks import lock_file

    if not lock_file(folder).exists():
        return False
    lock = FileLock(lock_file(folder), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    except OSError:
        return False
    lock.release()
    return False


def plan(study: Study, shard: tuple[int, int] | None = None) -> pd.DataFrame:
    """Every planned run of the study and its state now: run_id, label, lr, seed, shard (1..n
    with `shard`'s n, else 1), state: the status its meta.json records (completed, diverged,
    failed, interrupted, running), "training" where another process holds its lock, "pending"
    where it has no folder yet. With `shard`, only that share's runs."""
    rows = []
    for cfg in study.configs():
        folder = study.output / cfg.run_id
        state = "pending"
        if (folder / "meta.json").exists():
            state = read_meta(folder).get("status", "unknown")
        if state not in ENDED and _locked(folder):
            state = "training"
        rows.append({"run_id": cfg.run_id, "label": cfg.label, "lr": cfg.lr, "seed": cfg.seed,
                     "shard": shard_of(cfg.run_id, shard[1]) if shard else 1, "state": state})
    table = pd.DataFrame(rows, columns=["run_id", "label", "lr", "seed", "shard", "state"])
    return table[table["shard"] == shard[0]].reset_index(drop=True) if shard else table


ENDED = ("completed", "diverged")  # a run in either state is kept, never trained again


def run_study(study: Study, *, progress: bool = True,
              on_run: Callable[[int, int, Path], None] | None = None,
              shard: tuple[int, int] | None = None) -> list[Path]:
    """Train every run of the study that has not ended, then audit the pairs it trains on
    (`audit_study`) if not done yet; returns all run folders. on_run(i, n, folder) is called
    after the i-th of the n runs to train ends (the CLI's one line per run).

    shard=(i, n): only the runs of the i-th of n shares (`shard_of`), skipping a run another
    process is training (its lock held); the audit waits until every run of the grid ended
    (a later `prefstudy study` or the last shard to end makes it)."""
    from .inputs import heldout_pairs, training_pairs
    from .train import train

    first = study.configs()[0]
    training_pairs(first)  # a bad dataset fails here, in one line, before any model loads
    heldout_pairs(first)
    todo, total = pending(study), len(study.configs())  # refuses runs made otherwise, first
    if shard is not None:
        todo = [cfg for cfg in todo if shard_of(cfg.run_id, shard[1]) == shard[0]]
    study.output.mkdir(parents=True, exist_ok=True)
    (study.output / STUDY_FILE).write_text(json.dumps(
        {"name": study.name, "profile": study.profile, "seeds": study.seeds, "lrs": study.lrs,
         "labels": study.listed or [s.label for s in study.runs]}, indent=2) + "\n")
    # runs done / to do: the runs that ended before count as done from the start
    bar = tqdm(todo, total=len(todo) if shard else total,
               initial=0 if shard else total - len(todo), unit="run", disable=not progress,
               desc=f"study {study.name}" + (f" shard {shard[0]}/{shard[1]}" if shard else ""))
    for i, cfg in enumerate(bar, 1):
        bar.set_postfix_str(cfg.run_id)
        if shard is not None and _locked(study.output / cfg.run_id):
            tqdm.write(f"{cfg.run_id}: another process is training it; moving on")
            continue
        resume = (study.output / cfg.run_id / "meta.json").exists()
        folder = train(cfg, resume=resume, progress=progress)
        if on_run is not None:
            on_run(i, len(todo), folder)
    bar.close()
    if shard is None or not pending(study):
        if not _audit_current(study):  # missing, unreadable, or made from other pairs or model
            audit_study(study, progress=progress)
    return [study.output / cfg.run_id for cfg in study.configs()]


def _audit_inputs(cfg: TrainConfig) -> dict:
    """What a study's audit is made from: the content of its pairs and of its model
    (`train.fingerprints`)."""
    from .train import fingerprints

    prints = fingerprints(cfg)
    return {k: prints[k] for k in ("data", "heldout", "model")}


def _audit_current(study: Study) -> bool:
    """Whether the study's audit exists, reads, and was made from the pairs and the model the
    study trains on now; otherwise `run_study` makes it again."""
    try:
        saved = json.loads((study.output / AUDIT_DIR / "audit.json").read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return saved.get("fingerprints") == _audit_inputs(study.configs()[0])


def audit_study(study: Study, *, progress: bool = True) -> Path:
    """Claims C1 and C2 at the start, on the pairs the study trains on: `prefstudy.audit` of
    the first run's training pairs (`inputs.training_pairs`: every run trains on the same
    sample), cut as training cuts them, with the length dose-response and per-pair gradients,
    at the study's starting model. Written to `<study output>/audit/` (`audit.write_audit`),
    which the report reads; the held-out pairs' audit (per-pair gradients of every one, for
    the entanglement and CHES that claim C4 compares with displacement) to `audit/heldout/`.
    Their pair texts are kept as the runs keep theirs (the study's keep_text, `paths.text_rule`).
    Returns the training pairs' audit page."""
    from .audit import audit, write_audit
    from .inputs import heldout_pairs, training_pairs

    cfg = study.configs()[0]
    given = dict(model=cfg.model, max_length=cfg.max_length, device=cfg.device, dtype=cfg.dtype,
                 max_prompt_length=cfg.max_prompt_length, gradients=True, progress=progress)
    pairs = training_pairs(cfg)
    result = audit(pairs, **given)
    result.settings["source"] = f"{cfg.data} (the {len(pairs)} pairs the study trains on)"
    result.settings["data"] = cfg.data  # whose texts `paths.text_rule` keeps or leaves out
    result.settings["fingerprints"] = _audit_inputs(cfg)
    held, nested = heldout_pairs(cfg), {}
    if held is not None:  # entanglement and CHES of the pairs displacement is measured on
        nested["heldout"] = audit(held, **given, factors=(), gradient_pairs=None,
                                  objectives=(("dpo", {}),))  # a pair's own: one suffices
        source = cfg.heldout or f"{cfg.data}, split by prompt"  # `inputs.heldout_pool`
        nested["heldout"].settings["source"] = f"{source} (the {len(held)} held-out pairs)"
        nested["heldout"].settings["data"] = cfg.heldout or cfg.data
    # both audits in one folder swap: an interrupted audit never leaves one new, one old
    return write_audit(result, study.output / AUDIT_DIR, nested=nested, keep_text=cfg.keep_text)


def describe(study: Study) -> str:
    cfgs = study.configs()
    steps = cfgs[0].steps if cfgs else 0
    sweep = f"{len(study.lrs)} learning rates × " if study.lrs else ""
    own = any(r.seeds or r.lrs for r in study.runs)  # some runs at their own seeds / lrs
    shape = (f"{len(study.runs)} configurations at their own seeds and learning rates" if own else
             f"{len(study.runs)} configurations × {sweep}{len(study.seeds)} seed(s)")
    return (f"study {study.name!r}, profile {study.profile}: {shape} = {len(cfgs)} runs of "
            f"{steps} steps on {study.shared.get('model', TrainConfig.model)} → {study.output}")


def notebook_runs(rerun: bool = False, *, profile: str = "tiny",
                  output: str | Path | None = None, progress: bool = False) -> Path:
    """The folder of runs a notebook reads: the notebooks' one switch.

    rerun=False: the committed study runs (`records.default_runs_dir()`, i.e. reports/runs or
    `$PREFSTUDY_RUNS`). rerun=True: train the default study (configs/study.toml) afresh into
    `output` (default: a new temporary folder) and return that folder. profile: one of the study
    file's profiles; "tiny" is the study on the random tiny model, one seed, a few minutes on two
    cores; "cpu" takes tens of minutes on two cores.
    """
    if not rerun:
        root = default_runs_dir()
        if not run_folders(root):
            raise FileNotFoundError(f"{root}: no committed runs. Set RERUN = True to train a "
                                    "tiny study, or run `prefstudy study`.")
        return root
    output = Path(output) if output else Path(tempfile.mkdtemp(prefix="prefstudy-runs-"))
    run_study(load_study(resolve_path(DEFAULT_STUDY), profile=profile, output=output),
              progress=progress)
    return output


__all__ = ["DEFAULT_STUDY", "RunSpec", "Study", "dataclasses", "describe", "load_study",
           "notebook_runs", "pending", "run_study", "audit_study"]
