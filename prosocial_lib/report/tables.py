"""How a chapter shows a table: every float formatted, no internal column names, at most about seven columns,
and example texts in full.

- :func:`styled` formats any DataFrame for the page (whole numbers without decimals, shares as percentages,
  other floats with a fixed number of digits) and hides the index;
- :func:`interval` writes a value with its interval in one cell, so a rate and its bounds take one column;
- :func:`reply_cards` shows example replies as Markdown "cards" (the context, then each reply in full), where a
  table would cut the texts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd

#: The readable names of the judges' flags and rates, for headers.
METRIC_NAMES: dict[str, str] = {"unsafe": "unsafe", "violates_rot": "violates RoT", "agrees_rot": "agrees with RoT",
                                "preachy": "preachy", "incoherent": "incoherent", "truncated": "truncated",
                                "repetitive": "repetitive"}


_INTERVAL = r"^[+-]?\d+(\.\d+)?% \["


def metric_name(metric: str, context_set: str | None = None) -> str:
    """``("violates_rot", "adversarial")`` -> ``"violates RoT (adversarial)"``."""
    name = METRIC_NAMES.get(metric, metric.replace("_", " "))
    return f"{name} ({context_set})" if context_set else name


def _number(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        whole = isinstance(value, int) or (float(value).is_integer() and abs(value) > 1)
        return f"{value:,.0f}" if whole else f"{value:.{digits}f}" if abs(value) >= 0.01 else f"{value:.{digits}g}"
    return str(value)


def _setting(value) -> str:
    """A value of a settings column: numbers as short as they are exact (``1``, ``0.3``, ``2e-05``), lists
    comma-separated, booleans yes / no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "-" if value != value else f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "-"
    return str(value)


def _column_format(series: pd.Series, digits: int):
    """A formatter for one column: whole numbers without decimals when every value is whole, else ``digits``."""
    values = series.dropna()
    if pd.api.types.is_bool_dtype(series):
        return lambda v: "yes" if v else "no"
    if (pd.api.types.is_float_dtype(series) and len(values) and (values == values.round()).all()
            and values.abs().max() > 1):  # counts stored as floats; 0/1 shares keep their decimals
        return lambda v: "-" if v != v else f"{v:,.0f}"
    if pd.api.types.is_float_dtype(series):
        return lambda v: "-" if v != v else f"{v:.{digits}f}"
    if series.dtype == object:  # mixed settings tables: numbers, lists and strings in one column
        return _setting
    return None


def styled(frame: pd.DataFrame, *, percent: Iterable[str] = (), signed: Iterable[str] = (), digits: int = 3,
           hide_index: bool = True, rename: dict[str, str] | None = None):
    """A pandas Styler with every number formatted for the page.

    Args:
        frame: the table.
        percent: columns of shares (0-1) shown as percentages with one decimal.
        signed: columns of changes in shares, shown as signed percentages.
        digits: decimals of the other non-whole floats.
        hide_index: hide the row index (tables here carry their keys as columns).
        rename: header renames applied first.

    Returns:
        A ``Styler`` (displays as HTML in a notebook and in the book). Float columns of whole numbers above 1 are
        counts (no decimals); other floats get ``digits`` decimals; booleans read yes / no; numbers inside text
        columns (settings tables) are shortened; cells holding a value with its interval do not wrap.
    """
    frame = frame.rename(columns=rename or {})
    percent, signed = set(percent), set(signed)
    formats = {}
    for col in frame.columns:
        if col in percent:
            formats[col] = lambda v: "-" if v != v else f"{v:.1%}"
        elif col in signed:
            formats[col] = lambda v: "-" if v != v else f"{v:+.1%}"
        else:
            f = _column_format(frame[col], digits)
            if f is not None:
                formats[col] = f
    style = frame.style.format(formats)
    intervals = [c for c in frame.columns if pd.api.types.is_string_dtype(frame[c]) and len(frame[c].dropna())
                 and frame[c].dropna().astype(str).str.match(_INTERVAL).all()]
    if intervals:  # "12.5% [5.0, 25.0]" reads as one value: never broken over two lines
        style = style.set_properties(subset=intervals, **{"white-space": "nowrap"})
    return style.hide(axis="index") if hide_index else style


def interval(value: float, low: float, high: float, *, signed: bool = False) -> str:
    """``"12.5% [5.0, 25.0]"`` (a share and its 95% interval in percentage points); signed for changes."""
    if value != value:
        return "-"
    sign = "+" if signed else ""
    if low != low or high != high:
        return f"{value:{sign}.1%} [no interval]"
    return f"{value:{sign}.1%} [{100 * low:{sign}.1f}, {100 * high:{sign}.1f}]"


def reply_cards(rows: pd.DataFrame, *, context: str = "context", replies: Sequence[str] = ("reply",),
                meta: Sequence[str] = (), group: str | None = None, label: str | None = None) -> str:
    """Example replies as Markdown cards, every text in full: the context quoted, then each reply with its
    labels (the columns in ``meta``).

    Args:
        rows: one row per reply.
        context: the column holding the context (a card per distinct context, in first-seen order).
        replies: the columns holding texts to show under it (e.g. ``("reply",)`` or ``("gold reply",
            "after stage 1", "after stage 2")``); each is named in bold.
        meta: short columns shown after a reply in parentheses (system, judge's probability, ...).
        group: a column whose value titles each reply instead of the column name (e.g. ``"system"``).
        label: a column whose value (of the context's first row) follows "Context" in parentheses (e.g. ``"kind"``).

    Returns:
        Markdown.
    """
    cards = []
    for ctx, sub in rows.groupby(context, sort=False):
        kind = f" ({md_quote(sub[label].iloc[0])})" if label else ""
        lines = [f"**Context**{kind}: {md_quote(ctx)}", ""]
        for r in sub.to_dict("records"):
            for col in replies:
                title = str(r[group]) if group else col
                extra = ", ".join(f"{m} {_number(r[m], 2)}" for m in meta if m in r)
                text = str(r[col]).strip() or "(empty reply)"
                lines.append(f"- *{title}*{f' ({extra})' if extra else ''}: {md_quote(text)}")
        cards.append("\n".join(lines))
    return "\n\n---\n\n".join(cards) if cards else "_No examples._"


def md_quote(text) -> str:
    """One line of user text, safe inside Markdown (no headings, emphasis, roles or HTML from the data)."""
    if isinstance(text, (list, tuple)):
        text = " / ".join(map(str, text))
    text = " ".join(str(text).split())
    for ch in "\\`*_[]<>#|{}":
        text = text.replace(ch, "\\" + ch)
    return text


def counts_and_shares(frame: pd.DataFrame, first_share: str, *, digits: int = 1) -> tuple:
    """A wide overview (counts, then one share column per label) as two styled tables: the counts, and the
    shares as percentages (from column ``first_share`` on). Display both: ``display(*counts_and_shares(...))``."""
    cols = list(frame.columns)
    shares = cols[cols.index(first_share):]
    return (styled(frame.drop(columns=shares), digits=digits, hide_index=False),
            styled(frame[shares], percent=shares, hide_index=False))
