"""A scan on a Dask cluster gives the in-process scan's results."""

import numpy as np
import pandas as pd
import pytest

from emlmm import gwas
from emlmm.datasets import load_lab

distributed = pytest.importorskip("distributed")
dask_array = pytest.importorskip("dask.array")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as connected:
            yield connected


def test_scan_on_a_local_cluster_equals_the_in_process_scan(client):
    lab = load_lab()
    data, genotypes = lab.phenotype.to_frame(), lab.genotypes.iloc[:, :120]
    local = gwas("y ~ 1 + snp", data, genotypes, lab.kinship, chunk_size=25)
    seen = []
    remote = gwas("y ~ 1 + snp", data, genotypes, lab.kinship, chunk_size=25, client=client,
                  progress=lambda done, total: seen.append(done))
    # Workers run BLAS on one thread, so products may round differently in the last bits.
    pd.testing.assert_frame_equal(remote, local, rtol=1e-8, check_exact=False)
    assert seen == [25, 50, 75, 100, 120]
    lazy = dask_array.from_array(genotypes.to_numpy(), chunks=(300, 40))
    from_dask = gwas("y ~ 1 + snp", data, lazy, lab.kinship, chunk_size=25, client=client)
    np.testing.assert_allclose(from_dask.p_lrt, local.p_lrt, rtol=1e-8)
    assert list(from_dask.index[:2]) == ["snp1", "snp2"]


def test_the_command_line_scans_on_a_scheduler(client, tmp_path):
    import dense
    from plink_fixtures import write_plink

    from emlmm.__main__ import main

    rng = np.random.default_rng(8)
    n, m = 60, 25
    genotypes = rng.binomial(2, 0.3, size=(n, m)).astype(float)
    related = dense.random_genotype_kinship(rng, n, 120)
    y = np.linalg.cholesky(related + 1e-9 * np.eye(n)) @ rng.normal(size=n) + rng.normal(size=n)
    write_plink(tmp_path / "study", genotypes, phenotypes=y)
    np.savetxt(tmp_path / "K.txt", related)
    args = ["gwas", "--bfile", str(tmp_path / "study"), "--kinship", str(tmp_path / "K.txt"),
            "--chunk-size", "6", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "here.tsv")]) == 0
    address = client.scheduler.address
    assert main([*args, "--out", str(tmp_path / "there.tsv"), "--scheduler", address]) == 0
    here = pd.read_csv(tmp_path / "here.tsv", sep="\t", index_col="snp")
    there = pd.read_csv(tmp_path / "there.tsv", sep="\t", index_col="snp")
    pd.testing.assert_frame_equal(there, here, rtol=1e-5, check_exact=False)
    with pytest.raises(SystemExit, match="cannot connect to the Dask scheduler"):
        main([*args, "--out", str(tmp_path / "nowhere.tsv"), "--scheduler",
              "tcp://127.0.0.1:9"])


def test_workers_read_their_own_chunks(client, tmp_path, monkeypatch):
    """The client only names each task's SNPs: it never reads genotypes, whether they are
    a PLINK fileset (reopened on the workers), a dask array or an in-memory table."""
    import dense
    from plink_fixtures import write_plink

    from emlmm import GenomeScan, read_plink
    from emlmm.genotypes import Genotypes

    rng = np.random.default_rng(12)
    n, m = 50, 30
    genotypes = rng.binomial(2, 0.35, size=(n, m)).astype(float)
    related = dense.random_genotype_kinship(rng, n, 100)
    ids = [f"s{i + 1}" for i in range(n)]
    data = pd.DataFrame({"y": rng.normal(size=n), "z": rng.normal(size=n)}, index=ids)
    write_plink(tmp_path / "study", genotypes, sample_ids=ids)
    kinship = pd.DataFrame(related, index=ids, columns=ids)
    frame = pd.DataFrame(genotypes, index=ids, columns=[f"rs{j + 1}" for j in range(m)])
    local = GenomeScan("~ 1 + snp", data, frame, kinship, chunk_size=8,
                       phenotypes=["y", "z"]).run()

    def no_reading_here(self, start, stop):
        raise AssertionError("the client read genotypes")

    with read_plink(tmp_path / "study") as plink:
        scans = {
            "plink": GenomeScan("~ 1 + snp", data, plink, kinship, chunk_size=8,
                                phenotypes=["y", "z"]),
            "dask": GenomeScan("~ 1 + snp", data,
                               dask_array.from_array(genotypes, chunks=(25, 10)), kinship,
                               chunk_size=8, phenotypes=["y", "z"]),
            "frame": GenomeScan("~ 1 + snp", data, frame, kinship, chunk_size=8,
                                phenotypes=["y", "z"]),
        }
        monkeypatch.setattr(Genotypes, "read", no_reading_here)
        for kind, scan in scans.items():
            remote = scan.run(client=client)
            np.testing.assert_allclose(remote.p_lrt, local.p_lrt, rtol=1e-8, err_msg=kind)
            assert remote.phenotype.tolist() == local.phenotype.tolist()
