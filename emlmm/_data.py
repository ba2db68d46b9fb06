"""Checking and aligning user input before any numerics see it.

Every error message says what is wrong in the user's terms (sizes, labels, column
names) and what to do about it.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import patsy
import statsmodels
from numpy.typing import NDArray

__all__ = [
    "align_kinship",
    "check_choice",
    "check_count",
    "check_design",
    "check_flag",
    "check_formula_inputs",
    "check_kinship",
    "check_numeric",
    "check_positive",
]

_SHOW_LABELS = 5
#: Largest condition number of the (column-scaled) design: beyond it X' V^-1 X, whose
#: condition number is about its square, cannot be inverted to useful precision.
MAX_CONDITION = 1e7


def repeated_labels(labels: Iterable[Any]) -> pd.Index:
    """The labels that appear more than once, each once, in order.

    Examples
    --------
    >>> from emlmm._data import repeated_labels
    >>> repeated_labels(["a", "b", "a", "c", "b", "a"]).tolist()
    ['a', 'b']
    """
    index = pd.Index(labels)
    return pd.Index(index[index.duplicated()].unique())


def _preview(labels: Collection[Any]) -> str:
    # NumPy scalars are shown as the Python values they hold (1, not np.int64(1)).
    shown = ", ".join(
        repr(label.item() if isinstance(label, np.generic) else label)
        for label in list(labels)[:_SHOW_LABELS]
    )
    more = len(labels) - _SHOW_LABELS
    return shown + (f" and {more} more" if more > 0 else "")


def check_count(name: str, value: Any, minimum: int = 1) -> int:
    """An integer argument such as ``maxiter``: TypeError if not an integer, ValueError if
    below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
    return int(value)


