"""Models: one loader for every kind of model, chat formatting, and reply generation.

Layer: above ``config``, ``data`` and ``runs``; below ``train`` and ``eval``.
"""
