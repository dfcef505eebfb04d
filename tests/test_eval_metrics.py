import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import f1_score, r2_score

from usjepa.eval.metrics import (
    bootstrap_ci,
    classification_metrics,
    macro_f1_weighted,
    regression_metrics,
)


def test_weighted_macro_f1_equals_sklearn_on_resamples():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 4, 200))
    p[p == 3] = 2  # class 3 is never predicted: sklearn's zero_division=0 path
    draws = rng.integers(0, 200, size=(5, 200))
    counts = np.stack([np.bincount(d, minlength=200) for d in draws]).astype(float)
    ours = macro_f1_weighted(y, p, counts, 4)
    ref = [f1_score(y[d], p[d], average="macro", zero_division=0) for d in draws]
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    # a class absent from a resample and never predicted is left out of the average, as sklearn does
    y2, p2 = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    assert macro_f1_weighted(y2, p2, np.ones((1, 4)), 3)[0] == pytest.approx(f1_score(y2, p2, average="macro"))


def test_classification_metrics_fields():
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 1, 1, 1, 2, 0])
    proba = np.eye(3)[p] * 0.8 + 0.2 / 3
    m = classification_metrics(y, p, proba, 3)
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert m["per_class_recall"] == pytest.approx([0.5, 1.0, 0.5])
    assert np.asarray(m["confusion"]).sum() == 6 and m["confusion"][0][1] == 1
    assert 0.5 < m["macro_auroc"] <= 1.0


def test_regression_metrics_match_scipy_and_sklearn():
    rng = np.random.default_rng(1)
    y = rng.normal(size=50)
    yhat = y + rng.normal(scale=0.3, size=50)
    m = regression_metrics(y, yhat)
    assert m["pearson_r"] == pytest.approx(pearsonr(y, yhat)[0])
    assert m["r2"] == pytest.approx(r2_score(y, yhat))
    assert m["mae"] == pytest.approx(np.abs(y - yhat).mean())


def test_bootstrap_ci_is_seeded_covers_the_estimate_and_shrinks_with_more_data():
    rng = np.random.default_rng(2)

    def task(n):
        y = rng.integers(0, 3, n)
        return y, np.where(rng.random(n) < 0.7, y, rng.integers(0, 3, n))

    y, p = task(300)
    a = bootstrap_ci(y, p, "macro_f1", 3, n_boot=400, seed=5)
    assert a == bootstrap_ci(y, p, "macro_f1", 3, n_boot=400, seed=5)
    assert a[0] < f1_score(y, p, average="macro") < a[1]
    y2, p2 = task(3000)
    b = bootstrap_ci(y2, p2, "macro_f1", 3, n_boot=400, seed=5)
    assert (b[1] - b[0]) < 0.6 * (a[1] - a[0])


def test_patient_bootstrap_is_wider_when_frames_of_a_patient_agree():
    # 20 patients x 10 identical frames: item resampling pretends there are 200 independent cases
    rng = np.random.default_rng(3)
    y_pat = rng.integers(0, 2, 20)
    p_pat = np.where(rng.random(20) < 0.7, y_pat, 1 - y_pat)
    y, p, groups = np.repeat(y_pat, 10), np.repeat(p_pat, 10), np.repeat(np.arange(20), 10)
    item = bootstrap_ci(y, p, "accuracy", 2, n_boot=500, seed=0)
    patient = bootstrap_ci(y, p, "accuracy", 2, n_boot=500, seed=0, groups=groups)
    assert (patient[1] - patient[0]) > 2 * (item[1] - item[0])


def test_bootstrap_averages_seeds_and_handles_regression():
    rng = np.random.default_rng(4)
    y = rng.normal(size=400)
    preds = np.stack([y + rng.normal(scale=s, size=400) for s in (0.2, 0.4)])
    lo, hi = bootstrap_ci(y, preds, "r2", n_boot=300, seed=0)
    mean_r2 = np.mean([r2_score(y, q) for q in preds])
    assert lo < mean_r2 < hi
