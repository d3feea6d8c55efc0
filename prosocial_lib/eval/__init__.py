"""Evaluation: judges, metrics, context sets, the audit, the systems compared and their comparison, ablations.

Layer: above ``train``; below ``report``.
"""
