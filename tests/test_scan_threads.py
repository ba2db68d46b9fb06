"""A scan on two threads (``emlmm.gwas._scanned``: a helper thread rotates the next
chunk while this one fits the last) gives the one-thread tables, raises where one
thread would, and leaves neither a thread running nor BLAS limited behind it."""

import importlib
import os
import subprocess
import sys
import threading

import dense
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from emlmm import GenomeScan, LowRankKinship
from emlmm._threads import OPENBLAS_THREAD_TIMEOUT, blas_threads

gwas_module = importlib.import_module("emlmm.gwas")


@pytest.fixture(scope="module")
def study():
    rng = np.random.default_rng(5)
    n, m = 120, 70
    genotypes = rng.binomial(2, rng.uniform(0.05, 0.5, m), (n, m)).astype(float)
    genotypes[rng.random((n, m)) < 0.03] = np.nan
    genotypes[:, 5] = 1.0  # monomorphic
    kinship_snps = rng.binomial(2, 0.3, (n, 40)).astype(float)
    factor = LowRankKinship.from_snps(kinship_snps)
    related = dense.random_genotype_kinship(rng, n, 200)
    effect = np.nan_to_num(genotypes[:, 9], nan=0.5)
    y = effect + np.linalg.cholesky(related + 1e-9 * np.eye(n)) @ rng.normal(size=n)
    ids = [f"s{i}" for i in range(n)]
    data = pd.DataFrame(
        {
            "y": y + rng.normal(size=n),
            "y2": np.where(rng.random(n) < 0.1, np.nan, 0.5 * y + rng.normal(size=n)),
            "sex": rng.integers(0, 2, n),
        },
        index=ids,
    )
    frame = pd.DataFrame(genotypes, index=ids, columns=[f"rs{j}" for j in range(m)])
    related = pd.DataFrame(related, index=ids, columns=ids)
    return data, frame, related, factor


def _helpers_alive():
    return [t for t in threading.enumerate() if t.name.startswith("emlmm-rotation")]


def _scan(study, kind, **options):
    data, frame, related, factor = study
    options = {"min_maf": 0, "max_missing": 1, **options}  # every SNP has its row
    if kind == "low rank":
        return GenomeScan("y ~ 1 + sex + snp", data, frame, factor, chunk_size=16, **options)
    if kind == "phenotypes":
        return GenomeScan("~ 1 + sex + snp", data, frame, related, chunk_size=16,
                          phenotypes=["y", "y2"], **options)
    return GenomeScan("y ~ 1 + sex + snp", data, frame, related, chunk_size=16, **options)


@pytest.mark.parametrize("method", ["exact", "fixed"])
@pytest.mark.parametrize("kind", ["dense", "low rank", "phenotypes"])
def test_two_threads_give_the_one_thread_table(study, monkeypatch, kind, method):
    original = gwas_module.rotate_block
    threads_used = []

    def recording_rotate(block, eigenvectors):
        threads_used.append(threading.current_thread().name)
        return original(block, eigenvectors)

    monkeypatch.setattr(gwas_module, "rotate_block", recording_rotate)
    tables = {}
    for threads in (1, 2):
        monkeypatch.setattr(gwas_module, "_scan_threads", lambda threads=threads: threads)
        threads_used.clear()
        tables[threads] = _scan(study, kind, method=method).run()
        helper = [name for name in threads_used if name.startswith("emlmm-rotation")]
        assert bool(helper) == (threads == 2), threads_used
    pd.testing.assert_frame_equal(tables[2], tables[1], rtol=1e-10, check_exact=False)
    assert tables[1].note.eq("monomorphic").sum() >= 1
    assert not _helpers_alive()


def test_a_failed_piece_is_raised_in_the_scanning_thread(study, monkeypatch):
    monkeypatch.setattr(gwas_module, "_scan_threads", lambda: 2)
    original = gwas_module.rotate_block
    calls = []

    def failing_rotate(block, eigenvectors):
        calls.append(threading.current_thread().name)
        if len(calls) == 11:
            raise FloatingPointError("piece 11 failed")
        return original(block, eigenvectors)

    monkeypatch.setattr(gwas_module, "rotate_block", failing_rotate)
    before = blas_threads()
    with pytest.raises(FloatingPointError, match="piece 11 failed"):
        _scan(study, "dense").run()
    assert blas_threads() == before
    assert not _helpers_alive()


def test_a_scan_stopped_early_stops_its_helper_and_restores_blas(study, monkeypatch):
    monkeypatch.setattr(gwas_module, "_scan_threads", lambda: 2)
    before = blas_threads()
    tables = _scan(study, "dense").tables()
    first = next(tables)
    assert len(first) == 16
    tables.close()
    assert blas_threads() == before
    assert not _helpers_alive()


