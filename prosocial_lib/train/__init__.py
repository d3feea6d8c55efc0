"""Training: the socially aware n-pair loss, the collator, scoring, ``ContrastiveConfig`` and the contrastive
Trainer, the stages and DPO.

Layer: above ``groups`` and ``modeling``; below ``eval``, ``bench`` and ``report``.
"""
