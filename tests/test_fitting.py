"""A scan's null models are built without statsmodels' model layer (emlmm._fitting):
the same rows, arrays, kinship, decomposition, fits, log table and errors as
EMLMM.from_formula, and no import of statsmodels' model and formula layers."""

import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from dense import random_genotype_kinship

from emlmm import EMLMM, GenomeScan, LowRankKinship
from emlmm._fitting import NullModel


def _study(seed=3, n=120):
    """Families with a heritable trait, a covariate and a categorical one, some missing
    values in each, labels that are not positions; the kinship labelled, in another
    order, with individuals the data do not have."""
    rng = np.random.default_rng(seed)
    kinship = random_genotype_kinship(rng, n + 10, 300)
    labels = [f"id{j:03d}" for j in range(n + 10)]
    a = np.linalg.cholesky(kinship + 1e-9 * np.eye(n + 10)) @ rng.normal(size=n + 10)
    data = pd.DataFrame(
        {
            "y": 2.0 + 3.0 * a[:n] + rng.normal(size=n),
            "x": rng.normal(size=n),
            "site": rng.choice(["a", "b", "c"], size=n),
        },
        index=labels[:n],
    )
    data.loc[data.index[[3, 17, 40]], "y"] = np.nan
    data.loc[data.index[[5, 17, 77]], "x"] = np.nan
    order = rng.permutation(n + 10)
    frame = pd.DataFrame(kinship, index=labels, columns=labels).iloc[order, order]
    return data, frame


def _centered(frame, labels):
    """The kinship of ``labels``, centered among them (an intercept then absorbs its
    null space)."""
    values = frame.loc[labels, labels].to_numpy()
    n = len(values)
    centering = np.eye(n) - np.ones((n, n)) / n
    return pd.DataFrame(centering @ values @ centering, index=labels, columns=labels)


def _factor(frame, k=40, seed=8):
    rng = np.random.default_rng(seed)
    snps = rng.binomial(2, 0.3, size=(len(frame), k)).astype(float)
    return LowRankKinship.from_snps(pd.DataFrame(snps, index=frame.index))


@pytest.mark.parametrize(
    "formula, kinship",
    [
        ("y ~ 1 + x + C(site)", "labelled"),
        ("I(2 * y) ~ 1 + x", "centered"),  # a singular kinship: reduced data
        ("y ~ 1 + x", "low rank"),
        ("y ~ 1", "array"),
    ],
)
def test_the_scan_null_model_is_the_model_built_from_its_formula(formula, kinship):
    data, frame = _study()
    if kinship == "centered":  # on the rows analysed
        data = data.dropna()
        frame = _centered(frame, data.index)
    if kinship == "low rank":
        frame = _factor(frame)
    if kinship == "array":
        data = data.reset_index(drop=True)
        frame = frame.loc[sorted(frame.index), sorted(frame.index)].to_numpy()[:120, :120]
    model = EMLMM.from_formula(formula, data, kinship=frame)
    light = NullModel.from_formula(formula, data, frame, eval_env={})
    assert list(light.row_labels) == list(model.data.row_labels)
    used = ["y"] if formula == "y ~ 1" else ["y", "x"]
    assert len(light.row_labels) == data[used].notna().all(axis=1).sum() < 120
    assert light.exog_names == list(model.exog_names)
    for mine, theirs in ((light.endog, model.endog), (light.exog, model.exog)):
        assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs)
    if kinship == "low rank":
        assert light.kinship is None and np.array_equal(light.kinship_factor, model.kinship_factor)
        assert light.spectrum.implicit
    else:
        assert light.kinship_factor is None and np.array_equal(light.kinship, model.kinship)
    assert np.array_equal(light.spectrum.eigenvalues, model.spectrum.eigenvalues)
    assert light.fit_data.kept == model.fit_for_scan().data.kept
    assert light.fit_data.reduced == (kinship == "centered")
    for mine, theirs in (
        (light.fit_data.rotated.endog, model.fit_for_scan().data.rotated.endog),
        (light.fit_data.rotated.exog, model.fit_for_scan().data.rotated.exog),
    ):
        assert np.array_equal(mine, theirs)
    ours, reference = light.fit_for_scan(10_000, 1e-12), model.fit_for_scan()
    for fit in ("ml", "reml"):
        for field in ("beta", "sigma2_a", "sigma2_e"):
            assert np.array_equal(
                getattr(getattr(ours, fit), field), getattr(getattr(reference, fit), field)
            )


