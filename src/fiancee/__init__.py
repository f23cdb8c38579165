"""fiancee: conditional early exits for trained image generators (FIANCEE, CVPR 2023)."""

__version__ = "0.1.0"
