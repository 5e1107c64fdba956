"""Run configurations: YAML files per task and core, merged and validated into one dict.

A configuration has the keys ``ppo`` (``RecurrentPPO`` keyword arguments), ``policy``
(:class:`~stpn_rl.policies.CorePolicy` keyword arguments: ``core``, ``hidden_size``,
``core_options``, ...), ``env`` (environment options of the task), ``n_envs`` and
``total_timesteps``; optionally ``evaluation`` (``episodes``, ``deterministic``),
``checkpoint_freq`` (env-steps between checkpoints) and the ``task``/``seed`` a run recorded.
``configs/<task>/default.yaml`` holds a task's settings, ``configs/<task>/<core>.yaml`` what a
core changes (its hidden size at the paper's parameter budget, its options), and a user file
changes any of it.

``algo`` chooses the training algorithm: ``ppo`` (the default: sb3-contrib's RecurrentPPO,
settings in ``ppo``) or ``a2c-bptt`` (the paper's maze algorithm,
:class:`~stpn_rl.a2c_bptt.A2CBPTT`, settings in ``a2c_bptt``; the network is
:class:`~stpn_rl.bptt_policy.SequencePolicy`, whose value head shares the core, so
``policy.critic`` is ``shared``). ``configs/<task>/<algo>.yaml`` holds what an algorithm other
than PPO changes in the task's settings.
"""

from __future__ import annotations

import copy
import inspect
from importlib import resources
from pathlib import Path
from typing import Any

import stpn_core
import torch
import yaml
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.policies import ActorCriticPolicy

from stpn_rl.a2c_bptt import A2CBPTT
from stpn_rl.checkpoints import ALGORITHMS
from stpn_rl.policies import CRITIC_CHOICES, CorePolicy
from stpn_rl.tasks import check_env_kwargs, get_task

REQUIRED_KEYS = ("policy", "env", "n_envs", "total_timesteps")
OPTIONAL_KEYS = ("evaluation", "checkpoint_freq", "task", "seed", "algo")
_NOT_PPO_OPTIONS = {
    "self",
    "policy",
    "env",
    "policy_kwargs",
    "seed",
    "verbose",
    "tensorboard_log",
    "_init_setup_model",
}
PPO_OPTIONS = tuple(
    sorted(set(inspect.signature(RecurrentPPO.__init__).parameters) - _NOT_PPO_OPTIONS)
)
POLICY_OPTIONS = tuple(
    sorted(
        (
            set(inspect.signature(CorePolicy.__init__).parameters)
            | set(inspect.signature(ActorCriticPolicy.__init__).parameters)
        )
        - {"self", "observation_space", "action_space", "lr_schedule", "kwargs", "use_sde"}
    )
)
EVALUATION_OPTIONS = ("episodes", "deterministic")
DEFAULT_CRITIC = inspect.signature(CorePolicy.__init__).parameters["critic"].default
"""What ``policy.critic`` is when a configuration leaves it out: :class:`CorePolicy`'s own."""
A2C_BPTT_OPTIONS = tuple(
    sorted(set(inspect.signature(A2CBPTT.__init__).parameters) - _NOT_PPO_OPTIONS)
)
A2C_BPTT_POLICY_OPTIONS = ("core", "hidden_size", "core_options", "critic")


def settings_section(algo: str) -> str:
    """The section of a configuration that holds ``algo``'s settings (``ppo``, ``a2c_bptt``)."""
    if algo not in ALGORITHMS:
        raise ValueError(f"algo: expected one of {sorted(ALGORITHMS)}, got {algo!r}")
    return algo.replace("-", "_")


def config_dir(task: str) -> Path:
    """The packaged directory of ``task``'s YAML files."""
    get_task(task)
    return Path(str(resources.files("stpn_rl") / "configs" / task))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``, with a clear error for a missing file or another type."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path: no configuration file at {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = "" if mark is None else f", line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(error, "problem", None) or str(error)
        raise ValueError(f"{path}{where}: not valid YAML: {problem}") from error
    if not isinstance(data, dict):
        raise ValueError(f"path: {path} must hold a YAML mapping, got {type(data).__name__}")
    return data


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update``, recursively for nested mappings (``base`` is not changed)."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_config(
    task: str, core: str, path: str | Path | None = None, algo: str | None = None
) -> dict[str, Any]:
    """The validated configuration of ``core`` on ``task`` trained by ``algo`` (``None``: the
    one ``path`` names, else ``ppo``): the task's defaults, then the algorithm's file, then the
    core's file if there is one, then ``path``."""
    directory = config_dir(task)
    user = read_yaml(path) if path is not None else {}
    algo = user.get("algo", "ppo") if algo is None else algo
    settings_section(algo)
    if user.get("algo", algo) != algo:
        raise ValueError(f"algo: {path} configures {user['algo']!r}, but algo={algo!r} was asked")
    config = read_yaml(directory / "default.yaml")
    if algo != "ppo":
        if not (directory / f"{algo}.yaml").is_file():
            raise ValueError(f"algo: {algo!r} is not configured for task {task!r}")
        config = merge(config, read_yaml(directory / f"{algo}.yaml"))
        config.pop("ppo", None)
    if (directory / f"{core}.yaml").is_file():
        config = merge(config, read_yaml(directory / f"{core}.yaml"))
    if path is not None:
        chosen = (
            user.get("policy", {}).get("core", core)
            if isinstance(user.get("policy"), dict)
            else core
        )
        if chosen != core:
            raise ValueError(
                f"core: {path} configures core {chosen!r}, but core={core!r} was asked"
            )
        config = merge(config, user)
    config["policy"]["core"] = core
    validate_config(config, task)
    return config


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")