@pytest.mark.parametrize("kinship", ["labelled", "low rank"])
def test_the_logged_null_estimates_are_the_models_results(kinship):
    data, frame = _study(seed=4)
    rng = np.random.default_rng(2)
    effect = np.linalg.cholesky(frame.loc[data.index, data.index] + 1e-9 * np.eye(len(data)))
    if kinship == "low rank":
        frame = _factor(frame)
        effect = frame.rows(data.index).factor
    data["y"] = 1.0 + 2.0 * effect @ rng.normal(size=effect.shape[1]) + rng.normal(size=len(data))
    data.loc[data.index[[3, 40]], "y"] = np.nan
    genotypes = pd.DataFrame(
        np.random.default_rng(1).binomial(2, 0.4, size=(len(data), 3)).astype(float),
        index=data.index,
    )
    scan = GenomeScan("y ~ 1 + x + C(site) + snp", data, genotypes, frame)
    table = scan.null_estimates["all"]
    model = EMLMM.from_formula("y ~ 1 + x + C(site)", data, kinship=frame)
    for name, result in (("REML", model.fit(reml=True)), ("ML", model.fit())):
        expected = {
            "sigma2_a": result.sigma2_a,
            "sigma2_e": result.sigma2_e,
            "lambda": result.sigma2_a / result.sigma2_e,
            "pve": result.h2,
            "se_pve": result.bse_h2_observed,
            "llf": result.llf,
        }
        for term in result.params.index:
            expected[f"beta[{term}]"] = result.params[term]
            expected[f"se[{term}]"] = result.bse[term]
        assert list(table.columns) == list(expected)
        np.testing.assert_allclose(table.loc[name].to_numpy(float), list(expected.values()),
                                   rtol=1e-13)  # fmt: skip
        assert 0.05 < expected["pve"] < 1.0 and np.isfinite(expected["se_pve"])
    # The model itself is built when asked for, on the same rows.
    assert isinstance(scan.null_model, EMLMM)
    assert scan.null_model.nobs == len(data) - 5
    assert scan.null_model.fit().llf == table.loc["ML", "llf"]


@pytest.mark.parametrize(
    "change, error",
    [
        (lambda d, k: (d.assign(y=np.where(d.x > 0, "high", "low")), k), ValueError),
        (lambda d, k: (d.assign(y=np.nan), k), ValueError),
        (lambda d, k: (d.assign(y=1.0), k), ValueError),
        (lambda d, k: (d.reset_index(drop=True), k.to_numpy()), ValueError),
        (lambda d, k: (d, k.iloc[:, ::-1].set_axis(k.index, axis=1)), ValueError),
        (lambda d, k: (d, pd.DataFrame(np.eye(len(k)), k.index, k.index)), ValueError),
        (lambda d, k: (d, k * 0.0), ValueError),
        (lambda d, k: (d.assign(x=2.0 * d.x, z=d.x), k), ValueError),
    ],
    ids=["text y", "no y", "constant y", "wrong size", "not symmetric", "identity",
         "zero kinship", "collinear"],
)
def test_bad_inputs_fail_alike(change, error):
    data, frame = _study(seed=6)
    data, frame = change(data, frame)
    formula = "y ~ 1 + x + z" if "z" in data else "y ~ 1 + x"
    with pytest.raises(error) as theirs:
        EMLMM.from_formula(formula, data, kinship=frame)
    with pytest.raises(error) as ours:
        NullModel.from_formula(formula, data, frame, eval_env={})
    assert str(ours.value) == str(theirs.value)


