"""Bad input gets a clear error; numeric edge cases are handled on purpose; long scans
lose nothing."""

import dense
import numpy as np
import pandas as pd
import pytest
from plink_fixtures import write_plink
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from emlmm import EMLMM, LowRankKinship, gwas
from emlmm.__main__ import main
from emlmm.gwas import _Scanner


@pytest.fixture(scope="module")
def trio():
    rng = np.random.default_rng(31)
    n = 40
    kinship = dense.random_genotype_kinship(rng, n, 120)
    ids = [f"p{i}" for i in range(n)]
    data = pd.DataFrame({"x": rng.normal(size=n)}, index=ids)
    data["y"] = data.x + 1.5 * np.linalg.cholesky(kinship + 1e-9 * np.eye(n)) @ rng.normal(
        size=n) + rng.normal(size=n)
    genotypes = pd.DataFrame(rng.integers(0, 3, size=(n, 6)).astype(float), index=ids,
                             columns=[f"rs{j}" for j in range(6)])
    return data, genotypes, pd.DataFrame(kinship, index=ids, columns=ids)


# ------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("bad", [3.0, -9.0, np.inf])
def test_genotypes_outside_zero_to_two_are_named(trio, bad):
    data, genotypes, kinship = trio
    odd = genotypes.copy()
    odd.iloc[7, 2] = bad
    with pytest.raises(ValueError, match=r"between 0 and 2 .* SNP 'rs2' has .* in row 7"):
        gwas("y ~ 1 + snp", data, odd, kinship)
    with pytest.raises(ValueError, match=r"SNP 'snp3' has"):
        gwas("y ~ 1 + snp", data, odd.to_numpy(), kinship)


def test_non_numeric_genotypes_are_a_type_error(trio):
    data, genotypes, kinship = trio
    with pytest.raises(TypeError, match=r"genotypes must be numeric .* 'coded'"):
        gwas("y ~ 1 + snp", data, genotypes.assign(coded="AA"), kinship)
    with pytest.raises(TypeError, match="numeric matrix"):
        gwas("y ~ 1 + snp", data, np.full((40, 2), "AA"), kinship)


def test_wrong_types_for_formula_and_data(trio):
    data, genotypes, kinship = trio
    with pytest.raises(TypeError, match="formula must be a string"):
        EMLMM.from_formula(3, data, kinship=kinship)
    with pytest.raises(TypeError, match="data must be a pandas DataFrame, not list"):
        EMLMM.from_formula("y ~ x", [1, 2], kinship=kinship)
    with pytest.raises(TypeError, match="formula must be a string"):
        gwas(None, data, genotypes, kinship)
    as_dict = EMLMM.from_formula("y ~ x", data.to_dict("list"), kinship=kinship.to_numpy())
    assert as_dict.nobs == 40


def test_all_missing_phenotype(trio):
    data, _, kinship = trio
    with pytest.raises(ValueError, match="no observations left"):
        EMLMM.from_formula("y ~ x", data.assign(y=np.nan), kinship=kinship)


def test_a_model_without_fixed_effects_is_refused(trio):
    data, genotypes, kinship = trio
    message = r"no fixed effects .* such as an intercept: 'y ~ 1' \(in a scan, 'y ~ 1 \+ snp'\)"
    with pytest.raises(ValueError, match=message):
        EMLMM.from_formula("y ~ 0", data, kinship=kinship)
    with pytest.raises(ValueError, match=message):
        EMLMM(data.y.to_numpy(), np.empty((len(data), 0)), kinship.to_numpy())
    with pytest.raises(ValueError, match=message):
        gwas("y ~ 0 + snp", data, genotypes, kinship)


def test_repeated_row_labels_are_named(trio):
    data, genotypes, kinship = trio
    repeated = data.set_axis([*data.index[:-1], data.index[0]])
    message = r"row labels repeat \('p0'\)"
    with pytest.raises(ValueError, match=message + r".* kinship_ids="):
        EMLMM.from_formula("y ~ x", repeated, kinship=kinship)
    factor = LowRankKinship(pd.DataFrame(np.eye(len(data))[:, :5], index=data.index))
    with pytest.raises(ValueError, match=message + r".* kinship_ids="):
        EMLMM.from_formula("y ~ x", repeated, kinship=factor)
    for matrix in (kinship, kinship.to_numpy()):  # a scan matches rows by label either way
        with pytest.raises(ValueError, match=message + ": a scan matches each row"):
            gwas("y ~ 1 + snp", repeated, genotypes.to_numpy(), matrix)
    # An unlabelled kinship is matched by position: repeated labels are the user's own.
    fit = EMLMM.from_formula("y ~ x", repeated, kinship=kinship.to_numpy()).fit()
    assert fit.llf == pytest.approx(EMLMM.from_formula("y ~ x", data, kinship=kinship).fit().llf)


