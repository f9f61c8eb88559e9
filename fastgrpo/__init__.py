"""fastgrpo: fast online GRPO fine-tuning of flow-matching image-editing models.

Layers (each imports only from the ones above it): ``kernels`` -> ``core`` -> ``models`` / ``rewards`` /
``data`` -> ``train``. Importing the package is cheap: no device queries, no heavy imports.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