def check_positive(name: str, value: Any) -> float:
    """A positive real argument such as ``tol``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, not {value}")
    return float(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """A string argument with a fixed set of values, such as ``method``."""
    if not isinstance(value, str):
        raise TypeError(
            f"{name} must be one of {', '.join(map(repr, choices))}, not {type(value).__name__}"
        )
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, not {value!r}")
    return value


def check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, not {type(value).__name__}")
    return bool(value)


def check_numeric(name: str, values: Any) -> None:
    """TypeError, naming the columns, when a DataFrame or array is not numeric."""
    if isinstance(values, pd.DataFrame):
        bad = [c for c in values.columns if not pd.api.types.is_numeric_dtype(values[c])]
        if bad:
            raise TypeError(f"{name} must be numeric; column(s) {_preview(bad)} are not")
        return
    try:
        np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be numeric: {exc}") from exc


def check_formula_inputs(formula: Any, data: Any) -> None:
    """A formula must be a string and its data a DataFrame (or a mapping of columns)."""
    if not isinstance(formula, str):
        raise TypeError(
            f"formula must be a string such as 'y ~ 1 + x', not {type(formula).__name__}"
        )
    if not isinstance(data, (pd.DataFrame, dict)):
        raise TypeError(f"data must be a pandas DataFrame, not {type(data).__name__}")
    try:
        patsy.ModelDesc.from_formula(formula)
    except RecursionError:  # patsy's parser recurses once per '+'
        raise ValueError(
            f"the formula has {formula.count('+') + 1} terms, more than patsy's formula "
            "parser can take (it recurses once per term); fit a model with that many "
            "covariates from arrays, EMLMM(endog, exog, kinship)"
        ) from None
    except patsy.PatsyError:
        pass  # named, with the formula, where the design is built


def formula_data(data: Any) -> Any:
    """``data`` (a DataFrame) with pandas' nullable columns as the NumPy columns patsy
    reads: integers (``Int64``, ...) as int64, or float64 where a value is missing;
    ``Float64`` as float64; ``boolean`` as bool, or objects (True, False, None) where a
    value is missing. A missing value (``pd.NA``) becomes NaN or None, which a formula
    drops as it drops any other. patsy itself fails on these columns with messages
    that do not name them (``boolean value of NA is ambiguous``). Anything else, and
    data without such columns, is returned as it is.

    Examples
    --------
    >>> import pandas as pd
    >>> from emlmm._data import formula_data
    >>> frame = pd.DataFrame({"n": pd.array([1, None], dtype="Int64"),
    ...                       "b": pd.array([True, False], dtype="boolean")})
    >>> formula_data(frame).dtypes.tolist()
    [dtype('float64'), dtype('bool')]
    """
    if not isinstance(data, pd.DataFrame):
        return data
    converted: dict[Any, Any] = {}
    for name in data.columns:
        column = data[name]
        dtype = column.dtype
        if not isinstance(dtype, pd.api.extensions.ExtensionDtype):
            continue
        missing = bool(column.isna().any())
        if isinstance(dtype, pd.BooleanDtype):
            converted[name] = (
                column.astype(object).where(column.notna(), None)
                if missing
                else column.to_numpy(dtype=bool)
            )
        elif pd.api.types.is_integer_dtype(dtype) and not missing:
            converted[name] = column.to_numpy(dtype=np.int64)
        elif pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_float_dtype(dtype):
            converted[name] = column.to_numpy(dtype=np.float64, na_value=np.nan)
    if not converted:
        return data
    result = data.copy(deep=False)
    for name, values in converted.items():
        result[name] = values
    return result


def check_vc_formula(vc_formula: Any) -> dict[str, str] | None:
    """Extra variance components, as ``{name: formula}`` (None or empty: none)."""
    if vc_formula is None:
        return None
    if not isinstance(vc_formula, Mapping):
        raise TypeError(
            "vc_formula must be a dict of names to formulas, such as "
            f"{{'cage': '0 + C(cage)'}}, not {type(vc_formula).__name__}"
        )
    wrong = [name for name, term in vc_formula.items() if not isinstance(term, str)]
    if wrong:
        raise TypeError(
            f"vc_formula's formulas must be strings such as '0 + C(cage)'; {_preview(wrong)} "
            f"{'is' if len(wrong) == 1 else 'are'} not"
        )
    return {str(name): term for name, term in vc_formula.items()} or None


def align_kinship(kinship: Any, index: pd.Index) -> Any:
    """Reorder a labelled kinship to ``index``; pass an unlabelled one through.

    A :class:`pandas.DataFrame` kinship is matched to the data by label on both
    axes; individuals in the kinship but not in the data are left out. Data
    labels missing from the kinship, or repeated, raise a ``ValueError`` that lists
    them.
    """
    from emlmm.kinship import LowRankKinship

    labelled = isinstance(kinship, pd.DataFrame) or (
        isinstance(kinship, LowRankKinship) and kinship.ids is not None
    )
    if labelled and not index.is_unique:
        raise ValueError(
            f"the data's row labels repeat ({_preview(repeated_labels(index))}), so they "
            "cannot be matched one to one to the labelled kinship; give each row its own "
            "label or, for several records per individual, name the column of individual "
            "ids with kinship_ids="
        )
    if isinstance(kinship, LowRankKinship):
        return kinship.rows(index)
    if not isinstance(kinship, pd.DataFrame):
        return kinship
    if not kinship.index.equals(kinship.columns):
        if set(kinship.index) != set(kinship.columns) or len(kinship.index) != len(
            kinship.columns
        ):
            raise ValueError(
                "kinship DataFrame must have the same labels on its rows and columns; "
                f"rows not among columns: {_preview(kinship.index.difference(kinship.columns))}"
            )
    if not kinship.index.is_unique:
        raise ValueError(
            f"kinship labels are not unique: {_preview(repeated_labels(kinship.index))} repeat"
        )
    if kinship.index.equals(index) and kinship.columns.equals(index):
        return kinship  # already aligned: no copy
    missing = index.difference(kinship.index, sort=False)
    if len(missing) > 0:
        raise ValueError(
            f"{len(missing)} of the {len(index)} individuals in the data have no row in "
            f"the kinship: {_preview(missing)}. Kinship labels look like "
            f"{_preview(kinship.index)}."
        )
    return kinship.loc[index, index]


def check_kinship(kinship: Any, nobs: int) -> NDArray[np.float64]:
    """Validate a kinship matrix for ``nobs`` individuals and return it as floats.

    It must be numeric, two-dimensional, square, of size ``nobs``, finite and
    symmetric to round-off; it is returned exactly symmetric (as a read-only view,
    not a copy, when it is exactly symmetric already). Positive
    semi-definiteness is checked when it is eigendecomposed. Inside
    :func:`emlmm._spectral.shared_spectra` a kinship object is checked once.
    """
    from emlmm._spectral import remembered

    checked: NDArray[np.float64] = remembered(
        kinship, f"checked for {nobs}", lambda: _check_kinship(kinship, nobs)
    )
    return checked


def row_bands(
    matrix: NDArray[np.float64], entries: int
) -> Iterator[tuple[int, NDArray[np.float64], NDArray[np.float64]]]:
    """Bands of about ``entries`` entries of a square matrix's rows: ``(first row,
    band, mirror)``, ``mirror`` the same entries read across the diagonal
    (``matrix[:, rows].T``), so that a check or a symmetrisation makes no ``n x n``
    temporary."""
    n = matrix.shape[0]
    step = max(1, entries // max(n, 1))
    for first in range(0, n, step):
        rows = slice(first, min(first + step, n))
        yield first, matrix[rows], matrix[:, rows].T


#: Entries of the band of rows _check_kinship compares with its transpose at a time.
_BAND_ENTRIES = 1 << 20


def _check_kinship(kinship: Any, nobs: int) -> NDArray[np.float64]:
    if isinstance(kinship, pd.DataFrame):
        kinship = kinship.to_numpy()
    try:
        array = np.asarray(kinship, dtype=float)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"kinship must be a numeric matrix, not {type(kinship).__name__}") from exc
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ValueError(f"kinship must be a square matrix; it has shape {array.shape}")
    if array.shape[0] != nobs:
        raise ValueError(
            f"kinship is {array.shape[0]} x {array.shape[1]} but the data have {nobs} "
            f"observations; it must be {nobs} x {nobs}, one row and column per individual "
            "in the same order (or a DataFrame labelled by the data's index)"
        )
    finite = np.isfinite(array)
    if not finite.all():
        rows, cols = np.nonzero(~finite)
        raise ValueError(
            f"kinship has {rows.size} non-finite entries (NaN or inf), the first at "
            f"row {rows[0]}, column {cols[0]}"
        )
    scale = float(max(array.max(initial=0.0), -array.min(initial=0.0)))
    # |A - A'| by bands of rows, without an n x n temporary.
    exact = True
    for first, band, mirror in row_bands(array, _BAND_ENTRIES):
        gaps = np.abs(band - mirror)
        largest = gaps.max(initial=0.0)
        exact = exact and largest == 0.0
        if largest > np.sqrt(np.finfo(float).eps) * max(scale, 1.0):
            at = np.unravel_index(np.argmax(gaps), gaps.shape)
            i, j = int(at[0]) + first, int(at[1])
            raise ValueError(
                f"kinship is not symmetric: entry [{i}, {j}] = {array[i, j]:.6g} "
                f"but [{j}, {i}] = {array[j, i]:.6g}"
            )
    if exact:
        # Already exactly symmetric (a GRM, emlmm.kinship's, GEMMA's text): used as
        # given, read-only, not copied (a copy is 3.2 GB at n = 20,000).
        view = array.view()
        view.flags.writeable = False
        return view
    symmetric = array + array.T  # the only n x n array made here (at n = 10,000: 800 MB)
    symmetric *= 0.5
    return symmetric


def _non_finite_rows(array: NDArray[np.float64]) -> NDArray[np.intp]:
    bad = ~np.isfinite(array)
    return np.nonzero(bad if bad.ndim == 1 else bad.any(axis=1))[0]


def check_design(
    endog: NDArray[np.float64], exog: NDArray[np.float64], exog_names: Sequence[str]
) -> None:
    """Reject a response or design that no fit can use, saying why."""
    for name, array in (("endog", endog), ("exog", exog)):
        rows = _non_finite_rows(array)
        if rows.size:
            raise ValueError(
                f"{name} has NaN or inf in {rows.size} rows (the first: {_preview(rows)}); "
                "pass missing='drop' to drop those rows (and the same rows and columns "
                "of the kinship)"
            )
    nobs, k_exog = exog.shape
    if k_exog == 0:
        raise ValueError(
            "the model has no fixed effects (exog has no columns); it needs at least one, "
            "such as an intercept: 'y ~ 1' (in a scan, 'y ~ 1 + snp')"
        )
    if nobs < k_exog + 2:
        raise ValueError(
            f"{nobs} observations are not enough for {k_exog} fixed effects plus two "
            "variance components"
        )
    # Rank and conditioning of the design with every column scaled to a largest
    # value of 1, so that neither depends on the columns' units.
    largest = np.abs(exog).max(axis=0)
    scaled = exog / np.where(largest > 0, largest, 1.0)
    singular_values = np.linalg.svd(scaled, compute_uv=False)
    tolerance = max(scaled.shape) * np.finfo(float).eps * singular_values[0]
    rank = int(np.count_nonzero(singular_values > tolerance))
    if rank < k_exog:
        raise ValueError(
            f"exog is rank deficient (rank {rank} < {k_exog} columns): "
            f"{_preview(_redundant_columns(scaled, exog_names))} are linear combinations "
            "of the columns before them; drop them or reparametrise"
        )
    condition = float(singular_values[0] / singular_values[-1])
    if condition > MAX_CONDITION:
        _, _, right = np.linalg.svd(scaled)
        weights = np.abs(right[-1])
        involved = [exog_names[int(j)] for j in np.nonzero(weights >= 0.1 * weights.max())[0]]
        raise ValueError(
            f"exog is ill-conditioned: its condition number is {condition:.3g} with every "
            f"column scaled to a largest value of 1 (at most {MAX_CONDITION:.0e} can be "
            f"fitted reliably); columns {_preview(involved)} are nearly linear "
            "combinations of each other. Drop one, or center and rescale them."
        )


def _redundant_columns(exog: NDArray[np.float64], exog_names: Sequence[str]) -> list[str]:
    """Columns, in design order, that lie in the span of the columns kept before them."""
    kept: list[int] = []
    redundant = []
    for column in range(exog.shape[1]):
        if np.linalg.matrix_rank(exog[:, [*kept, column]], tol=1e-10) > len(kept):
            kept.append(column)
        else:
            redundant.append(exog_names[column])
    return redundant


#: statsmodels 0.15 takes a formula's namespace as a dict (and deprecates patsy's
#: EvalEnvironment there); 0.14 takes only an EvalEnvironment.
_NAMESPACE_AS_DICT = tuple(int(part) for part in statsmodels.__version__.split(".")[:2]) >= (0, 15)


def capture_namespace(depth: int = 0) -> Any:
    """The variables a formula sees besides its data, captured once: those of the frame
    ``depth`` levels above the caller (0: the caller's caller), its locals before its
    globals, in the form ``eval_env`` of statsmodels' ``from_formula`` takes.

    Capturing the namespace once, where the user called in, and passing it down, is
    what keeps a formula's names right however deep the calls that use it go.
    """
    frame = inspect.currentframe()
    for _ in range(depth + 2):
        assert frame is not None
        frame = frame.f_back
    assert frame is not None
    if _NAMESPACE_AS_DICT:
        return {**frame.f_globals, **frame.f_locals}
    return patsy.EvalEnvironment([frame.f_locals, frame.f_globals])
