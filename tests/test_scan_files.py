"""A scan's output file is never damaged or mixed: refused, locked, identified, resumed.

Each test reproduces a way the command line used to hurt a user's files.
"""

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dense
import numpy as np
import pytest
from plink_fixtures import write_plink

import emlmm
from emlmm import GenomeScan, ScanOutput
from emlmm.__main__ import main
from emlmm.gwas import ScanFileError


@pytest.fixture(scope="module")
def fileset(tmp_path_factory):
    rng = np.random.default_rng(21)
    n, m = 70, 30
    genotypes = rng.binomial(2, rng.uniform(0.2, 0.5, size=m), size=(n, m)).astype(float)
    related = dense.random_genotype_kinship(rng, n, 150)
    y = genotypes[:, 3] + np.linalg.cholesky(related + 1e-9 * np.eye(n)) @ rng.normal(size=n) \
        + rng.normal(size=n)
    folder = tmp_path_factory.mktemp("files")
    write_plink(folder / "study", genotypes, phenotypes=y,
                chromosomes=[1] * 15 + [2] * 15)
    np.savetxt(folder / "K.txt", related)
    other = related.copy()
    other[0, 1] = other[1, 0] = other[0, 1] + 0.01
    np.savetxt(folder / "K2.txt", other)
    np.savetxt(folder / "covar.txt", np.column_stack([np.ones(n), rng.normal(size=n)]))
    return folder


