"""The first tab (``view=``): its default with and without a test set, and the checks that name ``view``."""

from __future__ import annotations

import pytest
import traitlets

from tracin_widgets.widget import InfluenceExplorer


def test_view_defaults_to_test_with_a_test_set_and_to_ranking_without(data, fake, make):
    assert make().view == "test"
    w = InfluenceExplorer(data["model"], None, data["train"], engine=fake)
    try:
        assert w.view == "ranking"
        assert w.info["n_test"] == 0 and w.selected_test == -1 and w.query == {}
        w.wait(30)
    finally:
        w.cancel()


def test_view_ranking_opens_on_the_ranking_with_a_test_set(make):
    w = make(view="ranking")
    assert w.view == "ranking"
    assert w.selected_test >= 0  # the test strip keeps its selection for when the user switches tabs


@pytest.mark.parametrize("bad", ["table", "Test", 1, ["test"]])
def test_view_must_be_test_or_ranking(make, bad):
    with pytest.raises(ValueError, match=r"view must be one of 'test', 'ranking', got .*\"ranking\" on the self"):
        make(view=bad)


def test_view_test_needs_a_test_set(data, fake):
    with pytest.raises(
        ValueError, match=r'view="test" needs test examples, but there is no test_dataset.*leave view out'
    ):
        InfluenceExplorer(data["model"], None, data["train"], engine=fake, view="test")


def test_view_set_from_python_is_checked_and_a_tab_alias_is_suggested(make, data, fake):
    w = make()
    w.view = "ranking"
    assert w.view == "ranking"
    with pytest.raises(traitlets.TraitError, match=r"view must be one of 'test', 'ranking', got str 'grid'"):
        w.view = "grid"
    assert w.view == "ranking"
    with pytest.raises(TypeError, match=r"'tab' \(did you mean 'view'\?\)"):
        InfluenceExplorer(data["model"], None, data["train"], engine=fake, tab="ranking")


def test_the_page_switching_tabs_writes_view(make):
    w = make()
    w.set_state({"view": "ranking"})
    assert w.view == "ranking" and w.error == ""
    with pytest.raises(traitlets.TraitError):
        w.set_state({"view": "nope"})
    assert w.view == "ranking"
    assert "invalid view" in w.error
