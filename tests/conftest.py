import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer) of the tiny preset: random weights, SmolLM2's tokenizer."""
    from prefstudy.models import load_model

    return load_model("tiny", device="cpu")


@pytest.fixture(scope="session")
def tokenizer(tiny):
    return tiny[1]


@pytest.fixture(scope="session")
def tiny_profile():
    """The `tiny` profile of the default study (configs/study.toml: the random tiny model, one
    learning rate, a few steps), as a `Study` narrowed to what a test needs:
    `tiny_profile(output, labels=["naive-sum", "dpo"], seeds=[0, 1], lrs=[1e-4, 1e-3],
    n_heldout=8)`. Only the runs `labels` names; `lrs` sweeps the learning rate; any other
    keyword is a TrainConfig field for every run (load_study's `overrides`)."""
    from prefstudy.paths import in_repo
    from prefstudy.study import DEFAULT_STUDY, load_study

    def narrowed(output=None, *, labels, seeds=None, **changes):
        return load_study(in_repo(DEFAULT_STUDY), profile="tiny", seeds=seeds, output=output,
                          overrides={"labels": list(labels), **changes})

    return narrowed


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