@pytest.mark.parametrize("threads", [1, 2])
def test_the_chunks_before_one_that_cannot_be_read_are_given(study, monkeypatch, threads):
    monkeypatch.setattr(gwas_module, "_scan_threads", lambda: threads)
    data, frame, related, _ = study
    bad = frame.copy()
    bad.iloc[3, 40] = 3.0  # the third chunk of 16
    scan = GenomeScan("y ~ 1 + sex + snp", data, bad, related, chunk_size=16, min_maf=0,
                      max_missing=1)
    given = []
    with pytest.raises(ValueError, match="rs40"):
        for table in scan.tables():
            given.append(table)
    assert [len(table) for table in given] == [16, 16]
    assert not _helpers_alive()


@pytest.mark.parametrize("count", [0, 3, 17, 600])
def test_a_rotation_in_pieces_is_the_whole_product(count, monkeypatch):
    rng = np.random.default_rng(count)
    products = [(rng.normal(size=(30, count)), rng.normal(size=(30, 7))),
                (rng.normal(size=(20, 5)), rng.normal(size=(20, 4)))]  # two groups
    original, taken = gwas_module.rotate_block, []

    def recording_rotate(block, eigenvectors):
        taken.append(block.shape[0])  # the individuals of a piece
        return original(block, eigenvectors)

    monkeypatch.setattr(gwas_module, "rotate_block", recording_rotate)
    for pieces in (1, 2, 8):
        taken.clear()
        rotation = gwas_module._Rotation(products, "kept", pieces)
        assert rotation.context == "kept"
        for (imputed, directions), product in zip(products, rotation.results(), strict=True):
            np.testing.assert_allclose(product, imputed.T @ directions, rtol=1e-13, atol=1e-13)
        # Asked again, the same products (the partial sums are added once).
        for again, product in zip(rotation.results(), rotation.results(), strict=True):
            np.testing.assert_array_equal(again, product)
        np.testing.assert_allclose(rotation.results()[0], products[0][0].T @ products[0][1],
                                   rtol=1e-13, atol=1e-13)
        # Half of the individuals left each time, at least 1 / pieces of them.
        first = {1: [30], 2: [15, 15], 8: [15, 8, 4, 3]}[pieces] if count else []
        assert taken == first + {1: [20], 2: [10, 10], 8: [10, 5, 3, 2]}[pieces], pieces


def test_the_lrt_p_value_is_the_chi2_tail():
    statistic = np.concatenate([np.linspace(0.0, 1500.0, 30001), np.logspace(-12, 3.2, 500),
                                [np.nan]])
    tail = gwas_module._chi2_1_tail(statistic)
    expected = stats.chi2.sf(statistic, 1)
    normal = expected > 1e-300
    np.testing.assert_allclose(tail[normal], expected[normal], rtol=1e-12)
    np.testing.assert_allclose(tail[~normal & ~np.isnan(expected)],
                               expected[~normal & ~np.isnan(expected)], rtol=0, atol=1e-305)
    assert np.isnan(tail[-1])


def test_a_kinship_below_eigh_small_is_decomposed_on_one_blas_thread(monkeypatch):
    """Below EIGH_SMALL rows one thread is as fast as two on an idle machine and
    faster on a busy one; above, BLAS keeps its threads."""
    import scipy.linalg
    from threadpoolctl import threadpool_limits

    from emlmm import _spectral

    seen = []
    original = scipy.linalg.eigh

    def recording_eigh(matrix, *args, **kwargs):
        seen.append((len(matrix), blas_threads()))
        return original(matrix, *args, **kwargs)

    monkeypatch.setattr(scipy.linalg, "eigh", recording_eigh)
    rng = np.random.default_rng(0)
    with threadpool_limits(limits=2, user_api="blas"):
        available = blas_threads()
        for n in (600, _spectral.EIGH_SMALL):
            factor = rng.normal(size=(n, 20))
            _spectral.KinshipSpectrum._decompose(factor @ factor.T / 20)
    assert seen == [(600, 1), (_spectral.EIGH_SMALL, available)]


