"""The three data sources of the experiment, loaded into ``datasets.Dataset`` with their upstream columns.

- :func:`load_prosocial_dialog`: ProsocialDialog (Kim et al., 2022) - embedded sample | hub | local files.
- :func:`load_mic`: MIC (Ziems et al., 2022) - embedded sample | local ``MIC.csv`` (data-use agreement) | hub.
- :func:`load_casual`: casual chat - ``chitchat-dataset`` (offline) | casual ProsocialDialog turns | DailyDialog.
- :func:`load_subtle`: the "subtle" contexts (written for this book, test only): small talk whose last user turn
  reveals, in passing, something that needs caution or intervention.
- :func:`load_judge_check`: the judge check set, (context, reply) pairs labelled by reading (prosocial, condoning,
  neutral, fine, preachy, incoherent) on test contexts only: the yardstick for the judges.
- :func:`load_judge_train`: pairs labelled the same way on contexts the judges may train on (train / validation
  turns, chitchat train conversations): the reply judge's "labelled by reading" training source.

The embedded samples were written for this book in the exact upstream schemas (the subtle set in the book's own
schema); they are NOT the real data.

Bad rows raise :class:`DataFormatError` (file, row, field); with ``strict=False`` they are skipped, a
:class:`DataSkipWarning` names the counts, and :func:`last_load_report` returns the :class:`LoadReport`.
"""

from .casual import load_casual
from .dialogue import dialogue_turns, history_to_messages
from .errors import DataFormatError, DataSkipWarning, LoadReport, last_load_report
from .judge_check import CHECK_LABELS, load_judge_check, load_judge_train
from .labels import (
                     MIC_AGREEMENT,
                     MIC_CHATBOTS,
                     MIC_CONSENSUS,
                     MIC_SEVERITY,
                     MORAL_FOUNDATIONS,
                     PROSOCIAL_SOURCES,
                     SAFETY_LABELS,
                     SAFETY_SEVERITY,
                     SAFETY_VOTES,
                     UPSTREAM_LABEL_SHARES,
                     aggregate_safety_votes,
                     collapse_safety_label,
)
from .mic import load_mic
from .prosocial_dialog import load_prosocial_dialog
from .readers import EMBEDDED_NOTICE
from .subtle import load_subtle

__all__ = [
    "load_prosocial_dialog", "load_mic", "load_casual", "load_subtle", "load_judge_check", "load_judge_train", "CHECK_LABELS",
    "dialogue_turns", "history_to_messages",
    "SAFETY_LABELS", "SAFETY_SEVERITY", "SAFETY_VOTES", "UPSTREAM_LABEL_SHARES", "PROSOCIAL_SOURCES",
    "MORAL_FOUNDATIONS", "MIC_AGREEMENT", "MIC_CONSENSUS", "MIC_SEVERITY", "MIC_CHATBOTS",
    "collapse_safety_label", "aggregate_safety_votes",
    "DataFormatError", "DataSkipWarning", "LoadReport", "last_load_report", "EMBEDDED_NOTICE",
]
