"""Each objective's declared family, and what a parameter value changes about it."""

import pytest

from prefstudy.hyperparams import Param
from prefstudy.objectives import (
    FAMILIES,
    OBJECTIVES,
    catalogue,
    family_of,
    register,
)

EXPECTED = {
    "likelihood": {"sft", "naive", "negative_only", "unlikelihood"},
    "reference-based": {"dpo", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair",
                        "sppo_hard", "discopop", "aot", "aot_unpaired", "rdpo"},
    "length-normalised": {"simpo", "orpo", "ld_dpo", "book_dpo"},
    "anchored": {"dpop", "rpo", "apo_zero", "apo_down"},
}


def test_families_are_the_four_in_listing_order():
    assert FAMILIES == ("likelihood", "length-normalised", "reference-based", "anchored")


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_every_objective_declares_its_family(name):
    (family,) = [f for f, names in EXPECTED.items() if name in names]
    assert OBJECTIVES[name].family == family
    assert family_of(name) == family


def test_catalogue_has_the_family_of_every_row():
    assert {row["name"]: row["family"] for row in catalogue()} == {
        name: o.family for name, o in OBJECTIVES.items()}


def test_naive_under_a_token_mean_is_length_normalised():
    assert family_of("naive") == "likelihood"  # summed by default
    assert family_of("naive", {"norm": "sum"}) == "likelihood"
    assert family_of("naive", {"norm": "mean"}) == "length-normalised"
    assert family_of("sft", {"norm": "sum"}) == "likelihood"  # only naive moves
    with pytest.raises(ValueError, match="unknown objective"):
        family_of("dpoo")
    with pytest.raises(ValueError, match="no parameter"):
        family_of("dpo", {"norm": "mean"})


def test_register_refuses_a_family_outside_the_four():
    before = dict(OBJECTIVES)

    def fn(logps, *, beta):
        """Doc. Shape: (batch,)."""

    for family in (None, "dpo-like", "Likelihood"):
        with pytest.raises(ValueError, match="family .*allowed: likelihood, length-normalised"):
            register("test_only", needs_reference=False, source="x", family=family,
                     beta=Param(0.1, above=0.0, help="β"))(fn)
    assert OBJECTIVES == before
