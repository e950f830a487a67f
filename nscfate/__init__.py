"""NSC Fate: predict neural stem cell differentiation condition from single-cell brightfield images.

The package is the ML library. It imports no web package; TensorFlow is imported only by the modules
that need it, so ``import nscfate`` and ``nscfate --help`` stay fast.
"""

__version__ = "0.1.0"