def scan_args(folder, out, *extra):
    return ["gwas", "--bfile", str(folder / "study"), "--kinship", str(folder / "K.txt"),
            "--chunk-size", "7", "--quiet", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def finished(fileset, tmp_path_factory):
    """An uninterrupted scan's table and identity record."""
    out = tmp_path_factory.mktemp("finished") / "scan.tsv"
    assert main(scan_args(fileset, out)) == 0
    return out.read_bytes(), Path(f"{out}.scan.json").read_bytes()


def partial_copy(finished, folder, name="partial.tsv", rows=9):
    table, identity = finished
    out = folder / name
    lines = table.splitlines(keepends=True)
    out.write_bytes(b"".join(lines[: 1 + rows]))
    Path(f"{out}.scan.json").write_bytes(identity)
    return out


# --- existing files --------------------------------------------------------------------

def test_an_existing_output_is_refused_without_overwrite(fileset, tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("my notes\n")
    with pytest.raises(SystemExit, match=r"notes\.txt exists; pass .*--overwrite"):
        main(scan_args(fileset, out))
    assert out.read_text() == "my notes\n"
    assert not Path(f"{out}.scan.json").exists()


def test_overwrite_replaces_the_output(fileset, finished, tmp_path):
    out = tmp_path / "old.tsv"
    out.write_text("an old table\n" * 1000)
    assert main(scan_args(fileset, out, "--overwrite")) == 0
    assert out.read_bytes() == finished[0]


def test_resume_on_a_file_that_is_not_a_scan_changes_nothing(fileset, tmp_path):
    out = tmp_path / "notes.txt"
    for text in ["one line without an end", "a line\nand a partial one"]:
        out.write_text(text)
        with pytest.raises(SystemExit, match=r"cannot resume .*no identity record"):
            main(scan_args(fileset, out, "--resume"))
        assert out.read_text() == text


@pytest.mark.parametrize("change", [
    ["--method", "fixed"],
    ["--kinship", "K2.txt"],
    ["--covar", "covar.txt"],
])
def test_resume_refuses_another_scan_and_changes_nothing(fileset, finished, tmp_path, change):
    out = partial_copy(finished, tmp_path)
    before = out.read_bytes() + b"partial lin"  # a partly written last line stays too
    out.write_bytes(before)
    if change[0] in ("--kinship", "--covar"):
        change = [change[0], str(fileset / change[1])]
    args = scan_args(fileset, out, "--resume")
    if change[0] == "--kinship":
        args[args.index("--kinship") + 1] = change[1]
    else:
        args += change
    with pytest.raises(SystemExit, match=r"cannot resume .*written by another scan"):
        main(args)
    assert out.read_bytes() == before


def test_resume_refuses_another_phenotype(fileset, finished, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for suffix in (".bed", ".bim"):
        (folder / f"study{suffix}").write_bytes((fileset / f"study{suffix}").read_bytes())
    fam = (fileset / "study.fam").read_text().splitlines()
    fields = fam[0].split()
    fields[5] = str(float(fields[5]) + 1.0)
    (folder / "study.fam").write_text("\n".join([" ".join(fields), *fam[1:]]) + "\n")
    (folder / "K.txt").write_bytes((fileset / "K.txt").read_bytes())
    out = partial_copy(finished, tmp_path)
    before = out.read_bytes()
    with pytest.raises(SystemExit, match=r"phenotype: '.{12}\.\.\.' there"):
        main(scan_args(folder, out, "--resume"))
    assert out.read_bytes() == before


def test_resume_refuses_an_edited_table(fileset, finished, tmp_path):
    out = partial_copy(finished, tmp_path)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text(lines[0] + lines[2] + lines[1])
    before = out.read_bytes()
    with pytest.raises(SystemExit, match="not this scan's first SNPs in order"):
        main(scan_args(fileset, out, "--resume"))
    assert out.read_bytes() == before


def test_resume_of_the_same_scan_finishes_it_byte_for_byte(fileset, finished, tmp_path):
    out = partial_copy(finished, tmp_path, rows=9)
    with open(out, "ab") as handle:
        handle.write(b"rs11\t1\t11000\t0.3")  # killed while writing a line
    assert main(scan_args(fileset, out, "--resume")) == 0
    assert out.read_bytes() == finished[0]
    assert Path(f"{out}.scan.json").read_bytes() == finished[1]


def test_resume_without_a_table_starts_afresh(fileset, finished, tmp_path):
    out = tmp_path / "new.tsv"
    assert main(scan_args(fileset, out, "--resume")) == 0
    assert out.read_bytes() == finished[0]


def test_overwrite_and_resume_exclude_each_other(fileset, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(scan_args(fileset, tmp_path / "x.tsv", "--resume", "--overwrite"))
    assert "not allowed with argument" in capsys.readouterr().err


# --- links -----------------------------------------------------------------------------

def test_nothing_is_written_through_a_symbolic_link(fileset, tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    link = tmp_path / "link.tsv"
    link.symlink_to(precious)
    for extra in ([], ["--overwrite"], ["--resume"]):
        with pytest.raises(SystemExit, match="symbolic link"):
            main(scan_args(fileset, link, *extra))
    assert precious.read_text() == "keep me\n"
    identity_link = tmp_path / "mine.tsv.scan.json"
    identity_link.symlink_to(precious)
    with pytest.raises(SystemExit, match="symbolic link"):
        main(scan_args(fileset, tmp_path / "mine.tsv"))
    assert precious.read_text() == "keep me\n"
    assert not (tmp_path / "mine.tsv").exists()


# --- locks -----------------------------------------------------------------------------

def test_a_second_scan_on_the_same_output_refuses_at_once(fileset, tmp_path):
    out = tmp_path / "busy.tsv"
    with ScanOutput(out):
        started = time.perf_counter()
        for extra in (["--overwrite"], ["--resume"]):
            with pytest.raises(SystemExit, match="another emlmm scan is writing"):
                main(scan_args(fileset, out, *extra))
        assert time.perf_counter() - started < 1.0  # before any kinship or null fit
    assert not out.exists()  # created by the first, which never began: removed
    assert main(scan_args(fileset, out, "--overwrite")) == 0  # the lock went with its owner


def test_two_processes_on_one_output_leave_one_clean_table(fileset, finished, tmp_path):
    out = tmp_path / "race.tsv"
    command = [sys.executable, "-m", "emlmm", *scan_args(fileset, out, "--overwrite")]
    runs = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    codes = sorted(run.wait(timeout=120) for run in runs)
    errors = [run.stderr.read() for run in runs]
    # One scan writes; the other refuses (or, if the first was already done, replaces it).
    assert codes[0] == 0
    if codes[1] != 0:
        assert any("another emlmm scan is writing" in text for text in errors)
    assert out.read_bytes() == finished[0]


def test_a_scan_refused_before_it_began_leaves_no_file(fileset, tmp_path):
    out = tmp_path / "never.tsv"
    args = scan_args(fileset, out)
    args[args.index("--kinship") + 1] = str(fileset / "covar.txt")  # wrong size
    with pytest.raises(SystemExit, match=r"^emlmm: error: kinship must be a square matrix"):
        main(args)
    assert not out.exists()
    assert not Path(f"{out}.scan.json").exists()


# --- kill -9 -----------------------------------------------------------------------------

def test_kill_9_then_resume_gives_the_uninterrupted_file(tmp_path):
    rng = np.random.default_rng(5)
    n, m = 150, 1200
    genotypes = rng.binomial(2, rng.uniform(0.1, 0.5, size=m), size=(n, m)).astype(float)
    related = dense.random_genotype_kinship(rng, n, 300)
    y = np.linalg.cholesky(related + 1e-9 * np.eye(n)) @ rng.normal(size=n) + rng.normal(size=n)
    write_plink(tmp_path / "big", genotypes, phenotypes=y)
    np.savetxt(tmp_path / "K.txt", related)

    def command(out, *extra):
        return [sys.executable, "-m", "emlmm", "gwas", "--bfile", str(tmp_path / "big"),
                "--kinship", str(tmp_path / "K.txt"), "--chunk-size", "10", "--quiet",
                "--out", str(out), *extra]

    full = tmp_path / "full.tsv"
    subprocess.run(command(full), check=True, timeout=300)
    out = tmp_path / "killed.tsv"
    run = subprocess.Popen(command(out))
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.stat().st_size < 2000):
        time.sleep(0.01)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    killed_at = out.read_bytes()
    assert 0 < len(killed_at) < full.stat().st_size  # killed part way
    subprocess.run(command(out, "--resume"), check=True, timeout=300)
    assert out.read_bytes() == full.read_bytes()


# --- the identity record -------------------------------------------------------------------

def test_the_identity_record_names_the_scan(fileset, finished):
    identity = json.loads(finished[1])
    assert identity["emlmm"] == emlmm.__version__
    assert identity["method"] == "exact"
    assert identity["formula"] == "y ~ 1 + snp"
    assert identity["snps"]["count"] == 30
    assert identity["samples"]["count"] == 70
    for key in ("phenotype", "covariates", "kinship"):
        assert len(identity[key]) == 64
    header = finished[0].split(b"\n", 1)[0].decode().split("\t")
    assert identity["table"]["columns"] == header
    assert header[:3] == ["snp", "chr", "pos"]


def test_the_api_writes_what_the_command_line_writes(fileset, finished, tmp_path):
    from emlmm import read_plink
    from emlmm.io import read_text_matrix

    with read_plink(fileset / "study") as plink:
        data = plink.phenotype().rename("y").to_frame()
        scan = GenomeScan("y ~ 1 + snp", data, plink, read_text_matrix(fileset / "K.txt"),
                          chunk_size=7)
        summary = scan.write(tmp_path / "api.tsv")
        with pytest.raises(FileExistsError):
            scan.write(tmp_path / "api.tsv")
        with pytest.raises(ScanFileError, match="symbolic link"):
            (tmp_path / "api_link.tsv").symlink_to(tmp_path / "api.tsv")
            scan.write(tmp_path / "api_link.tsv", overwrite=True)
    assert (tmp_path / "api.tsv").read_bytes() == finished[0]
    assert summary.n_snps == 30 and summary.resumed_from == 0 and summary.failed == 0


# --- the command line uses public names only -------------------------------------------

def test_the_command_line_imports_only_public_names():
    source = Path(emlmm.__file__).with_name("__main__.py").read_text()
    private = [
        f"{node.module}.{alias.name}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("emlmm")
        for alias in node.names
        if alias.name.startswith("_") and alias.name != "__version__"
    ]
    assert private == [], private


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"emlmm {emlmm.__version__}"


def test_the_command_line_scans_leaving_one_chromosome_out(fileset, tmp_path):
    import pandas as pd

    from emlmm import gwas, read_plink

    out = tmp_path / "loco.tsv"
    args = scan_args(fileset, out, "--loco")
    del args[args.index("--kinship"):args.index("--kinship") + 2]
    assert main(args) == 0
    written = pd.read_csv(out, sep="\t", index_col="snp")
    with read_plink(fileset / "study") as plink:
        data = plink.phenotype().rename("y").to_frame()
        expected = gwas("y ~ 1 + snp", data, plink, None, loco=True)
    np.testing.assert_allclose(written.p_lrt, expected.p_lrt, rtol=1e-5)
    with pytest.raises(SystemExit, match="--loco builds one kinship"):
        main(scan_args(fileset, tmp_path / "both.tsv", "--loco"))
