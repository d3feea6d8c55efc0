"""The book itself: the papermill + Jupyter Book builder, notebook conventions, the student edition, the course guide.

Layer: top (beside ``cli``).
"""
