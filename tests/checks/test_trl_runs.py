"""Findings on real TRL 1.16 logs of tiny runs: step logs, and the recorded pairs of two runs
with a seeded bug. The loss variants change what a correct log looks like: losses below 0, a
loss with a minimum of 0, a loss that lowers the chosen likelihood by design, and a trainer
without a reference."""

import json
from pathlib import Path

import pytest

import dpodiag
from synthetic import codes

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "trl_runs"

# (file, declared settings) -> (codes that must appear, codes that must not appear). Errors not
# listed in the first set must not appear either.
CASES = {
    ("dpo-sigmoid.trainer_state.json", ()): (set(), set()),
    ("dpo-sigmoid.trainer_state.json", (("beta", 0.1), ("loss_type", "sigmoid"))): (set(), set()),
    # Robust's loss falls below 0 at large margins and its gradient weight never vanishes.
    ("dpo-robust.trainer_state.json", (("beta", 0.1), ("loss_type", "robust"), ("label_smoothing", 0.1))):
        (set(), {"margin-saturation"}),
    ("dpo-robust.trainer_state.json", ()): (set(), {"margin-saturation"}),
    # Hinge reaches its minimum 0 once every margin passes 1: grad_norm is 0 by design.
    ("dpo-hinge-b0.5.trainer_state.json", ()): (set(), {"no-learning-signal", "margin-saturation"}),
    ("dpo-hinge-b0.5.trainer_state.json", (("beta", 0.5), ("loss_type", "hinge"))):
        (set(), {"no-learning-signal", "margin-saturation"}),
    # apo_down lowers the chosen likelihood by design.
    ("dpo-apo_down.trainer_state.json", (("beta", 0.1), ("loss_type", "apo_down"))):
        (set(), {"likelihood-displacement"}),
    # DiscoPOP with tau 0.05 has a local minimum at a negative margin, next to the start. The run
    # settles there, so the logged loss falls as the margin turns negative.
    ("dpo-discopop.trainer_state.json", ()): ({"preference-direction-inverted"}, set()),
    # CPOTrainer has no reference: its first loss is the preference loss plus the NLL term.
    ("cpo-sigmoid.trainer_state.json", (("beta", 0.1), ("loss_type", "sigmoid"))): (set(), set()),
    ("cpo-sigmoid.console.log", (("beta", 0.1), ("loss_type", "sigmoid"))): (set(), set()),
    # Seeded bugs. Train labels swapped: train learns, eval ends below chance.
    ("dpo-sigmoid-swap-train.trainer_state.json", ()): ({"preference-direction-inverted"}, {"overfitting"}),
    ("pairs/dpo-sigmoid-swap-train", ()): ({"preference-direction-inverted"}, {"overfitting"}),
    # The train loss negated before backward: the optimizer climbs the loss. TRL logs the
    # negated loss, which falls; the recorded per-pair loss is TRL's own, which rises.
    ("dpo-sigmoid-gradient-ascent.trainer_state.json", ()): ({"preference-direction-inverted"}, {"overfitting"}),
    ("pairs/dpo-sigmoid-gradient-ascent", ()): ({"preference-direction-inverted"}, set()),
}


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case[0]}{'+flags' if case[1] else ''}")
def test_trl_run_findings(case):
    name, flags = case
    must, must_not = CASES[case]
    diagnosis = dpodiag.diagnose(dpodiag.load(FIXTURES / name, flags=dict(flags)), device="cpu")
    found = codes(diagnosis.findings)
    assert must <= found
    assert not (must_not & found)
    errors = {f.code for f in diagnosis.findings if f.severity == "error"}
    assert errors <= must


@pytest.mark.parametrize("name", ["cpo-sigmoid.trainer_state.json", "cpo-sigmoid.console.log"])
def test_cpo_trainer_read_without_reference(name):
    run, = dpodiag.load(FIXTURES / name)
    assert run.dialect == "trl-cpo"


@pytest.mark.parametrize("name", ["dpo-sigmoid.trainer_state.json", "dpo-robust.trainer_state.json"])
def test_dpo_trainer_keeps_its_dialect(name):
    run, = dpodiag.load(FIXTURES / name)
    assert run.dialect == "trl-v1"


@pytest.mark.parametrize("flags", [{"beta": 0.1, "loss_type": "discopop"}, {}], ids=["declared", "first loss"])
def test_discopop_inversion_names_its_local_minimum(flags):
    # TRL's trainer_state.json names no loss type; the first loss, 0.8466, is DiscoPOP's own.
    diagnosis = dpodiag.diagnose(dpodiag.load(FIXTURES / "dpo-discopop.trainer_state.json",
                                              flags=flags), device="cpu")
    inverted, = [f for f in diagnosis.findings if f.code == "preference-direction-inverted"]
    assert "local minimum at the margin -0.119" in inverted.message
    assert "sign error in the loss or" not in inverted.message


@pytest.mark.parametrize("name", ["cpo-sigmoid.trainer_state.json", "cpo-sigmoid.console.log"])
def test_cpo_beta_inferred_from_rewards(name):
    run, = dpodiag.load(FIXTURES / name)
    dpodiag.analyse(run, device="cpu")
    assert run.meta.beta == pytest.approx(0.1, rel=1e-3)
    assert run.meta.source_of("beta") == "inferred"


def test_reference_free_beta_needs_one_ratio(tmp_path):
    # The same log with the chosen rewards halved from the 20th record on: two ratios, no beta.
    state = json.loads((FIXTURES / "cpo-sigmoid.trainer_state.json").read_text())
    for index, record in enumerate(state["log_history"]):
        if index >= 20 and "rewards/chosen" in record:
            record["rewards/chosen"] /= 2
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps(state))
    run, = dpodiag.load(path, dialect="trl-cpo")
    dpodiag.analyse(run, device="cpu")
    assert run.meta.beta is None


@pytest.mark.parametrize("name, split, title", [
    ("pairs/dpo-sigmoid-swap-train", "eval", "Train and eval disagree on which response is preferred"),
    ("pairs/dpo-sigmoid-gradient-ascent", "train", "Training increases its own loss"),
])
def test_seeded_direction_bugs_in_recorded_pairs(name, split, title):
    diagnosis = dpodiag.diagnose(dpodiag.load(FIXTURES / name), device="cpu")
    (finding,) = [f for f in diagnosis.findings if f.code == "preference-direction-inverted"]
    assert (finding.split, finding.title) == (split, title)
