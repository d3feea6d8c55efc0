"""Contrastive groups (typed: ``ContrastiveGroup``, ``BuildReport``) for stage 1 (MIC) and stage 2
(ProsocialDialog + casual chat); ``io`` reads and writes your own groups as JSON / JSONL.

Layer: above ``config`` and ``data``; below ``train``.
"""

from .io import read_groups, write_groups
from .stage1 import build_stage1_groups
from .stage2 import build_stage2_groups, context_key
from .types import BuildReport, ContrastiveGroup, GroupBuildError, make_group, social_weight

__all__ = ["BuildReport", "ContrastiveGroup", "GroupBuildError", "build_stage1_groups", "build_stage2_groups",
           "context_key", "make_group", "read_groups", "social_weight", "write_groups"]
