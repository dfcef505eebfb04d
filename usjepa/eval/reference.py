"""The reference a linear probe is checked against, and the hard fixed-feature tasks it is checked on.

`tuned_logistic_regression` is scikit-learn's LogisticRegression with C chosen by validation macro-F1 and scored
on test: the number `linear_probe` should match (tests/test_eval_linear.py, benchmarks/bench_probe.py).
`hard_task` draws features the way raw encoder features look: correlated anisotropic noise, imbalanced classes,
columns on different scales with large offsets, or more dimensions than training items.
"""

from __future__ import annotations

import numpy as np

DECADES = tuple(10.0 ** k for k in range(-4, 5))  # the C grid a user would tune scikit-learn over

# the task families of the tests and the benchmark: keyword arguments of hard_task
HARD_TASKS = {
    "imbalanced 6-class": dict(aniso=False, unscaled=False, sep=0.12),
    "anisotropic correlated noise": dict(imbalance=False, unscaled=False, sep=0.1),
    "unscaled columns with offsets": dict(aniso=False, imbalance=False, sep=0.12),
    "all three": dict(sep=0.1),
    "wide: d=768, 300 training items": dict(dim=768, n=(300, 200, 2000), sep=0.15),
}


def hard_task(seed: int, n=(1500, 500, 3000), classes: int = 6, dim: int = 96, sep: float = 0.1,
              imbalance: bool = True, aniso: bool = True, unscaled: bool = True) -> tuple:
    """((X, y) train, val, test), float64. Class means (spread `sep`) in correlated noise whose covariance has
    eigenvalues 0.01..9 (aniso), geometric class priors 40% .. 4% (imbalance, 6 classes), columns scaled over four
    decades with offsets of ~1e3 (unscaled)."""
    rng = np.random.default_rng(seed)
    prior = np.geomspace(1, 0.1, classes) if imbalance else np.ones(classes)
    means = rng.normal(0, 1, (classes, dim)) * sep
    mix = np.linalg.qr(rng.normal(size=(dim, dim)))[0] * np.geomspace(3, 0.1, dim) if aniso else np.eye(dim)
    scale = np.geomspace(1e-2, 1e2, dim)[rng.permutation(dim)] if unscaled else np.ones(dim)
    offset = rng.normal(0, 1e3, dim) if unscaled else np.zeros(dim)

    def draw(k):
        y = rng.choice(classes, k, p=prior / prior.sum())
        return (means[y] + rng.normal(size=(k, dim)) @ mix.T) * scale + offset, y

    return tuple(draw(k) for k in n)


def tuned_logistic_regression(train, val, test, cs=DECADES, converged: bool = True) -> dict:
    """Test macro-F1 of LogisticRegression(C) on standardised features, C picked by validation macro-F1 (the first
    best in grid order): {"macro_f1", "C", "val_macro_f1"}.

    converged=True: float64 features and the newton-cg solver at tol=1e-10, so every fit is at its regularised
    optimum. (The default lbfgs solver stops on a function-change test, ftol = 64 eps, that a tiny loss meets early:
    on separable data at large C even tol=1e-8 leaves it a few percent from the optimum.) converged=False: as the
    code is often written (float32 features, lbfgs at the default tol=1e-4), which on separable data (e.g. more
    dimensions than items) stops well short of the optimum: a different, early-stopped estimator.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    dt = np.float64 if converged else np.float32
    (xtr, ytr), (xva, yva), (xte, yte) = ((np.asarray(x, dtype=dt), np.asarray(y)) for x, y in (train, val, test))
    sc = StandardScaler().fit(xtr)
    xtr, xva, xte = sc.transform(xtr), sc.transform(xva), sc.transform(xte)
    opts = dict(solver="newton-cg", tol=1e-10, max_iter=1000) if converged else dict(max_iter=1000)
    best = None
    with threadpool_limits(1):  # BLAS threads fighting over a small shared CPU cost up to 40x here
        for c in cs:
            m = LogisticRegression(C=c, **opts).fit(xtr, ytr)
            v = f1_score(yva, m.predict(xva), average="macro")
            if best is None or v > best["val_macro_f1"]:
                best = {"val_macro_f1": float(v), "C": float(c),
                        "macro_f1": float(f1_score(yte, m.predict(xte), average="macro"))}
    return best
