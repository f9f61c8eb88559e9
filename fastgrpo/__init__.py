"""fastgrpo: fast online GRPO fine-tuning of flow-matching image-editing models.

Layers (each imports only from the ones above it): ``kernels`` -> ``core`` -> ``data`` / ``models`` /
``rewards`` -> ``train``, where ``models`` and ``rewards`` may also import ``data.shapes`` (the synthetic task's
geometry, numpy only). Importing the package is cheap: no device queries, no heavy imports.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
