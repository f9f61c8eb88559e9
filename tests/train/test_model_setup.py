"""Model set-up: a model.path that can only be a local path and does not exist is refused at once."""

from __future__ import annotations

import pytest

from fastgrpo.train.model_setup import check_local_path


@pytest.mark.parametrize(
    "path", ["/nope/flux", "./models/flux", "../flux", "~/no-such-model", "a/b/c", "w.safetensors"]
)
def test_missing_local_paths_are_refused_at_once(path):
    with pytest.raises(ValueError, match="does not exist"):
        check_local_path(path)


def test_hub_ids_and_existing_paths_pass(tmp_path):
    for path in (None, "black-forest-labs/FLUX.1-Kontext-dev", str(tmp_path)):
        check_local_path(path)
