"""The benchmark (book appendix): training-step cost against K, generation and judging throughput, memory.

Layer: above ``train`` and ``eval``; below ``report``.
"""
