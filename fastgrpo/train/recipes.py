"""Named training recipes: sets of config overrides that ``fastgrpo train --recipe NAME`` applies before the
command line's own, and that ``fastgrpo bench-learning`` compares (:mod:`fastgrpo.train.learning`).

Every recipe is written out in full over the keys it is about (sampler kind, window, step selection, GRPO
constants), so that it means the same thing whatever the built-in defaults become. ``flow_grpo`` is the baseline
of every ratio the learning benchmark reports; ``flow_grpo_fast_sde`` is the built-in default's (a test keeps
them equal).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RECIPES", "Recipe", "get_recipe"]


@dataclass(frozen=True)
class Recipe:
    """A named set of overrides.

    Attributes:
        name: what ``--recipe`` takes.
        overrides: dotted ``key=value`` overrides, applied over the config file and before the command line's.
        summary: one line: what the recipe does and where it comes from.
    """

    name: str
    overrides: tuple[str, ...]
    summary: str


#: Flow-GRPO's values of the method keys; its keys are the ones every recipe sets, so that a recipe never inherits
#: one of them from the defaults
_FLOW_GRPO = {
    "sde.sampler": "sde",
    "sde.noise_level": "0.7",
    "sampler.sde_window": "null",
    "sampler.sde_steps": "null",
    "sampler.window_schedule": "random",
    "sampler.shared_noise": "false",
    "sampler.train_fraction": "0.5",
    "grpo.beta": "0.004",
    "grpo.clip_low": "0.0001",
    "grpo.clip_high": "0.0001",
    "grpo.ratio_norm": "false",
    "optim.lr": "0.0003",
    "optim.betas": "[0.9,0.999]",
}


def _recipe(name: str, summary: str, **changes: str) -> Recipe:
    keys = {k.replace("__", "."): v for k, v in changes.items()}
    unknown = sorted(set(keys) - set(_FLOW_GRPO))
    assert not unknown, f"recipe {name} sets keys outside the method keys of _FLOW_GRPO: {unknown}"
    return Recipe(name, tuple(f"{k}={v}" for k, v in {**_FLOW_GRPO, **keys}.items()), summary)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        _recipe(
            "flow_grpo",
            "Flow-GRPO (Liu et al. 2025, arXiv:2505.05470): every step an SDE step with the seed's sigma_t, noise 0.7, "
            "half of them trained, beta 0.004, clip 1e-4",
        ),
        _recipe(
            "cps",
            "Flow-GRPO with coefficients-preserving sampling (Wang & Yu 2025, arXiv:2509.05952) in place of the SDE",
            sde__sampler="cps",
        ),
        _recipe(
            "cps_momentum",
            "CPS with AdamW beta1 0.99: the optimiser's momentum averages the noisy policy gradient over ~100 "
            "iterations instead of ~10",
            sde__sampler="cps",
            optim__betas="[0.99,0.999]",
        ),
        _recipe(
            "flow_grpo_momentum",
            "the seed's SDE step, clipped loss and KL (SPEC S1, S3) with AdamW beta1 0.99",
            optim__betas="[0.99,0.999]",
        ),
        _recipe(
            "flow_grpo_fast",
            "Flow-GRPO-Fast (arXiv:2505.05470) with DanceGRPO's shared group noise (arXiv:2505.07818) and CPS: two "
            "consecutive CPS steps at a random place, ODE elsewhere, both trained",
            sde__sampler="cps",
            sampler__sde_steps="2",
            sampler__shared_noise="true",
            sampler__train_fraction="1.0",
        ),
        _recipe(
            "flow_grpo_fast_sde",
            "the built-in default: Flow-GRPO-Fast (arXiv:2505.05470) with DanceGRPO's shared group noise "
            "(arXiv:2505.07818) and the seed's own SDE step (SPEC S1): two consecutive SDE steps at a random place, "
            "ODE elsewhere, both trained, the clipped loss and KL of SPEC S3",
            sampler__sde_steps="2",
            sampler__shared_noise="true",
            sampler__train_fraction="1.0",
        ),
        _recipe(
            "mixgrpo",
            "MixGRPO (Li et al. 2025, arXiv:2507.21802): a window of four CPS steps sliding over the trajectory, ODE "
            "outside it",
            sde__sampler="cps",
            sampler__sde_steps="4",
            sampler__window_schedule="sliding",
        ),
        _recipe(
            "cps_ratio_norm",
            "CPS with GRPO-Guard's per-step ratio normalisation (arXiv:2510.22319)",
            sde__sampler="cps",
            grpo__ratio_norm="true",
        ),
    )
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; ``ValueError`` naming the recipes there are otherwise."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"no recipe {name!r}; the recipes are: {', '.join(RECIPES)}") from None
