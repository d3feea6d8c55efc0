"""Contrastive groups (typed) for stage 1 (MIC) and stage 2 (ProsocialDialog + casual chat).

Layer: above ``config`` and ``data``; below ``train``.
"""
