"""Contrastive groups (typed: ``ContrastiveGroup``, ``BuildReport``) for stage 1 (MIC) and stage 2
(ProsocialDialog + casual chat); ``io`` reads and writes your own groups as JSON / JSONL.

Layer: above ``config`` and ``data``; below ``train``.
"""
