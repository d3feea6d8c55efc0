"""prosocial_lib: the library behind the book "Improving dialog safety with socially aware contrastive learning"."""

__version__ = "0.1.0"
