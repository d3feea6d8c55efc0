"""Every reply of a run in one searchable, sortable table (itables, offline) plus the run's files to download.

The table's JavaScript (DataTables, bundled with ``itables``) is embedded in the page, base64-encoded, so the built
book opens without a network and the HTML check stays green. Outside the book (plain pandas, no ``itables``)
:func:`explorer_frame` is the same table as a DataFrame.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

#: Judge columns shown as probabilities (0-1), with the header they get in the explorer.
PROBABILITY_COLUMNS: dict[str, str] = {"unsafe_prob": "P(condoning)", "preachy_prob": "P(preachy)",
                                       "incoherent_prob": "P(incoherent)", "violates_rot_prob": "P(violates RoT)"}
#: The id of the explorer's table in the page (one explorer per page).
EXPLORER_ID = "reply-explorer"
#: Rows shown, without search or filters, where ``itables`` is not installed.
FALLBACK_ROWS = 50
#: The run's files a reader can download next to the explorer.
DOWNLOAD_FILES: tuple[str, ...] = ("replies.jsonl", "summary.csv", "table.csv")


def explorer_frame(replies: pd.DataFrame, *, sample: int | None = 0) -> pd.DataFrame:
    """One row per (context, system): the full context and reply, the judges' label for the reply, the flags it
    raised and the probabilities behind them.

    Args:
        replies: the judged replies (``Comparison.replies`` or ``run_audit``'s frame).
        sample: keep this sample index only (None: every sample).

    Returns:
        A DataFrame with the columns ``context``, ``system``, ``reply``, ``set``, ``judge's label``, ``flags`` and
        the probabilities of :data:`PROBABILITY_COLUMNS` that the replies carry, rounded to 3 digits.
    """
    rows = replies if sample is None or "sample" not in replies else replies[replies["sample"] == sample]
    out = pd.DataFrame({
        "context": rows["context"].to_numpy(),
        "system": rows["system"].to_numpy(),
        "reply": rows["reply"].to_numpy(),
        "set": rows["context_set"].to_numpy(),
    })
    if "reply_label" in rows:
        out["judge's label"] = rows["reply_label"].to_numpy()
    flags = [flag for flag in ("unsafe", "preachy", "incoherent", "violates_rot") if flag in rows]
    if flags:
        names = {"unsafe": "condoning", "violates_rot": "violates RoT"}
        out["flags"] = [", ".join(names.get(f, f) for f in flags if bool(row[f])) or "-"
                        for _, row in rows[flags].iterrows()]
    for col, title in PROBABILITY_COLUMNS.items():
        if col in rows:
            out[title] = rows[col].astype(float).round(3).to_numpy()
    return out


def explorer_html(frame: pd.DataFrame, *, caption: str | None = None, page_length: int = 10) -> str:
    """The frame as an interactive DataTables table (search box, sorting, one filter per column), with the
    DataTables library embedded so the page needs no network.

    Args:
        frame: usually :func:`explorer_frame`'s table.
        caption: shown under the table.
        page_length: rows per page.

    Returns:
        HTML for ``IPython.display.HTML``; without ``itables`` installed, a plain table of the first
        :data:`FALLBACK_ROWS` rows and a note saying how to get the interactive one.
    """
    try:
        from itables import options as opt
        from itables.javascript import generate_init_offline_itables_html, to_html_datatable
    except ImportError:  # e.g. on Colab, which installs the library without the book's extra
        shown = frame.head(FALLBACK_ROWS)
        return (f"<p><em>The interactive table needs the <code>itables</code> package (<code>pip install "
                f"itables</code>); here are the first {len(shown)} of {len(frame)} rows.</em></p>"
                + shown.to_html(index=False))

    init = generate_init_offline_itables_html(opt.dt_bundle)
    # The long texts wrap in wide columns, the rest stays narrow; the table scrolls sideways on a narrow page.
    wide = {"context": "15em", "reply": "19em"}
    css = "".join(f"#{EXPLORER_ID} td:nth-child({i + 1}){{min-width:{wide[str(c)]};}}"
                  for i, c in enumerate(frame.columns) if str(c) in wide)
    style = (f"<style>#{EXPLORER_ID} td{{white-space:normal;vertical-align:top;}}"
             f"#{EXPLORER_ID} th{{white-space:nowrap;}}{css}</style>")
    table = to_html_datatable(frame, caption=caption, connected=False, pageLength=page_length, showIndex=False,
                              column_filters="footer", classes="display compact cell-border", table_id=EXPLORER_ID,
                              display_logo_when_loading=False, maxBytes=0, scrollX=True,
                              style="width:100%;margin:auto;caption-side:bottom")
    return init + style + table


def copy_downloads(run_folder: str | Path, dest: str | Path, names: Sequence[str] = DOWNLOAD_FILES,
                   prefix: str = "") -> list[Path]:
    """Copy the run's files a reader may want (replies, rates) into ``dest``, next to the chapter.

    Args:
        run_folder: where the run saved them (``Comparison.out_dir``).
        dest: a folder next to the chapter (the book links them with ``{download}``).
        names: the files to copy; missing ones are skipped.
        prefix: put before each copied name (e.g. ``"evaluation-"``).

    Returns:
        The copies, in ``names`` order.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    copies = []
    for name in names:
        src = Path(run_folder) / name
        if src.exists():
            copies.append(Path(shutil.copyfile(src, dest / f"{prefix}{name}")))
    return copies
