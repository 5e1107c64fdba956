"""The STPN paper's maze algorithm ("a2c-bptt"), as a stable-baselines3 algorithm.

It is Miconi's "A2C": REINFORCE with a learned value baseline and Monte-Carlo returns. All
environments run one whole episode together, then one optimiser step follows, with
backpropagation through the whole episode:

- returns ``R_t = r_t + γ R_{t+1}`` from ``R_T = 0`` (no bootstrap), ``γ = 0.9``;
- loss ``mean_{b,t}[ c_s Σ_a π_{b,t,a}² − log π(a_{b,t}) sg(R_{b,t} − V_{b,t})
  + c_v (R_{b,t} − V_{b,t})² ]``: the squared-probability (Simpson) penalty with
  ``c_s = 0.03`` keeps the policy from collapsing, the value loss weighs ``c_v = 0.1``;
- Adam (lr 1e-4, eps 1e-4), gradients clipped to global norm 4.0.

Two departures from the original code, on purpose: each agent's advantage uses its own value
``V_{b,t}`` (the original broadcast agent 0's value to the whole batch), and there is no burn-in
(the original skipped the optimiser step for the first 101 episodes).

Why roll out, then replay: once the actions are sampled, the inputs of the episode (observation,
previous reward and action) no longer depend on the parameters. So the rollout steps the core one
step at a time without gradients (cheap), recording the inputs, and the loss is taken on a replay
of the recorded inputs through the core's whole-sequence path with gradients; for the STPN that
is the fast path with its hand-derived backward instead of autograd over 200 single steps.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.type_aliases import MaybeCallback
from stable_baselines3.common.utils import update_learning_rate
from stable_baselines3.common.vec_env import VecEnv
from torch import Tensor

from stpn_rl.bptt_policy import SequencePolicy, choose_actions


class Episode(NamedTuple):
    """One episode of every environment, batch-major."""

    observations: Tensor  # (B, T, I): the core's inputs, as the rollout fed them
    actions: Tensor  # (B, T) int64
    rewards: Tensor  # (B, T)
    logits: Tensor  # (B, T, A): the action logits the rollout sampled from


def discounted_returns(rewards: Tensor, gamma: float) -> Tensor:
    """Monte-Carlo returns ``R_t = r_t + γ R_{t+1}``, ``R_T = 0``, of ``rewards`` ``(B, T)``."""
    returns = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return returns


def a2c_loss(
    logits: Tensor,
    values: Tensor,
    actions: Tensor,
    returns: Tensor,
    simpson_coef: float,
    value_coef: float,
) -> tuple[Tensor, dict[str, float]]:
    """The episode loss (module docstring), means over agents and steps, and its parts."""
    log_probs = logits.log_softmax(dim=-1)
    chosen = log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    advantage = returns - values
    policy_loss = -(chosen * advantage.detach()).mean()
    value_loss = advantage.square().mean()
    simpson = log_probs.exp().square().sum(dim=-1).mean()
    loss = policy_loss + value_coef * value_loss + simpson_coef * simpson
    parts = {"policy_loss": policy_loss, "value_loss": value_loss, "simpson": simpson}
    return loss, {name: float(value.detach()) for name, value in parts.items()}


class A2CBPTT(BaseAlgorithm):
    """Whole-episode BPTT actor-critic over a vectorised environment whose episodes all end at
    the same step (the maze: every agent runs ``episode_length`` steps).

    ``num_timesteps`` counts agent-steps, as for PPO. Each episode is a rollout of ``n_steps``
    steps: callbacks see ``on_rollout_start`` before it and ``on_step`` once after its update,
    so a checkpoint always falls between episodes (``stpn_rl.checkpoints`` then saves all a
    resumed run needs: actions are sampled from torch's global generator, which it keeps).

    Args:
        policy: :class:`~stpn_rl.bptt_policy.SequencePolicy` (or a subclass).
        env: the environments (e.g. ``stpn_rl.tasks.make_vec_env("maze", 512, seed)``).
        learning_rate, gamma, simpson_coef, value_coef, max_grad_norm: see the module docstring.
        policy_kwargs: for the policy (``core``, ``hidden_size``, ``core_options``, ...).
        n_steps: steps of every episode (``None``: learnt from the first one); an episode of
            another length raises ``ValueError``.
    """

    policy: SequencePolicy

    def __init__(
        self,
        policy: type[SequencePolicy],
        env: VecEnv | None,
        learning_rate: float = 1e-4,
        gamma: float = 0.9,
        simpson_coef: float = 0.03,
        value_coef: float = 0.1,
        max_grad_norm: float = 4.0,
        policy_kwargs: dict[str, Any] | None = None,
        n_steps: int | None = None,
        tensorboard_log: str | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        for name, value in (("gamma", gamma), ("simpson_coef", simpson_coef),
                            ("value_coef", value_coef), ("max_grad_norm", max_grad_norm)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name}: expected a non-negative number, got {value!r}")
        if gamma > 1:
            raise ValueError(f"gamma: expected a number in [0, 1], got {gamma!r}")
        if env is not None and not isinstance(env.action_space, spaces.Discrete):
            raise ValueError(f"env: expected a Discrete action_space, got {env.action_space}")
        super().__init__(
            policy,
            env,
            learning_rate,
            policy_kwargs=policy_kwargs,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            support_multi_env=True,
            seed=seed,
            supported_action_spaces=(spaces.Discrete,),
        )
        self.gamma, self.simpson_coef, self.value_coef = gamma, simpson_coef, value_coef
        self.max_grad_norm, self.n_steps = max_grad_norm, n_steps
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(
            self.observation_space, self.action_space, self.lr_schedule, **self.policy_kwargs
        ).to(self.device)

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        return ["policy", "policy.optimizer"], []

    # -- one episode -------------------------------------------------------------------------

    @torch.no_grad()
    def collect_episode(self) -> Episode:
        """Run every environment through one episode, one step of the core at a time, without
        gradients, sampling the actions."""
        assert self.env is not None
        self.policy.set_training_mode(False)
        obs, state = self.env.reset(), None
        inputs, actions, rewards, logits = [], [], [], []
        while True:
            x = torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(1)
            step_logits, _, state = self.policy(x, state)
            action = choose_actions(step_logits[:, 0], False, None)
            obs, reward, dones, _ = self.env.step(action.cpu().numpy())
            inputs.append(x[:, 0])
            actions.append(action)
            rewards.append(torch.as_tensor(reward, dtype=torch.float32))
            logits.append(step_logits[:, 0])
            if dones.any():
                if not dones.all():
                    raise ValueError(
                        "env: a2c-bptt needs environments whose episodes all end at the same step"
                    )
                break
        if self.n_steps is None:
            self.n_steps = len(actions)
        elif len(actions) != self.n_steps:
            raise ValueError(f"env: an episode of {len(actions)} steps, expected {self.n_steps}")
        return Episode(
            torch.stack(inputs, 1),
            torch.stack(actions, 1),
            torch.stack(rewards, 1).to(self.device),
            torch.stack(logits, 1),
        )

    def episode_loss(self, episode: Episode) -> tuple[Tensor, dict[str, float]]:
        """The loss of ``episode``, replayed through the core's whole-sequence path with
        gradients (the inputs are the recorded ones, so the outputs are the rollout's)."""
        self.policy.set_training_mode(True)
        logits, values, _ = self.policy(episode.observations)
        returns = discounted_returns(episode.rewards, self.gamma)
        return a2c_loss(
            logits, values, episode.actions, returns, self.simpson_coef, self.value_coef
        )

    def train_episode(self, episode: Episode) -> dict[str, float]:
        """One optimiser step on ``episode``; returns the loss parts and the gradient norm."""
        learning_rate = self.lr_schedule(self._current_progress_remaining)
        update_learning_rate(self.policy.optimizer, learning_rate)
        loss, parts = self.episode_loss(episode)
        self.policy.optimizer.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
        self.policy.optimizer.step()
        self._n_updates += 1
        totals = {"loss": float(loss.detach()), "grad_norm": float(norm)}
        return parts | totals | {"learning_rate": learning_rate}

    def learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 10,
        tb_log_name: str = "A2CBPTT",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> A2CBPTT:
        """Train until ``total_timesteps`` agent-steps (whole episodes, so possibly a few more);
        log means over every ``log_interval`` episodes of the run (and at the end). Callbacks
        returning ``False`` stop training after the current episode."""
        total_timesteps, callback = self._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar
        )
        callback.on_training_start(locals(), globals())
        started = time.perf_counter()
        while self.num_timesteps < total_timesteps:
            callback.on_rollout_start()
            episode = self.collect_episode()
            parts = self.train_episode(episode)
            self.num_timesteps += episode.actions.numel()
            self._episode_num += episode.actions.shape[0]
            self._update_current_progress_remaining(self.num_timesteps, total_timesteps)
            self.logger.record_mean("rollout/ep_rew_mean", float(episode.rewards.sum(1).mean()))
            for name, value in parts.items():
                self.logger.record_mean(f"train/{name}", value)
            if self._n_updates % log_interval == 0 or self.num_timesteps >= total_timesteps:
                seconds = time.perf_counter() - started
                self.logger.record("time/total_timesteps", self.num_timesteps)
                self.logger.record("time/episodes", self._episode_num)
                self.logger.record("time/fps", int((self.num_timesteps
                                                    - self._num_timesteps_at_start) / seconds))
                self.logger.record("train/n_updates", self._n_updates)
                self.logger.dump(step=self.num_timesteps)
            callback.update_locals(locals())
            if not callback.on_step():
                break
        callback.on_training_end()
        return self
