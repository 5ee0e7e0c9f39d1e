"""Training's batch means through accelerate's trackers (config report_to), read back from
TensorBoard's own event files: they are the per-pair records' means, step by step."""

import numpy as np
import pytest
from test_reliability import tiny_config

from prefstudy.config import ConfigError, TrainConfig, check
from prefstudy.records import load_run
from prefstudy.train import TRACKERS, train

pytest.importorskip("tensorboard")


def _scalars(folder) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no event files under {folder}"
    out: dict[str, dict[int, float]] = {}
    for f in files:
        events = EventAccumulator(str(f))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in events.Scalars(tag)})
    return out


def test_tensorboard_gets_each_steps_batch_means(tmp_path):
    run = train(tiny_config(tmp_path, report_to=["tensorboard"], steps=3), progress=False)
    scalars = _scalars(run / TRACKERS)
    records = load_run(run)
    means = records.groupby("step")
    for step, rows in means:
        assert scalars["train/loss"][step] == pytest.approx(rows.pair_loss.mean(), rel=1e-5)
        assert scalars["train/loss_p"][step] == pytest.approx(rows.loss_p.mean(), rel=1e-5)
        correct = (rows.margin > 0) + 0.5 * (rows.margin == 0)
        assert scalars["train/reward_accuracy"][step] == pytest.approx(correct.mean())
        assert scalars["train/lr"][step] == pytest.approx(rows.step_lr.iloc[0])
    assert sorted(scalars["train/loss"]) == [1, 2, 3]
    assert all(np.isfinite(v) and v >= 0 for v in scalars["train/grad_norm"].values())


def test_a_run_without_trackers_writes_none_and_an_unknown_tracker_is_one_line(tmp_path):
    run = train(tiny_config(tmp_path, steps=1), progress=False)
    assert not (run / TRACKERS).exists()
    with pytest.raises(ConfigError, match="report_to.*unknown tracker.*'tensorbord'"):
        check(TrainConfig(report_to=["tensorbord"]))
