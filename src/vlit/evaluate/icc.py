"""Intraclass correlation coefficients from a complete targets x raters table.

All six forms of Shrout & Fleiss (1979), named as McGraw & Wong (1996) do, from one two-way
ANOVA:

=========  ====================  ==========================================
McGraw     Shrout & Fleiss       model
=========  ====================  ==========================================
ICC(1,1)   ICC(1,1)              one-way random, single measure
ICC(A,1)   ICC(2,1)              two-way random, absolute agreement, single
ICC(C,1)   ICC(3,1)              two-way mixed, consistency, single
ICC(1,k)   ICC(1,k)              one-way random, average of k
ICC(A,k)   ICC(2,k)              two-way random, absolute agreement, average
ICC(C,k)   ICC(3,k)              two-way mixed, consistency, average
=========  ====================  ==========================================

For the paper's question (is a dataset's per-dimension result consistent across the models
tuned on it?) the targets are the benchmark dimensions, the raters the models, and the
"consistency" forms ICC(C,1) and ICC(C,k) are the ones to read: a model that is better on
every dimension by the same margin does not lower them.

Example:
    >>> table = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9],
    ...          [6, 2, 4, 7]]   # Shrout & Fleiss (1979), Table 2
    >>> round(intraclass_correlation(table)["ICC(C,1)"].value, 2)   # their Table 4: .71
    0.71
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vlit.errors import ConfigError

SHROUT_FLEISS_NAMES: dict[str, str] = {
    "ICC(1,1)": "ICC(1,1)",
    "ICC(A,1)": "ICC(2,1)",
    "ICC(C,1)": "ICC(3,1)",
    "ICC(1,k)": "ICC(1,k)",
    "ICC(A,k)": "ICC(2,k)",
    "ICC(C,k)": "ICC(3,k)",
}


@dataclass(frozen=True)
class IccEstimate:
    """One ICC form with its F test against ICC = 0 and a 95% confidence interval."""

    form: str
    value: float
    f_statistic: float
    df1: int
    df2: int
    p_value: float
    ci_low: float
    ci_high: float

    @property
    def shrout_fleiss_name(self) -> str:
        return SHROUT_FLEISS_NAMES[self.form]

    def to_json(self) -> dict[str, float | int | str | list[float]]:
        return {
            "form": self.form,
            "shrout_fleiss": self.shrout_fleiss_name,
            "icc": self.value,
            "F": self.f_statistic,
            "df1": self.df1,
            "df2": self.df2,
            "p_value": self.p_value,
            "ci95": [self.ci_low, self.ci_high],
        }


def intraclass_correlation(
    ratings: Sequence[Sequence[float]] | np.ndarray, *, confidence: float = 0.95
) -> dict[str, IccEstimate]:
    """All six ICC forms of a complete table (rows: targets, columns: raters)."""
    from scipy.stats import f as f_distribution

    table = np.asarray(ratings, dtype=float)
    if table.ndim != 2 or table.shape[0] < 2 or table.shape[1] < 2:
        raise ConfigError(
            f"ICC needs at least 2 targets and 2 raters, got a table of shape {table.shape}",
            fix="give results of at least two models on at least two dimensions",
        )
    if not np.isfinite(table).all():
        raise ConfigError("ICC needs a complete table", fix="drop targets with missing ratings")
    n, k = table.shape
    grand = table.mean()
    ss_total = float(((table - grand) ** 2).sum())
    ss_targets = float(k * ((table.mean(axis=1) - grand) ** 2).sum())
    ss_raters = float(n * ((table.mean(axis=0) - grand) ** 2).sum())
    ss_error = ss_total - ss_targets - ss_raters
    ms_targets = ss_targets / (n - 1)
    ms_raters = ss_raters / (k - 1)
    ms_error = ss_error / ((n - 1) * (k - 1))
    ms_within = (ss_raters + ss_error) / (n * (k - 1))

    with np.errstate(divide="ignore", invalid="ignore"):
        icc_1 = (ms_targets - ms_within) / (ms_targets + (k - 1) * ms_within)
        icc_a = (ms_targets - ms_error) / (
            ms_targets + (k - 1) * ms_error + k * (ms_raters - ms_error) / n
        )
        icc_c = (ms_targets - ms_error) / (ms_targets + (k - 1) * ms_error)
        icc_1k = (ms_targets - ms_within) / ms_targets
        icc_ak = (ms_targets - ms_error) / (ms_targets + (ms_raters - ms_error) / n)
        icc_ck = (ms_targets - ms_error) / ms_targets

        df_targets, df_within, df_error = n - 1, n * (k - 1), (n - 1) * (k - 1)
        f_one = ms_targets / ms_within
        f_two = ms_targets / ms_error
        p_one = float(f_distribution.sf(f_one, df_targets, df_within))
        p_two = float(f_distribution.sf(f_two, df_targets, df_error))

        tail = 1 - (1 - confidence) / 2
        # one-way and consistency forms: exact intervals from the F distribution
        f_one_low = f_one / f_distribution.ppf(tail, df_targets, df_within)
        f_one_high = f_one * f_distribution.ppf(tail, df_within, df_targets)
        f_two_low = f_two / f_distribution.ppf(tail, df_targets, df_error)
        f_two_high = f_two * f_distribution.ppf(tail, df_error, df_targets)
        # absolute agreement: Satterthwaite's approximate degrees of freedom (McGraw & Wong)
        f_raters = ms_raters / ms_error
        shared = n * (1 + (k - 1) * icc_a) - k * icc_a
        nu = (df_error * (k * icc_a * f_raters + shared) ** 2) / (
            df_targets * k**2 * icc_a**2 * f_raters**2 + shared**2
        )
        f_upper = f_distribution.ppf(tail, n - 1, nu)
        f_lower = f_distribution.ppf(tail, nu, n - 1)
        spread = k * ms_raters + (k * n - k - n) * ms_error
        a_low = n * (ms_targets - f_upper * ms_error) / (f_upper * spread + n * ms_targets)
        a_high = n * (f_lower * ms_targets - ms_error) / (spread + n * f_lower * ms_targets)

    def single(f_low: float, f_high: float) -> tuple[float, float]:
        return (f_low - 1) / (f_low + k - 1), (f_high - 1) / (f_high + k - 1)

    def average(f_low: float, f_high: float) -> tuple[float, float]:
        return 1 - 1 / f_low, 1 - 1 / f_high

    def spearman_brown(value: float) -> float:
        return value * k / (1 + value * (k - 1))

    rows = [
        ("ICC(1,1)", icc_1, f_one, df_within, p_one, single(f_one_low, f_one_high)),
        ("ICC(A,1)", icc_a, f_two, df_error, p_two, (a_low, a_high)),
        ("ICC(C,1)", icc_c, f_two, df_error, p_two, single(f_two_low, f_two_high)),
        ("ICC(1,k)", icc_1k, f_one, df_within, p_one, average(f_one_low, f_one_high)),
        (
            "ICC(A,k)",
            icc_ak,
            f_two,
            df_error,
            p_two,
            (spearman_brown(a_low), spearman_brown(a_high)),
        ),
        ("ICC(C,k)", icc_ck, f_two, df_error, p_two, average(f_two_low, f_two_high)),
    ]
    return {
        form: IccEstimate(
            form=form,
            value=float(value),
            f_statistic=float(f_value),
            df1=df_targets,
            df2=df2,
            p_value=p_value,
            ci_low=float(interval[0]),
            ci_high=float(interval[1]),
        )
        for form, value, f_value, df2, p_value, interval in rows
    }
