import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import f1_score, r2_score
from sklearn.preprocessing import StandardScaler

from usjepa.eval import linear_probe, regression_probe

pytestmark = pytest.mark.usefixtures("one_thread")  # small probe workloads: one thread is fastest


def gaussian_task(seed: int, n=(800, 1500, 4000), classes=4, dim=64, sep=0.35):
    """Class means in a noisy, unevenly scaled space: regularisation matters, as with real features."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1, (classes, dim)) * sep
    scale = rng.uniform(0.5, 1.5, dim)

    def draw(k):
        y = rng.integers(0, classes, k)
        return (means[y] + rng.normal(0, 1, (k, dim)) * scale).astype(np.float32), y

    return tuple(draw(k) for k in n)


def sklearn_tuned_on_val(train, val, test, cs=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 1.0, 10.0)):
    """Test macro-F1 of LogisticRegression with C picked on the validation split."""
    sc = StandardScaler().fit(train[0])
    best = None
    for c in cs:
        m = LogisticRegression(C=c, max_iter=3000).fit(sc.transform(train[0]), train[1])
        v = f1_score(val[1], m.predict(sc.transform(val[0])), average="macro")
        if best is None or v > best[0]:
            best = (v, f1_score(test[1], m.predict(sc.transform(test[0])), average="macro"))
    return best[1]


@pytest.mark.parametrize("seed", [0, 3])
def test_matches_tuned_sklearn_logistic_regression_on_a_gaussian_task(seed):
    train, val, test = gaussian_task(seed)
    ours = linear_probe(train, val, test, seed=0)["macro_f1"]
    ref = sklearn_tuned_on_val(train, val, test)
    assert ours >= ref - 0.01, f"linear_probe macro-F1 {ours:.4f} vs sklearn {ref:.4f}"


def test_selection_never_looks_at_the_test_split():
    train, val, test = gaussian_task(1, n=(400, 400, 600))
    a = linear_probe(train, val, test, seed=0)
    rng = np.random.default_rng(0)
    shuffled = (test[0], rng.permutation(test[1]))
    b = linear_probe(train, val, shuffled, seed=0)
    assert a["selected"] == b["selected"]
    assert a["val"]["macro_f1"] == b["val"]["macro_f1"]
    assert [g["val_score"] for g in a["grid"]] == [g["val_score"] for g in b["grid"]]
    np.testing.assert_array_equal(a["test_pred"], b["test_pred"])  # same head, same predictions
    assert b["macro_f1"] < a["macro_f1"] - 0.3  # only the reported test score moved


def test_the_informative_feature_set_wins_on_validation():
    train, val, test = gaussian_task(2, n=(400, 400, 400))
    rng = np.random.default_rng(1)
    noise = lambda x: rng.normal(size=x.shape).astype(np.float32)  # noqa: E731
    sets = lambda xy: ({"noise": noise(xy[0]), "signal": xy[0]}, xy[1])  # noqa: E731
    r = linear_probe(sets(train), sets(val), sets(test))
    assert r["selected"]["features"] == "signal"
    assert {g["features"] for g in r["grid"]} == {"noise", "signal"}


def test_class_balanced_loss_lifts_the_minority_class():
    rng = np.random.default_rng(4)

    def draw(k):
        y = (rng.random(k) < 0.07).astype(int)  # 7% positives
        return (rng.normal(size=(k, 8)) + y[:, None] * 1.0).astype(np.float32), y

    train, val, test = draw(1500), draw(1500), draw(3000)
    plain = linear_probe(train, val, test, lrs=[1e-2], wds=[1e-3], select_metric="accuracy")
    balanced = linear_probe(train, val, test, lrs=[1e-2], wds=[1e-3], select_metric="accuracy", class_balanced=True)
    assert balanced["per_class_recall"][1] > plain["per_class_recall"][1] + 0.2
    assert balanced["balanced_acc"] > plain["balanced_acc"]


def test_early_stopping_keeps_the_best_validation_loss_weights():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 200)).astype(np.float32)  # far more dims than items: the probe overfits quickly
    y = (x[:, 0] > 0).astype(int)
    xv = rng.normal(size=(300, 200)).astype(np.float32)
    r = linear_probe((x, y), (xv, (xv[:, 0] > 0).astype(int)), None, lrs=[1e-1], wds=[0.0], epochs=300,
                     batch_size=0, patience=10)
    assert r["selected"]["epoch"] < 290
    g = r["grid"][0]
    last = linear_probe((x, y), (xv, (xv[:, 0] > 0).astype(int)), None, lrs=[1e-1], wds=[0.0], epochs=300,
                        batch_size=0, patience=0)["grid"][0]
    assert g["val_loss"] < last["val_loss"]


def test_usjepa_style_single_head_runs_minibatch_with_decoupled_decay():
    train, val, test = gaussian_task(6, n=(300, 100, 300), sep=0.8)
    r = linear_probe(train, val, test, lrs=[1e-3], wds=[1e-4], decay="decoupled", epochs=150, batch_size=32,
                     patience=15, standardize=False)
    assert len(r["grid"]) == 1 and r["macro_f1"] > 0.8
    assert r["head"].logits(torch.as_tensor(test[0])).shape == (300, 4)


def test_regression_probe_matches_ridge():
    rng = np.random.default_rng(7)
    w = rng.normal(size=16)

    def draw(k):
        x = rng.normal(size=(k, 16)).astype(np.float32)
        return x, (x @ w * 3 + 10 + rng.normal(scale=1.0, size=k)).astype(np.float32)

    train, val, test = draw(300), draw(200), draw(1000)
    r = regression_probe(train, val, test)
    ref = r2_score(test[1], Ridge(alpha=1.0).fit(*train).predict(test[0]))
    assert r["r2"] > ref - 0.02
    assert r["pearson_r"] > 0.95 and r["mae"] < 1.5


def test_bad_inputs_are_explained():
    x, y = np.zeros((4, 3), np.float32), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="must be a pair"):
        linear_probe((x,), (x, y))
    with pytest.raises(ValueError, match="feature sets differ"):
        linear_probe(({"a": x}, y), ({"b": x}, y))