def test_a_formula_beyond_patsys_parser_is_a_value_error(trio):
    data, genotypes, kinship = trio
    wide = pd.DataFrame(np.random.default_rng(0).normal(size=(len(data), 600)), index=data.index)
    wide = wide.add_prefix("c").assign(y=data.y)
    formula = "y ~ 1 + " + " + ".join(f"c{j}" for j in range(600))
    with pytest.raises(ValueError, match="the formula has 601 terms, more than patsy's"):
        EMLMM.from_formula(formula, wide, kinship=kinship)
    with pytest.raises(ValueError, match="the formula has 602 terms"):
        gwas(formula + " + snp", wide, genotypes, kinship)


def test_fewer_observations_than_parameters():
    kinship = np.eye(3) + 0.5
    with pytest.raises(ValueError, match="3 observations are not enough for 2 fixed effects"):
        EMLMM(np.array([1.0, 2.0, 4.0]), np.column_stack([np.ones(3), [0.0, 1.0, 3.0]]), kinship)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"maxiter": "a"}, TypeError, "maxiter must be an integer"),
        ({"maxiter": 0}, ValueError, "maxiter must be at least 1"),
        ({"tol": "x"}, TypeError, "tol must be a number"),
        ({"tol": -1.0}, ValueError, "tol must be a positive number"),
        ({"reml": "yes"}, TypeError, "reml must be True or False"),
        ({"method": 3}, TypeError, "method must be one of"),
        ({"start_params": [np.nan, 0.0, 1.0, 1.0]}, ValueError, "params must be finite"),
    ],
)
def test_fit_arguments_of_the_wrong_type_or_value(trio, options, error, message):
    data, _, kinship = trio
    with pytest.raises(error, match=message):
        EMLMM.from_formula("y ~ x", data, kinship=kinship).fit(**options)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"chunk_size": 0}, ValueError, "chunk_size must be at least 1"),
        ({"chunk_size": "a"}, TypeError, "chunk_size must be an integer"),
        ({"method": 3}, TypeError, "method must be one of 'exact', 'fixed'"),
        ({"tol": 0.0}, ValueError, "tol must be a positive number"),
    ],
)
def test_gwas_arguments_of_the_wrong_type_or_value(trio, options, error, message):
    data, genotypes, kinship = trio
    with pytest.raises(error, match=message):
        gwas("y ~ 1 + snp", data, genotypes, kinship, **options)


def test_non_numeric_design_is_a_type_error(trio):
    data, _, kinship = trio
    with pytest.raises(TypeError, match=r"exog must be numeric; column.* 'group'"):
        EMLMM(data.y, data[["x"]].assign(group="a"), kinship)


# ------------------------------------------------------------ numeric edge cases


@pytest.mark.parametrize("scale", [1.0, 3.5])
def test_identity_kinship_is_not_identifiable(trio, scale):
    data, _, _ = trio
    with pytest.raises(ValueError, match=r"proportional to the identity .* not separately "
                                         r"identifiable"):
        EMLMM.from_formula("y ~ x", data, kinship=scale * np.eye(40))


def test_round_off_negative_eigenvalues_are_zero(trio):
    data, _, _ = trio
    rng = np.random.default_rng(0)
    low_rank = dense.random_genotype_kinship(rng, 40, 15)
    jitter = rng.normal(scale=1e-15, size=(40, 40))
    noisy = low_rank + (jitter + jitter.T) / 2
    assert np.linalg.eigvalsh(noisy).min() < 0
    result = EMLMM.from_formula("y ~ x", data, kinship=noisy).fit()
    assert result.model.spectrum.rank == 15
    assert result.converged
    oracle = dense.maximise(data.y.to_numpy(), np.column_stack([np.ones(40), data.x]), low_rank)
    assert result.llf == pytest.approx(oracle.llf, rel=1e-9)


@pytest.mark.parametrize("scale", [1e-6, 1e6])
def test_estimates_scale_exactly_on_extreme_scales(trio, scale):
    data, _, kinship = trio
    base = EMLMM.from_formula("y ~ x", data, kinship=kinship).fit()
    scaled = EMLMM.from_formula("y ~ x", data.assign(y=scale * data.y), kinship=kinship).fit()
    np.testing.assert_allclose(scaled.params, scale * base.params, rtol=1e-6)
    assert scaled.sigma2_a == pytest.approx(scale**2 * base.sigma2_a, rel=1e-5)
    assert scaled.sigma2_e == pytest.approx(scale**2 * base.sigma2_e, rel=1e-5)
    assert scaled.llf == pytest.approx(base.llf - 40 * np.log(scale), rel=1e-9)


