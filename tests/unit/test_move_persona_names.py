"""The name a moved project's persona is copied under when the target tenant's of the same
name means another prompt (move-project --on-persona-conflict rename)."""

from __future__ import annotations

from nyxflow_runs.store.admin import PERSONA_NAME_MAX, Resolved, _free_name

MINE = Resolved("id-a", "", "Be strict.")


def test_the_source_tenant_s_slug_then_a_number_for_a_name_taken() -> None:
    theirs = {
        "reviewer": Resolved("id-b", "", "Be lenient."),
        "reviewer (team-a)": Resolved("id-c", "", "x"),
    }
    taken = {"reviewer", "reviewer (team-a)", "reviewer (team-a 2)"}

    assert _free_name("reviewer", "team-a", {}, MINE, {"reviewer"}) == "reviewer (team-a)"
    assert _free_name("reviewer", "team-a", theirs, MINE, taken) == "reviewer (team-a 3)"


def test_the_target_s_persona_with_the_very_same_prompt_is_reused() -> None:
    theirs = {"reviewer (team-a)": Resolved("id-c", "", "Be strict.")}

    assert _free_name("reviewer", "team-a", theirs, MINE, set(theirs)) == "reviewer (team-a)"


def test_a_long_name_is_cut_to_fit_with_its_suffix() -> None:
    name = _free_name("r" * PERSONA_NAME_MAX, "team-a", {}, MINE, set())

    assert len(name) == PERSONA_NAME_MAX and name.endswith("r (team-a)")
