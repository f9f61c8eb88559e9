"""The training config: defaults, shipped YAML files, partial files, overrides, validation messages, saving."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from fastgrpo.core.objective import GRPOConfig
from fastgrpo.core.sde import SDEConfig
from fastgrpo.models.tiny_editor import EVAL_STEPS, PACKAGED_WEIGHTS, TINY_SIZE, TRAIN_STEPS
from fastgrpo.train.config import (
    CONFIG_FILENAME,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    save_resolved_config,
)
from fastgrpo.train.config.sections import ProfileConfig, SamplerConfig

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
SHIPPED = sorted(CONFIGS.glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults and shipped files ---------------------------------------------------------------------------------


def test_defaults_validate_and_are_the_cpu_demo():
    cfg = load_config(None)
    assert cfg == TrainConfig()
    assert isinstance(cfg.sde, SDEConfig) and isinstance(cfg.grpo, GRPOConfig)
    assert cfg.model.type == "tiny" and cfg.model.path is None
    assert cfg.data.is_synthetic and cfg.data.resolutions == ("16x16",) and cfg.data.synthetic_size == 16
    assert cfg.data.synthetic_size in PACKAGED_WEIGHTS and TINY_SIZE in PACKAGED_WEIGHTS
    assert (cfg.sampler.train_steps, cfg.sampler.eval_steps) == (TRAIN_STEPS, EVAL_STEPS)
    assert cfg.rewards.to_reward_mapping() == {
        "components": {"rules": {"type": "rules", "weight": 1.0}},
        "device": "cpu",
    }
    assert cfg.rollout_seed == cfg.runtime.seed


def test_every_field_is_documented():
    for section in dataclasses.fields(TrainConfig):
        cls = type(getattr(TrainConfig(), section.name))
        for f in dataclasses.fields(cls):
            assert f"{f.name}:" in (cls.__doc__ or ""), f"{cls.__name__}.{f.name} has no docstring line"


def test_shipped_configs_exist():
    assert {p.name for p in SHIPPED} >= {"demo.yaml", "flux_kontext.yaml", "qwen_image_edit.yaml"}
    assert (CONFIGS / "README.md").is_file()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_each_shipped_config_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    assert cfg.sampler.group_size >= 2
    saved = save_resolved_config(cfg, tmp_path)
    assert load_config(saved) == cfg


def test_demo_yaml_equals_the_built_in_default():
    assert load_config(CONFIGS / "demo.yaml") == load_config(None)


def test_model_configs_follow_the_public_editing_runs():
    flux = load_config(CONFIGS / "flux_kontext.yaml")
    assert flux.model.type == "flux_kontext" and flux.model.true_cfg_scale == 1.0
    assert 12 <= flux.sampler.group_size <= 16 and flux.sampler.eval_steps == 28
    assert 0.7 <= flux.sde.noise_level <= 0.8 and flux.grpo.clip_low == 1e-4
    qwen = load_config(CONFIGS / "qwen_image_edit.yaml")
    assert qwen.model.type == "qwen_image_edit" and qwen.model.true_cfg_scale > 1.0
    assert qwen.sampler.eval_steps == 50


@pytest.mark.parametrize("name", ["flux_kontext.yaml", "qwen_image_edit.yaml"])
def test_model_configs_reward_options_are_valid(name):
    from fastgrpo.rewards.clip import ClipRewardConfig
    from fastgrpo.rewards.judge import JudgeConfig

    checkers = {"mllm_judge": JudgeConfig, "clip": ClipRewardConfig}
    for entry in load_config(CONFIGS / name).rewards.components.values():
        options = {k: v for k, v in entry.items() if k not in ("type", "weight")}
        checkers[entry["type"]].from_mapping(options, entry["type"])


# --- partial files and overrides ---------------------------------------------------------------------------------


def test_partial_yaml_keeps_the_other_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "sampler:\n  group_size: 12\ngrpo:\n  beta: 0\nlogging:\n"))
    default = TrainConfig()
    assert cfg.sampler == dataclasses.replace(default.sampler, group_size=12)
    assert cfg.grpo.beta == 0.0 and isinstance(cfg.grpo.beta, float) and not cfg.grpo.needs_reference
    assert cfg.optim == default.optim and cfg.logging == default.logging


def test_empty_yaml_is_the_default(tmp_path):
    assert load_config(write(tmp_path, "# nothing\n")) == TrainConfig()


def test_yaml_components_replace_the_default_components(tmp_path):
    cfg = load_config(
        write(tmp_path, "rewards:\n  components:\n    rules2: {type: rules, weight: 2.0, keep_weight: 0.5}\n")
    )
    assert list(cfg.rewards.components) == ["rules2"]


def test_overrides_of_every_value_type():
    cfg = load_config(
        None,
        [
            "sampler.group_size=16",  # int
            "grpo.beta=0",  # int into a float field
            "grpo.clip_low=1e-5",  # exponent float (a string in YAML 1.1)
            "runtime.compile=true",  # bool
            "model.attention_backend=flash",  # str
            "lora.target_modules=[to_q,to_k]",  # list -> tuple
            "sampler.sde_window=[0, 2]",  # tuple of ints
            "profile.steps=10:12",  # base-60 int in YAML 1.1, a string here
            "data.source=null",  # null
            "optim.ema_decay=0.9",
            "rewards.components.rules.weight=0.5",  # into a free-form mapping
            "rewards.components.extra={type: rules, weight: 0.25}",
            "logging={eval_every: 0, run_name: demo}",  # a whole section
        ],
    )
    assert cfg.sampler.group_size == 16
    assert cfg.grpo.beta == 0.0 and cfg.grpo.clip_low == 1e-5
    assert cfg.runtime.compile is True and cfg.model.attention_backend == "flash"
    assert cfg.lora.target_modules == ("to_q", "to_k") and cfg.sampler.sde_window == (0, 2)
    assert cfg.profile.steps == "10:12" and cfg.profile.window == (10, 12)
    assert cfg.data.source == "synthetic" and cfg.optim.ema_decay == 0.9
    assert cfg.rewards.components["rules"] == {"type": "rules", "weight": 0.5}
    assert cfg.rewards.components["extra"]["weight"] == 0.25
    assert cfg.logging.eval_every == 0 and cfg.logging.run_name == "demo"


def test_overrides_apply_after_the_file(tmp_path):
    path = write(tmp_path, "sampler: {group_size: 12, prompts_per_step: 3}\n")
    cfg = load_config(path, ["sampler.group_size=6"])
    assert (cfg.sampler.group_size, cfg.sampler.prompts_per_step) == (6, 3)
    assert apply_overrides(TrainConfig(), []) == TrainConfig()


def test_value_with_equals_sign_and_empty_value():
    cfg = load_config(None, ["logging.run_name=a=b", "model.negative_prompt="])
    assert cfg.logging.run_name == "a=b" and cfg.model.negative_prompt == ""


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sampler.group_size", "must look like key=value"),
        ("=3", "must look like key=value"),
        ("sampler..group_size=3", "must look like key=value"),
        ("sampler.group_sise=3", "did you mean 'sampler.group_size'"),
        ("sampelr.group_size=3", "did you mean 'sampler'"),
        ("grpo.beta.x=1", "grpo.beta is not a mapping"),
        ("grpo=3", "give a mapping"),
        ("grpo.beta=[1", "not valid YAML"),
    ],
)
def test_bad_overrides_say_what_to_write(override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(None, [override])


def test_overrides_must_be_a_list():
    with pytest.raises(ValueError, match="list of key=value"):
        load_config(None, "grpo.beta=0")  # type: ignore[arg-type]


# --- unknown keys and bad values -------------------------------------------------------------------------------


def test_unknown_key_lists_the_section_and_suggests(tmp_path):
    with pytest.raises(ValueError) as info:
        load_config(write(tmp_path, "sampler:\n  groupsize: 8\n"))
    message = str(info.value)
    assert "unknown key 'sampler.groupsize'" in message and "run.yaml" in message
    assert "did you mean 'sampler.group_size'" in message
    assert "group_size, prompts_per_step, train_steps" in message


def test_unknown_section_suggests(tmp_path):
    with pytest.raises(ValueError, match=r"did you mean 'optim'.*valid keys of the config: model, lora"):
        load_config(write(tmp_path, "optimizer:\n  lr: 1.0e-4\n"))


def test_non_mapping_file_and_section(tmp_path):
    with pytest.raises(ValueError, match="must be a mapping of sections"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ValueError, match=r"'grpo' in config file .* must be a mapping"):
        load_config(write(tmp_path, "grpo: 3\n"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sampler.group_size=1", "sampler.group_size must be >= 2 (GRPO needs a group to compare): got 1"),
        ("sampler.group_size=8.5", "sampler.group_size must be an integer"),
        ("sampler.sde_window=[3, 2]", "sampler.sde_window must be [start, end)"),
        ("sampler.sde_window=[0, 9]", "<= sampler.train_steps (8)"),
        ("sampler.train_fraction=0", "sampler.train_fraction must lie in (0.0, 1.0]"),
        ("grpo.beta=-1", "grpo.beta must be >= 0 (0 disables the KL term)"),
        ("grpo.beta=abc", "grpo.beta must be a number; the default is 0.004"),
        ("grpo.kl_form=l2", "grpo.kl_form must be 'exact' or 'flow_grpo'"),
        ("sde.noise_level=-0.1", "sde.noise_level must be a float >= 0"),
        ("lora.rank=0", "lora.rank must be >= 1"),
        ("lora.target_modules=[]", "lora.target_modules must be null"),
        ("optim.lr=0", "optim.lr must lie in (0.0, inf]"),
        ("optim.betas=[0.9]", "optim.betas must be a pair"),
        ("optim.betas=[0.9, 1.0]", "optim.betas[1] must lie in [0.0, 1.0)"),
        ("optim.grad_accum=5", "optim.grad_accum=5 must divide sampler.prompts_per_step * sampler.group_size = 32"),
        ("model.type=sd3", "model.type must be one of"),
        ("model.type=flux_kontext", "model.path is required for model.type='flux_kontext'"),
        ("model.true_cfg_scale=4", "model.true_cfg_scale applies to qwen_image_edit only"),
        ("rewards.components.rules.type=lasers", "rewards.components.rules: reward type 'lasers' is unknown"),
        ("rewards.components={}", "rewards.components must be a non-empty mapping"),
        ("data.resolutions=[33x33]", "data.resolutions: resolution 33x33 is not a positive multiple of 16"),
        ("data.resolutions=[32x48]", "one square size for the synthetic task"),
        ("data.max_bad_fraction=2", "data.max_bad_fraction must lie in [0.0, 1.0]"),
        ("data.preset=nope", "data.preset: unknown data preset 'nope'"),
        ("runtime.device=tpu", "runtime.device must be auto, cpu, cuda or cuda:N"),
        ("runtime.compile=1", "runtime.compile must be true or false"),
        ("logging.run_name=2024", "quote text that reads as a number or boolean: logging.run_name='2024'"),
        ("runtime.cuda_graphs=true", None),
        ("logging.keep_checkpoints=0", "logging.keep_checkpoints must be >= 1 (or null to keep all)"),
        ("data.held_out=0", "set data.held_out > 0 or logging.eval_every=0"),
        ("profile.steps=12:10", "profile.steps must be 'A:B' with 0 <= A < B"),
        ("profile.steps=700:800", "ends after runtime.max_steps=650"),
        ("profile.memory_snapshot=true", "set profile.steps"),
        ("data.resolutions=[48x48]", "the packaged tiny editor has weights for 16x16, 32x32; pick one of those"),
        (("runtime.fsdp=true", "runtime.cuda_graphs=true"), "cannot capture FSDP's per-block all-gathers"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(override, message):
    if message is None:  # valid on its own; refused only together with a CPU device
        load_config(None, [override])
        with pytest.raises(ValueError, match=r"runtime.cuda_graphs needs a CUDA device"):
            load_config(None, [override, "runtime.device=cpu"])
        return
    with pytest.raises(ValueError) as info:
        load_config(None, [override] if isinstance(override, str) else list(override))
    assert message in str(info.value)


def test_sections_check_values_when_built_in_code():
    with pytest.raises(ValueError, match=r"sampler.group_size must be >= 2"):
        SamplerConfig(group_size=1)
    with pytest.raises(ValueError, match=r"profile.steps must be 'A:B'"):
        ProfileConfig(steps="10")
    with pytest.raises(ValueError, match=r"TrainConfig.grpo must be a GRPOConfig"):
        TrainConfig(grpo={"beta": 0})  # type: ignore[arg-type]


def test_sampler_window_and_trained_steps():
    sampler = SamplerConfig(train_steps=10, sde_window=(0, 4), sde_steps=None, train_fraction=0.5)
    assert sampler.window == (0, 4) and sampler.trained_steps == 2
    assert SamplerConfig(train_steps=10, sde_window=(0, 4), train_fraction=0.5).trained_steps == 1  # 2 SDE steps
    assert SamplerConfig(train_steps=10, train_fraction=0.01).trained_steps == 1


# --- YAML syntax, saving -----------------------------------------------------------------------------------------


def test_bad_yaml_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "sampler:\n  group_size: 8\n  train_steps: [1, 2\ngrpo:\n  beta: 0\n", "broken.yaml")
    with pytest.raises(ValueError) as info:
        load_config(path)
    message = str(info.value)
    assert "broken.yaml" in message and "not valid YAML at line" in message
    assert "at line 4," in message


def test_missing_file_says_what_to_pass(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(
        CONFIGS / "flux_kontext.yaml",
        ["profile.steps=10:12", "logging.run_name='1e-4'", "lora.target_modules=[attn.to_q]", "data.root='010'"],
    )
    path = save_resolved_config(cfg, tmp_path / "run")
    assert path == tmp_path / "run" / CONFIG_FILENAME
    assert load_config(path) == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert load_config(path).logging.run_name == "1e-4"  # quoted on save: a string, not the float 0.0001


def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    cfg = TrainConfig()
    save_resolved_config(cfg, tmp_path)
    assert sorted(os.listdir(tmp_path)) == [CONFIG_FILENAME]
    before = (tmp_path / CONFIG_FILENAME).read_text()

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        save_resolved_config(load_config(None, ["grpo.beta=0"]), tmp_path)
    assert sorted(os.listdir(tmp_path)) == [CONFIG_FILENAME]  # no temp file left, old file untouched
    assert (tmp_path / CONFIG_FILENAME).read_text() == before


def test_the_rule_reward_on_a_data_set_is_refused_naming_what_to_configure():
    with pytest.raises(ValueError, match=r"rewards.components.rules \(type rules\) scores only the built-in"):
        load_config(None, ["data.source=edits.jsonl"])
    components = "rewards.components={clip: {type: clip, weight: 1.0, model: ViT-B-32, pretrained: /m.bin}}"
    assert load_config(None, ["data.source=edits.jsonl", components]).data.source == "edits.jsonl"