def _unknown(section: str, given: dict[str, Any], valid: tuple[str, ...]) -> None:
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ValueError(f"{section}: unknown key(s) {unknown}; valid: {list(valid)}")


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config[name]
    if not isinstance(value, dict):
        raise ValueError(f"{name}: expected a mapping, got {type(value).__name__}")
    return value


def _check_core_options(policy: dict[str, Any]) -> None:
    """Build the core once, so that an unknown or out-of-range core option is reported now,
    before a run folder records the configuration (the global RNG is left as it was)."""
    options = policy.get("core_options", {})
    if not isinstance(options, dict):
        raise ValueError("policy.core_options: expected a mapping of core options")
    try:
        with torch.random.fork_rng(devices=[]):
            stpn_core.build_model(policy["core"], 1, policy["hidden_size"], **options)
    except (TypeError, ValueError) as error:
        raise ValueError(f"policy.core_options: {error}") from error


def _check_a2c_bptt(settings: dict[str, Any], policy: dict[str, Any]) -> None:
    """The ``a2c_bptt`` section and what the algorithm's network takes of ``policy``."""
    _unknown("a2c_bptt", settings, A2C_BPTT_OPTIONS)
    for name, value in settings.items():
        if name == "device":
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"a2c_bptt.{name}: expected a non-negative number, got {value!r}")
    _unknown("policy", policy, A2C_BPTT_POLICY_OPTIONS)
    if policy.get("critic", "shared") != "shared":
        raise ValueError(
            "policy.critic: a2c-bptt's value head shares the core (the paper's network); "
            f"expected 'shared', got {policy['critic']!r}"
        )


def validate_config(config: dict[str, Any], task: str) -> None:
    """Raise ``ValueError``/``TypeError`` naming the first bad entry of ``config``."""
    if not isinstance(config, dict):
        raise TypeError(f"config: expected a dict, got {type(config).__name__}")
    get_task(task)
    algo = config.get("algo", "ppo")
    section = settings_section(algo)
    missing = [key for key in (section, *REQUIRED_KEYS) if key not in config]
    if missing:
        raise ValueError(f"config: missing key(s) {missing}")
    _unknown("config", config, (section, *REQUIRED_KEYS, *OPTIONAL_KEYS))
    if config.get("task", task) != task:
        raise ValueError(f"config.task: the file is for task {config['task']!r}, not {task!r}")
    _positive_int("n_envs", config["n_envs"])
    _positive_int("total_timesteps", config["total_timesteps"])
    if "checkpoint_freq" in config:
        _positive_int("checkpoint_freq", config["checkpoint_freq"])
    ppo = _section(config, "ppo") if algo == "ppo" else {}
    policy, env = _section(config, "policy"), _section(config, "env")
    if algo == "a2c-bptt":
        _check_a2c_bptt(_section(config, "a2c_bptt"), policy)
    _unknown("ppo", ppo, PPO_OPTIONS)
    for name in ("n_steps", "batch_size", "n_epochs"):
        if name in ppo:
            _positive_int(f"ppo.{name}", ppo[name])
    for name, low, high in (("gamma", 0.0, 1.0), ("gae_lambda", 0.0, 1.0)):
        value = ppo.get(name, 0.5)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise ValueError(f"ppo.{name}: expected a number in [{low}, {high}], got {value!r}")
    for name in ("learning_rate", "clip_range", "ent_coef", "vf_coef", "max_grad_norm"):
        value = ppo.get(name, 1.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"ppo.{name}: expected a non-negative number, got {value!r}")
    _unknown("policy", policy, POLICY_OPTIONS)
    models = getattr(stpn_core, "MODELS", None)
    if models is not None and policy.get("core") not in models:
        raise ValueError(f"core: expected one of {sorted(models)}, got {policy.get('core')!r}")
    _positive_int("policy.hidden_size", policy.get("hidden_size"))
    _check_core_options(policy)
    if policy.get("critic", DEFAULT_CRITIC) not in CRITIC_CHOICES:
        raise ValueError(
            f"policy.critic: expected one of {CRITIC_CHOICES}, got {policy['critic']!r}"
        )
    check_env_kwargs(task, env)
    evaluation = config.get("evaluation", {})
    if not isinstance(evaluation, dict):
        raise ValueError("evaluation: expected a mapping with episodes and deterministic")
    _unknown("evaluation", evaluation, EVALUATION_OPTIONS)
    if "episodes" in evaluation:
        _positive_int("evaluation.episodes", evaluation["episodes"])