def test_a_scan_imports_neither_the_model_layer_nor_scipy_stats_nor_formulaic():
    code = """
import sys, warnings
import numpy as np, pandas as pd
from emlmm import gwas, LowRankKinship
rng = np.random.default_rng(0)
snps = rng.binomial(2, 0.3, size=(60, 40)).astype(float)
kinship = LowRankKinship.from_snps(snps[:, :20]).to_dense()
data = pd.DataFrame({"y": rng.normal(size=60), "x": rng.normal(size=60)})
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    table = gwas("y ~ 1 + x + snp", data, snps[:, 20:], kinship)
assert table.p_lrt.notna().all()
layers = ("statsmodels.base.model", "scipy.stats", "statsmodels.formula", "formulaic")
print(sorted(m for m in layers if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)  # fmt: skip
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_an_unconverged_null_fit_warns_from_either_route():
    data, frame = _study(seed=9)
    model = EMLMM.from_formula("y ~ 1 + x", data, kinship=frame)
    light = NullModel.from_formula("y ~ 1 + x", data, frame, eval_env={})
    for fit in (lambda: model.fit_for_scan(maxiter=1), lambda: light.fit_for_scan(1, 1e-12)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit()
        assert len(caught) == 2  # ML and REML
        messages = [str(w.message) for w in caught]
        assert all(m.startswith("EM did not converge in 1 iterations") for m in messages)


@pytest.mark.parametrize("kinship", ["labelled", "low rank"])
def test_the_model_asked_for_reuses_the_scans_decomposition(kinship, monkeypatch):
    from emlmm._spectral import KinshipSpectrum

    data, frame = _study(seed=5)
    if kinship == "low rank":
        frame = _factor(frame)
    genotypes = pd.DataFrame(
        np.random.default_rng(2).binomial(2, 0.4, size=(len(data), 3)).astype(float),
        index=data.index,
    )
    scan = GenomeScan("y ~ 1 + x + snp", data, genotypes, frame)
    calls = []
    for name in ("_decompose", "_from_factor"):
        original = getattr(KinshipSpectrum, name).__func__
        monkeypatch.setattr(
            KinshipSpectrum, name,
            classmethod(lambda cls, m, f=original, n=name: calls.append(n) or f(cls, m)),
        )  # fmt: skip
    model = scan.null_model
    assert calls == []  # nothing decomposed again
    assert model is scan.null_model
    again = EMLMM.from_formula("y ~ 1 + x", data, kinship=frame)  # outside: decomposed
    assert len(calls) == 1
    np.testing.assert_array_equal(model.spectrum.eigenvalues, again.spectrum.eigenvalues)
    assert model.fit().llf == again.fit().llf


def _nullable(data):
    """``data`` with pandas' nullable columns, missing values as pd.NA, and its NumPy
    twin (NaN and None), which patsy has always read."""
    rng = np.random.default_rng(12)
    n = len(data)
    count = rng.integers(0, 4, size=n)
    level = rng.integers(1, 4, size=n)
    flag = rng.random(n) < 0.5
    gaps = rng.random(n) < 0.05
    nullable = data.assign(
        y=pd.array(data.y, dtype="Float64"),
        count=pd.array(np.where(gaps, None, count), dtype="Int64"),
        flag=pd.array(np.where(rng.random(n) < 0.05, None, flag), dtype="boolean"),
        level=pd.array(level, dtype="Int64"),
    )
    numpy = data.assign(
        count=np.where(gaps, np.nan, count),
        flag=np.where(nullable.flag.isna(), None, flag).astype(object),
        level=level,
    )
    return nullable, numpy


def test_pandas_nullable_columns_read_as_their_numpy_twins():
    data, frame = _study(seed=10)
    nullable, numpy = _nullable(data)
    formula = "y ~ 1 + x + count + flag + C(level)"
    twin = EMLMM.from_formula(formula, numpy, kinship=frame)
    model = EMLMM.from_formula(formula, nullable, kinship=frame)  # patsy alone fails here
    light = NullModel.from_formula(formula, nullable, frame, eval_env={})
    assert len(twin.endog) < len(data) - 5  # the NA rows are dropped as NaN/None ones
    for built, labels in ((model, model.data.row_labels), (light, light.row_labels)):
        assert list(labels) == list(twin.data.row_labels)
        assert list(built.exog_names) == list(twin.exog_names)
        assert np.array_equal(built.endog, twin.endog) and np.array_equal(built.exog, twin.exog)
    genotypes = pd.DataFrame(
        np.random.default_rng(3).binomial(2, 0.4, size=(len(data), 4)).astype(float),
        index=data.index,
    )
    scans = [GenomeScan(f"{formula} + snp", d, genotypes, frame).run() for d in (nullable, numpy)]
    pd.testing.assert_frame_equal(scans[0], scans[1])
