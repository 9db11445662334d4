"""95 % confidence intervals of a mean over a few random seeds (Student's t), in Python and in SQL.

With n runs the interval is ``mean ± t(0.975, n - 1) · s / sqrt(n)`` (``s``: the sample standard
deviation). The quantile comes from a table for 1..30 degrees of freedom (the exact values to 4
decimals) and, above, from the Cornish-Fisher expansion around the normal quantile (Abramowitz &
Stegun 26.7.5), whose error there is below 1e-4. No interval for one run (``None`` / NULL).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

T_975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)
Z_975 = 1.959963984540054


def _expansion_terms(z: float) -> tuple[float, float, float, float]:
    return ((z**3 + z) / 4, (5 * z**5 + 16 * z**3 + 3 * z) / 96,
            (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
            (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160)


def t_expansion(df: float) -> float:
    """Cornish-Fisher approximation of t(0.975, df) (used above 30 degrees of freedom)."""
    g = _expansion_terms(Z_975)
    return Z_975 + sum(gi / df ** (i + 1) for i, gi in enumerate(g))


def t_critical(df: int) -> float:
    """t(0.975, df): the two-sided 95 % quantile of Student's t."""
    if df < 1:
        raise ValueError("a t quantile needs at least 1 degree of freedom")
    return T_975[df - 1] if df <= len(T_975) else t_expansion(df)


def mean_ci95(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, half-width of the 95 % interval); no half-width for a single value."""
    if not values:
        raise ValueError("no values")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, t_critical(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def t_critical_sql(df: str) -> str:
    """A DuckDB expression for t(0.975, ``df``) (``df``: an integer SQL expression >= 1)."""
    table = ", ".join(f"{v}" for v in T_975)
    g = _expansion_terms(Z_975)
    expansion = f"{Z_975!r}" + "".join(f" + {gi!r} / pow({df}, {i + 1})" for i, gi in enumerate(g))
    return f"(CASE WHEN {df} <= {len(T_975)} THEN [{table}][{df}] ELSE {expansion} END)"
