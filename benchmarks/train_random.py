"""``fastgrpo`` with the random-weights Kontext-architecture models registered (``model.type=flux_kontext_random``).

Usage (any ``fastgrpo`` command line)::

    python benchmarks/train_random.py train --config benchmarks/flux_kontext_random.yaml runtime.max_steps=3

The model type is a benchmark-side addition (``benchmarks/random_models.py``), so the package's own command line
does not know it; this wrapper registers it and then runs :func:`fastgrpo.train.cli.main` with the arguments.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import random_models

from fastgrpo.train.cli import main

if __name__ == "__main__":
    random_models.register()
    sys.exit(main(sys.argv[1:]))
