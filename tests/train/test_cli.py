"""The command line: ``fastgrpo env`` reports the installation; ``fastgrpo train --help`` names its options."""

from __future__ import annotations

import pytest

from fastgrpo.train.cli import main


def test_env_reports_versions_and_devices(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for word in ("torch", "triton", "diffusers", "triton mode", "attention backends"):
        assert word in out


def test_train_help_names_the_config_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("--config", "--output-dir", "--profile-steps", "key=value"):
        assert word in out


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit) as info:
        main(["fly"])
    assert info.value.code == 2
