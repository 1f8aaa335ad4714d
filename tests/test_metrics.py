"""Classification metrics: calibration against the majority label and against the annotators' votes."""

from __future__ import annotations

import numpy as np

from moodlens.metrics import classification_report, expected_calibration_error, vote_calibration_error


def _votes(n: int, seed: int = 0) -> np.ndarray:
    """Vote shares of 10 annotators over 8 classes, one row per face."""
    rng = np.random.default_rng(seed)
    counts = np.stack([rng.multinomial(10, p) for p in rng.dirichlet(np.full(8, 0.3), size=n)])
    return counts / 10.0


def test_a_model_that_predicts_the_vote_shares_is_calibrated_against_votes_not_the_majority():
    shares = _votes(2000)
    majority = shares.argmax(1)
    assert vote_calibration_error(shares, shares) < 1e-9
    # the same probabilities read against the majority label look under-confident
    assert expected_calibration_error(shares, majority) > 0.1


def test_an_overconfident_model_is_penalised_by_the_vote_error():
    shares = np.tile([0.6, 0.4, 0, 0, 0, 0, 0, 0], (100, 1))
    one_hot = np.tile(np.eye(8)[0], (100, 1))
    assert abs(vote_calibration_error(one_hot, shares) - 0.4) < 1e-9
    assert abs(expected_calibration_error(one_hot, shares.argmax(1))) < 1e-9


def test_the_report_adds_the_vote_error_only_when_votes_are_given():
    shares = _votes(50, seed=1)
    names = [str(i) for i in range(8)]
    assert "ece_votes" not in classification_report(shares, shares.argmax(1), names)
    report = classification_report(shares, shares.argmax(1), names, shares)
    assert report["ece_votes"] < 1e-9 and report["accuracy"] == 1.0
