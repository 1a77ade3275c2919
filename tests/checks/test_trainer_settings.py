"""Trainer settings stored with a pair log that change its per-pair loss: the loss checks skip,
with the setting named, and apply again without it."""

import numpy as np
import polars as pl
import pytest

import dpodiag
from dpodiag.errors import InputError
from dpodiag.checks.settings import loss_altering_settings
from synthetic import codes, make_pairs, write_parquet

LOSS_CHECKS = {"loss-mismatch", "beta-mismatch", "loss-type-mismatch", "loss-scale-mismatch"}


def weighted(frame: pl.DataFrame) -> pl.DataFrame:
    """The sigmoid loss times a per-pair weight in (0.05, 1), as TRL's use_weighting logs it."""
    weights = np.random.default_rng(3).uniform(0.05, 1.0, frame.height)
    return frame.with_columns(loss=pl.col("loss") * weights)


def findings(path):
    return dpodiag.diagnose(dpodiag.load(path), device="cpu").findings


def test_loss_checks_skip_declared_weighting(tmp_path):
    path = write_parquet(weighted(make_pairs(eval_every=5)), tmp_path / "wpo.parquet", beta=0.1,
                         loss_type="sigmoid", trainer_config={"use_weighting": True})
    result = findings(path)
    assert codes(result, "error") == set()
    (skipped,) = [f for f in result if f.code == "checks-skipped"]
    assert "use_weighting=True" in skipped.evidence["skipped"]["loss-mismatch"]


def test_undeclared_weighting_is_an_error(tmp_path):
    path = write_parquet(weighted(make_pairs(eval_every=5)), tmp_path / "wpo.parquet", beta=0.1,
                         loss_type="sigmoid")
    assert codes(findings(path), "error") & LOSS_CHECKS


def test_sidecar_settings_merge_with_the_file(tmp_path):
    path = write_parquet(weighted(make_pairs(eval_every=5)), tmp_path / "wpo.parquet", beta=0.1,
                         loss_type="sigmoid", trainer_config={"f_divergence_type": "reverse_kl"})
    (tmp_path / "wpo.dpodiag.json").write_text('{"trainer_config": {"use_weighting": true}}')
    (run,) = dpodiag.load(path)
    assert run.meta.trainer_config == {"f_divergence_type": "reverse_kl", "use_weighting": True}
    assert codes(findings(path), "error") == set()


def test_trainer_config_must_be_an_object(tmp_path):
    path = write_parquet(make_pairs(), tmp_path / "bad.parquet", beta=0.1, trainer_config=[1])
    with pytest.raises(InputError, match="expected trainer_config to be a JSON object"):
        dpodiag.load(path)


@pytest.mark.parametrize("config, expected", [
    ({}, []),
    ({"use_weighting": False, "f_divergence_type": "reverse_kl", "ld_alpha": None,
      "loss_weights": [1.0], "rpo_alpha": None}, []),
    ({"f_divergence_type": "FDivergenceType.REVERSE_KL"}, []),
    ({"f_divergence_type": "js_divergence"}, ["f_divergence_type=js_divergence"]),
    ({"ld_alpha": 0.5}, ["ld_alpha=0.5"]),
    ({"loss_weights": [0.8, 0.2]}, ["loss_weights=[0.8, 0.2]"]),
    ({"rpo_alpha": 1.0, "nll_loss_coef": 0}, ["rpo_alpha=1.0"]),
])
def test_loss_altering_settings(config, expected):
    assert loss_altering_settings(config) == expected