def _timeout_seen(code: str, **env: str) -> str:
    """OPENBLAS_THREAD_TIMEOUT as a fresh Python process running ``code`` sees it."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("OPENBLAS_THREAD_TIMEOUT", "GOTO_THREAD_TIMEOUT")
    }
    environment.update(env)
    shown = "import os; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT', 'unset'))"
    done = subprocess.run(
        [sys.executable, "-c", f"{code}; {shown}"],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_importing_emlmm_first_lets_idle_openblas_threads_sleep():
    assert _timeout_seen("import emlmm") == OPENBLAS_THREAD_TIMEOUT == "16"
    # the command line imports the package first too
    assert _timeout_seen("import emlmm.__main__") == "16"
    # a user's setting wins, even 0 (OpenBLAS's default) and the old name
    assert _timeout_seen("import emlmm", OPENBLAS_THREAD_TIMEOUT="0") == "0"
    assert _timeout_seen("import emlmm", GOTO_THREAD_TIMEOUT="20") == "unset"
    # numpy loaded first has read its setting already: nothing is changed then
    assert _timeout_seen("import numpy, emlmm") == "unset"


def _most_blas_threads() -> int:
    """The most threads any BLAS library loaded now may run (found afresh, not from
    emlmm's cached controller, so a library loaded later is seen too)."""
    from threadpoolctl import threadpool_info

    return max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")


@pytest.fixture(scope="module")
def plink_prefix(tmp_path_factory):
    from plink_fixtures import write_plink

    rng = np.random.default_rng(23)
    n, m = 80, 30
    genotypes = rng.binomial(2, rng.uniform(0.1, 0.5, m), (n, m)).astype(float)
    y = genotypes[:, 4] + rng.normal(size=n)
    prefix = tmp_path_factory.mktemp("threads") / "study"
    write_plink(prefix, genotypes, phenotypes=y)
    return prefix


@pytest.mark.parametrize("command", ["gwas", "kinship"])
def test_the_threads_option_limits_blas_the_bed_reader_and_the_scan(
    plink_prefix, tmp_path, monkeypatch, command
):
    """``--threads 1``: every BLAS library, bed-reader (PST_NUM_THREADS) and the scan
    run one thread while the command works, and all are as before afterwards; the
    table is the default run's."""
    from threadpoolctl import threadpool_limits

    from emlmm.__main__ import main
    from emlmm._threads import BED_READER_THREADS
    from emlmm.io import PlinkGenotypes

    variable = BED_READER_THREADS[0]

    seen: list[tuple[str, object]] = []
    read, scan_threads = PlinkGenotypes.read, gwas_module._scan_threads

    def recording_read(self, *args, **kwargs):
        seen.append(("read", (_most_blas_threads(), os.environ.get(variable))))
        return read(self, *args, **kwargs)

    def recording_scan_threads():
        seen.append(("scan", scan_threads()))
        return seen[-1][1]

    monkeypatch.setattr(PlinkGenotypes, "read", recording_read)
    monkeypatch.setattr(gwas_module, "_scan_threads", recording_scan_threads)
    for name in BED_READER_THREADS:
        monkeypatch.delenv(name, raising=False)
    tables = []
    with threadpool_limits(limits=2, user_api="blas"):
        before = _most_blas_threads()
        for options in (["--threads", "1"], []):
            out = tmp_path / f"out{len(tables)}.txt"
            extra = ["--quiet"] if command == "gwas" else []
            assert main([command, "--bfile", str(plink_prefix), "--out", str(out),
                         *extra, *options]) == 0  # fmt: skip
            tables.append(out.read_bytes())
            if options:
                limited, seen[:] = list(seen), []
        after = _most_blas_threads()
    assert limited and {value for _, value in limited} <= {(1, "1"), 1}
    if command == "gwas":
        assert ("scan", 1) in limited
        if before == 2:  # the default run shares its chunks between two threads
            assert ("scan", 2) in seen
    assert all(value[1] is None for kind, value in seen if kind == "read")
    assert variable not in os.environ and after == before
    assert tables[0] == tables[1]


def test_the_threads_option_wants_a_positive_whole_number(plink_prefix, tmp_path, capsys):
    from emlmm.__main__ import main
    from emlmm._threads import at_most

    for value in ("0", "-2", "two"):
        with pytest.raises(SystemExit) as stopped:
            main(["gwas", "--bfile", str(plink_prefix), "--out", str(tmp_path / "o"),
                  "--threads", value])  # fmt: skip
        assert stopped.value.code == 2
        assert "argument --threads:" in capsys.readouterr().err
    for value in (0, 1.5, True):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            with at_most(value):  # type: ignore[arg-type]
                pass


def test_at_most_never_raises_a_count(monkeypatch):
    """``at_most(N)`` caps: BLAS already on one thread stays there, and bed-reader's
    count from its own variables is kept when smaller."""
    from threadpoolctl import threadpool_limits

    from emlmm._threads import BED_READER_THREADS, at_most

    for name in BED_READER_THREADS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NUM_THREADS", "1")
    with threadpool_limits(limits=1, user_api="blas"):
        with at_most(4):
            assert _most_blas_threads() == 1
            assert os.environ["PST_NUM_THREADS"] == "1"
    monkeypatch.delenv("NUM_THREADS")
    with at_most(10_000):
        assert int(os.environ["PST_NUM_THREADS"]) == os.cpu_count()
    assert "PST_NUM_THREADS" not in os.environ
