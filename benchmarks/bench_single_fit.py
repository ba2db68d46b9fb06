"""Single null-model fit (y ~ 1): emlmm vs a dense NumPy port of the lab's EM.

Run by hand (not in CI):  python benchmarks/bench_single_fit.py [--sizes 300 1000 2000]

emlmm is timed from the raw arrays: EMLMM.from_formula (which eigendecomposes the
kinship) + fit(), best of several repeats. The dense port (benchmarks/lab_dense.py)
runs to convergence at n <= --dense-full-max; above it only --dense-iters
iterations are timed and its total is estimated as
setup + per-iteration time x the iteration count emlmm's method="lab" needs (the
dense port's own stopping rule; same path because the kinship is non-singular).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _sim import related_data
from lab_dense import em_algorithm

from emlmm import EMLMM

LOG_2PI = float(np.log(2 * np.pi))


def fit_emlmm(y, kinship, **fit_kwargs):
    df = pd.DataFrame({"y": y})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = EMLMM.from_formula("y ~ 1", data=df, kinship=kinship)
        return model.fit(**fit_kwargs)


def best_time(func, repeats):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = func()
        times.append(time.perf_counter() - t)
    return min(times), out


VARIANTS = {
    "accelerated": dict(),  # the default fit
    "em": dict(method="em"),
    "em, lab start": dict(method="em", start_params="lab"),
    "lab (lab rule)": dict(method="lab", start_params="lab"),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 1000, 2000])
    parser.add_argument("--h2", type=float, default=0.5)
    parser.add_argument("--dense-full-max", type=int, default=300)
    parser.add_argument("--dense-iters", type=int, default=3)
    parser.add_argument("--skip-h2-examples", action="store_true")
    args = parser.parse_args()
    print(f"load: {os.getloadavg()}  threads: {os.environ.get('OMP_NUM_THREADS', 'default')}")

    for n in args.sizes:
        y, kinship = related_data(n, args.h2, seed=n)
        repeats = 5 if n <= 1000 else 3
        print(f"\n=== n = {n}, h2 = {args.h2}, load {os.getloadavg()[0]:.2f} ===")
        em_times = {}
        for name, kw in VARIANTS.items():
            seconds, res = best_time(lambda kw=kw: fit_emlmm(y, kinship, **kw), repeats)
            em_times[name] = (seconds, res)
            print(
                f"emlmm {name:15s}: {seconds * 1e3:9.2f} ms  n_iter {int(res._results.n_iter) if np.ndim(res._results.n_iter) == 0 else res._results.n_iter}"
                f"  llf {res.llf:.6f}  s2a {res.sigma2_a:.4f}  s2e {res.sigma2_e:.4f}"
            )
        iters_lab = int(np.ravel(em_times["lab (lab rule)"][1]._results.n_iter)[0])
        iters_em = int(np.ravel(em_times["em, lab start"][1]._results.n_iter)[0])
        X = np.ones((n, 1))
        const = -0.5 * n * LOG_2PI
        if n <= args.dense_full_max:
            t = time.perf_counter()
            dense = em_algorithm(y, X, kinship)
            dense_total = time.perf_counter() - t
            per_iter = float(np.mean(dense["iter_times"]))
            llf_last = dense["trace"][-1] + const
            print(
                f"dense port (to convergence): {dense_total:.3f} s, {dense['n_updates']} EM "
                f"updates, {per_iter * 1e3:.2f} ms/iter, setup {dense['setup_time'] * 1e3:.1f} ms"
            )
            print(
                f"  dense llf after last update (+ -n/2 log 2pi) {llf_last:.6f}, "
                f"returned log_L (R: value before last update) {dense['log_L'] + const:.6f}, "
                f"s2a {dense['sigma_sq_a']:.4f} s2e {dense['sigma_sq_e']:.4f}"
            )
            lab_res = em_times["lab (lab rule)"][1]
            em_res = em_times["em, lab start"][1]
            print(
                f"  check vs emlmm method='lab': updates {dense['n_updates']} vs n_iter {iters_lab}; "
                f"llf diff {llf_last - lab_res.llf:.2e}; s2a diff {dense['sigma_sq_a'] - lab_res.sigma2_a:.2e}"
            )
            print(
                f"  check vs emlmm method='em' (lab start): n_iter {iters_em}; "
                f"llf diff {llf_last - em_res.llf:.2e} (em runs on to the maximum)"
            )
            # Does method='em' follow the same path? Compare the llf traces.
            hist = (
                np.asarray(em_res._results.llf_history)
                if hasattr(em_res._results, "llf_history")
                else None
            )
            if hist is not None:
                k = min(len(hist), len(dense["trace"]))
                print(
                    f"  path: max |dense trace - em trace| over first {k} iterates "
                    f"{np.max(np.abs(np.asarray(dense['trace'][:k]) + const - hist[:k])):.2e}"
                )
            note = "measured"
        else:
            dense = em_algorithm(y, X, kinship, max_iter=args.dense_iters)
            per_iter = float(np.mean(dense["iter_times"]))
            dense_total = dense["setup_time"] + per_iter * iters_lab
            print(
                f"dense port: {args.dense_iters} iterations timed: "
                f"{', '.join(f'{s:.2f}' for s in dense['iter_times'])} s; setup "
                f"{dense['setup_time']:.2f} s; x {iters_lab} updates (emlmm method='lab') "
                f"= {dense_total:.1f} s estimated"
            )
            print(
                f"  (x {iters_em} iterations of method='em' would be "
                f"{dense['setup_time'] + per_iter * iters_em:.1f} s)"
            )
            note = "estimated"
        for name, (seconds, _) in em_times.items():
            print(f"  speed-up dense ({note}) / emlmm {name:15s}: {dense_total / seconds:10.0f}x")
        print(f"  load after n = {n}: {os.getloadavg()[0]:.2f}")

    if args.skip_h2_examples:
        return
    print("\n=== plain EM vs accelerated at n = 1000 (default start) ===")
    for h2 in (0.05, 0.8):
        y, kinship = related_data(1000, h2, seed=77)
        rows = []
        for name, kw in (("em", dict(method="em")), ("accelerated", dict())):
            seconds, res = best_time(lambda kw=kw: fit_emlmm(y, kinship, **kw), 3)
            rows.append(
                (
                    name,
                    seconds,
                    int(np.ravel(res._results.n_iter)[0]),
                    res.llf,
                    res.sigma2_a,
                    res.sigma2_e,
                )
            )
            print(
                f"h2 = {h2}: {name:11s} {seconds * 1e3:9.2f} ms  n_iter {rows[-1][2]:6d}  "
                f"llf {res.llf:.8f}  s2a {res.sigma2_a:.4f}  s2e {res.sigma2_e:.4f}"
            )
        print(
            f"h2 = {h2}: em / accelerated: time {rows[0][1] / rows[1][1]:.1f}x, "
            f"iterations {rows[0][2] / rows[1][2]:.1f}x, llf diff {rows[0][3] - rows[1][3]:.2e}"
        )
    print(f"load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