def test_very_small_n_fits():
    kinship = np.array([[1.0, 0.5, 0.0, 0.0], [0.5, 1.0, 0.0, 0.0],
                        [0.0, 0.0, 1.0, 0.5], [0.0, 0.0, 0.5, 1.0]])
    y = np.array([1.0, 1.4, 3.0, 2.1])
    result = EMLMM(y, np.ones((4, 1)), kinship).fit()
    oracle = dense.maximise(y, np.ones((4, 1)), kinship, start=(0.5, 0.5))
    assert result.converged
    assert result.llf >= oracle.llf - 1e-9


# ------------------------------------------------------------------ long scans


def test_a_failing_snp_is_recorded_and_the_scan_goes_on(trio, monkeypatch):
    data, genotypes, kinship = trio
    original = _Scanner._statistics
    poisoned = genotypes.copy()
    poisoned["rs3"] = np.tile([0.0, 1.0, 2.0, 2.0], 10)  # the pattern we make fail

    def fragile(self, rotated):  # one rotated SNP per row
        if rotated.shape[0] == 1 and np.allclose(
            (rotated[0] @ self.rotation.T)[:4], [0.0, 1.0, 2.0, 2.0]
        ):
            raise np.linalg.LinAlgError("simulated breakdown")
        if rotated.shape[0] > 1:
            raise np.linalg.LinAlgError("chunk-level breakdown")
        return original(self, rotated)

    monkeypatch.setattr(_Scanner, "_statistics", fragile)
    table = gwas("y ~ 1 + x + snp", data, poisoned, kinship)
    assert table.loc["rs3", "note"] == "failed: LinAlgError: simulated breakdown"
    assert np.isnan(table.loc["rs3", "p_lrt"])
    others = table.drop(index="rs3")
    assert others.p_lrt.notna().all() and (others.note == "").all()


def test_unconverged_snps_warn(trio):
    data, genotypes, kinship = trio
    with pytest.warns(ConvergenceWarning, match="did not converge for"):
        table = gwas("y ~ 1 + x + snp", data, genotypes, kinship, maxiter=1)
    assert not table.converged.all()


@pytest.fixture
def plink_scan(tmp_path):
    rng = np.random.default_rng(9)
    n, m = 60, 23
    genotypes = rng.binomial(2, rng.uniform(0.2, 0.5, size=m), size=(n, m)).astype(float)
    related = dense.random_genotype_kinship(rng, n, 150)
    y = genotypes[:, 4] + np.linalg.cholesky(related + 1e-9 * np.eye(n)) @ rng.normal(size=n) \
        + rng.normal(size=n)
    write_plink(tmp_path / "scan", genotypes, phenotypes=y)
    np.savetxt(tmp_path / "K.txt", related)
    args = ["gwas", "--bfile", str(tmp_path / "scan"), "--kinship", str(tmp_path / "K.txt"),
            "--chunk-size", "5", "--quiet"]
    full = tmp_path / "full.tsv"
    assert main([*args, "--out", str(full)]) == 0
    return args, full.read_text(), tmp_path


def test_an_interrupted_scan_keeps_its_chunks_and_resumes_to_the_same_file(plink_scan,
                                                                           monkeypatch):
    args, full, folder = plink_scan
    out = folder / "interrupted.tsv"
    # Every chunk's scan, on one thread or sharing the rotations with a helper thread
    # (emlmm.gwas._scanned), ends in scan_rotation.
    original = _Scanner.scan_rotation
    calls = []

    def interrupt_third_chunk(self, rotation):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, rotation)

    monkeypatch.setattr(_Scanner, "scan_rotation", interrupt_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--out", str(out)])
    monkeypatch.undo()
    kept = out.read_text().splitlines()
    assert len(kept) == 1 + 10  # header and the two finished chunks
    assert main([*args, "--out", str(out), "--resume"]) == 0
    assert out.read_text() == full


def test_resume_cuts_a_partly_written_line(plink_scan):
    args, full, folder = plink_scan
    out = folder / "partial.tsv"
    lines = full.splitlines(keepends=True)
    out.write_text("".join(lines[:8]) + lines[8][:15])
    # The scan's identity record goes with its table.
    (folder / "partial.tsv.scan.json").write_text((folder / "full.tsv.scan.json").read_text())
    assert main([*args, "--out", str(out), "--resume"]) == 0
    assert out.read_text() == full


def test_resume_refuses_another_scans_file(plink_scan):
    args, full, folder = plink_scan
    out = folder / "other.tsv"
    lines = full.splitlines(keepends=True)
    out.write_text(lines[0] + lines[3])  # not the first SNPs in order
    with pytest.raises(SystemExit, match="cannot resume"):
        main([*args, "--out", str(out), "--resume"])
