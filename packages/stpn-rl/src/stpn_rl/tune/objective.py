"""What a trial does: train the sampled agent, evaluate it periodically, report to Optuna."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from stable_baselines3.common.callbacks import BaseCallback

from stpn_rl.search_spaces import sample_config
from stpn_rl.tasks import make_vec_env
from stpn_rl.train import build_agent, count_parameters
from stpn_rl.tune.options import TuneOptions

Objective = Callable[[optuna.Trial], float]
EVAL_SEED_OFFSET = 10_000  # as stpn_rl.train: evaluation episodes never replay training's seeds


def evaluation_steps(rollout: int, n_timesteps: int, n_evaluations: int) -> list[int]:
    """The step counts at which a trial evaluates its agent, the last being its training length.

    PPO updates the agent only at the end of a rollout (``n_steps * n_envs`` steps), so the
    evaluations fall on rollout ends, evenly spread over ``n_timesteps`` rounded up to whole
    rollouts and to at least one rollout per evaluation: exactly ``n_evaluations`` of them,
    whatever the rollout length.
    """
    rollouts = max(math.ceil(n_timesteps / rollout), n_evaluations)
    return [rollout * math.ceil(j * rollouts / n_evaluations) for j in range(1, n_evaluations + 1)]


class TrialEvalCallback(BaseCallback):
    """Evaluate the agent once training reaches each of ``eval_steps`` (checked where a rollout
    starts and when training ends, i.e. after an update), with ``evaluate`` (the figure
    ``stpn_rl.train`` reports); report the mean reward to the trial and stop training if the
    pruner says so. A non-finite mean reward (a diverged agent) raises, failing the trial."""

    def __init__(
        self, trial: optuna.Trial, eval_steps: Sequence[int], evaluate: Callable[[], float]
    ) -> None:
        super().__init__()
        self.trial, self.eval_steps, self.evaluate = trial, list(eval_steps), evaluate
        self.n_evaluations, self.last_mean_reward, self.is_pruned = 0, -math.inf, False

    def _evaluate_if_due(self) -> None:
        due = self.eval_steps[self.n_evaluations :]
        if self.is_pruned or not due or self.num_timesteps < due[0]:
            return
        self.n_evaluations += 1
        self.last_mean_reward = self.evaluate()
        if not math.isfinite(self.last_mean_reward):
            raise FloatingPointError(
                f"diverged: mean reward {self.last_mean_reward} at evaluation "
                f"{self.n_evaluations} ({self.num_timesteps} steps)"
            )
        self.trial.report(self.last_mean_reward, self.n_evaluations)
        self.is_pruned = self.trial.should_prune()

    def _on_rollout_start(self) -> None:
        self._evaluate_if_due()

    def _on_training_end(self) -> None:
        self._evaluate_if_due()

    def _on_step(self) -> bool:
        return not self.is_pruned


def make_objective(options: TuneOptions, base: dict[str, Any]) -> Objective:
    """Train the trial's agent for ``n_timesteps`` (rounded up as :func:`evaluation_steps`
    says; the user attribute ``timesteps`` records the steps trained), evaluating it
    ``n_evaluations`` times on the same ``n_eval_episodes`` episodes (greedy or sampled, as the
    config's ``evaluation`` says); the value is the last mean reward. Trial ``k`` trains with
    seed ``seed + k``."""
    from stpn_rl.evaluate import evaluate_agent

    evaluation = base.get("evaluation", {})
    n_episodes = options.n_eval_episodes or evaluation.get("episodes", 10)

    def objective(trial: optuna.Trial) -> float:
        config = sample_config(trial, base, options.task, options.core)
        seed = (options.seed or 0) + trial.number
        env = make_vec_env(options.task, config["n_envs"], seed, **config["env"])
        model = build_agent(config, options.task, seed=seed, env=env)
        trial.set_user_attr("n_parameters", count_parameters(model))

        def evaluate() -> float:
            result = evaluate_agent(
                model,
                options.task,
                n_episodes,
                evaluation.get("deterministic", False),
                seed=seed + EVAL_SEED_OFFSET,
                env_kwargs=config["env"],
            )
            return result["mean_reward"]

        rollout = model.n_steps * model.n_envs
        steps = evaluation_steps(rollout, options.n_timesteps, options.n_evaluations)
        callback = TrialEvalCallback(trial, steps, evaluate)
        try:
            model.learn(steps[-1], callback=callback)
        finally:
            env.close()
        trial.set_user_attr("timesteps", model.num_timesteps)
        if callback.is_pruned:
            raise optuna.TrialPruned(f"pruned at evaluation {callback.n_evaluations}")
        return callback.last_mean_reward

    return objective
