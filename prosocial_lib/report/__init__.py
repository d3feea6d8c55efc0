"""What a chapter shows: tables, generated prose and figures, made from the data the library returns.

Layer: above ``eval`` and ``bench``; below ``book`` and ``cli``.
"""
