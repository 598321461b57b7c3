"""API compatibility with Captum 0.9: constructor and method parameters in Captum's order, extras keyword-only."""

from __future__ import annotations

import inspect

import pytest

captum_influence = pytest.importorskip("captum.influence")


def _names(fn):
    return [p.name for p in inspect.signature(fn).parameters.values() if p.name != "self"]


@pytest.mark.parametrize("name", ["TracInCP", "TracInCPFast", "TracInCPFastRandProj"])
def test_signatures_extend_captums(name):
    import tracin_widgets.influence as ours_mod

    theirs, ours = getattr(captum_influence, name), getattr(ours_mod, name)
    t_init, o_init = _names(theirs.__init__), _names(ours.__init__)
    assert o_init[: len(t_init)] == t_init
    extra = list(inspect.signature(ours.__init__).parameters.values())[len(t_init) + 1 :]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in extra)
    for method in ("influence", "self_influence"):
        t_m = _names(getattr(theirs, method))
        o_m = _names(getattr(ours, method))
        assert o_m[: len(t_m)] == t_m, method


def test_k_mode_result_type_matches_captum():
    from captum.influence._utils.common import KMostInfluentialResults as Theirs

    from tracin_widgets.influence import KMostInfluentialResults as Ours

    assert Ours._fields == Theirs._fields == ("indices", "influence_scores")
