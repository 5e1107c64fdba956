"""RecurrentPPO with a rollout buffer that stores a :class:`~stpn_rl.policies.CorePolicy`'s
recurrent state once.

sb3-contrib's buffer keeps four state arrays, ``(h, c)`` of the actor and of the critic, each
copied twice per step, transposed and copied again before training, and indexed over the
whole minibatch to pick the few rows where sequences start. With the ``shared`` or ``detached``
critic the critic's state *is* the actor's, so half of that is a second copy of the same
numbers (for an STPN of 129 units on 4 inputs, 4 × 8 643 floats per env-step instead of 2).
:class:`CoreRolloutBuffer` stores the actor's state (and the critic's only when it has its
own core) once per step, in rollout order, and reads only the rows where sequences start. The
samples it yields are those of the stock buffer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.buffers import RecurrentRolloutBuffer
from sb3_contrib.common.recurrent.type_aliases import RecurrentRolloutBufferSamples, RNNStates
from stable_baselines3.common.buffers import RolloutBuffer

from stpn_rl.policies import CorePolicy


class CoreRolloutBuffer(RecurrentRolloutBuffer):
    """A ``RecurrentRolloutBuffer`` that stores each recurrent state once.

    Args:
        separate_critic: whether the critic has its own core (and state) to store.
        (the others as ``RecurrentRolloutBuffer``'s)
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: Any,
        action_space: Any,
        hidden_state_shape: tuple[int, int, int, int],
        device: torch.device | str = "auto",
        gae_lambda: float = 1,
        gamma: float = 0.99,
        n_envs: int = 1,
        *,
        separate_critic: bool = False,
    ) -> None:
        if hidden_state_shape[1] != 1:
            raise ValueError("hidden_state_shape: CorePolicy's cores have one layer")
        # (steps, envs, h/c slot, width): one sample's state is one contiguous row
        self.state_shape = (buffer_size, n_envs, 2, hidden_state_shape[-1])
        self.separate_critic = separate_critic
        # The parent's four state arrays are kept empty (zero width), so its own bookkeeping
        # over them costs nothing.
        super().__init__(
            buffer_size, observation_space, action_space, (*hidden_state_shape[:3], 0),
            device, gae_lambda, gamma, n_envs,
        )

    def reset(self) -> None:
        super().reset()
        # Allocated once and reused: every row is written before it is read, and fresh memory
        # costs a page fault per 4 KiB at first touch (200 MB per rollout at the maze size).
        if not hasattr(self, "states_pi"):
            self.states_pi = np.zeros(self.state_shape, dtype=np.float32)
            self.states_vf = (
                np.zeros(self.state_shape, dtype=np.float32) if self.separate_critic else None
            )

    def add(self, *args: Any, lstm_states: RNNStates, **kwargs: Any) -> None:
        """Store the step's states (one copy each) and the rest as ``RolloutBuffer`` does."""
        for store, slots in ((self.states_pi, lstm_states.pi), (self.states_vf, lstm_states.vf)):
            if store is not None:
                store[self.pos, :, 0] = slots[0][0].cpu().numpy()
                store[self.pos, :, 1] = slots[1][0].cpu().numpy()
        RolloutBuffer.add(self, *args, **kwargs)

    def _get_samples(
        self, batch_inds: np.ndarray, env_change: np.ndarray, env: Any = None
    ) -> RecurrentRolloutBufferSamples:
        samples = super()._get_samples(batch_inds, env_change, env)
        # The parent's flat order is env-major: index = env * n_steps + step.
        env_index, step = np.divmod(batch_inds[self.seq_start_indices], self.buffer_size)
        states_pi = self._slots(self.states_pi, step, env_index)
        states_vf = (
            states_pi if self.states_vf is None else self._slots(self.states_vf, step, env_index)
        )
        return samples._replace(lstm_states=RNNStates(states_pi, states_vf))

    def _slots(
        self, store: np.ndarray, step: np.ndarray, env_index: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.to_torch(store[step, env_index])  # (n_seq, 2, width): the rows needed only
        return rows[:, 0].unsqueeze(0).contiguous(), rows[:, 1].unsqueeze(0).contiguous()


class CoreRecurrentPPO(RecurrentPPO):
    """``RecurrentPPO`` that gives a :class:`CorePolicy` a :class:`CoreRolloutBuffer`; any
    other policy keeps the stock buffer. Saved agents load with either class."""

    def _setup_model(self) -> None:
        super()._setup_model()
        stock = self.rollout_buffer
        if isinstance(self.policy, CorePolicy) and type(stock) is RecurrentRolloutBuffer:
            self.rollout_buffer = CoreRolloutBuffer(
                self.n_steps, self.observation_space, self.action_space,
                stock.hidden_state_shape, self.device, gamma=self.gamma,
                gae_lambda=self.gae_lambda, n_envs=self.n_envs,
                separate_critic=self.policy.lstm_critic is not None,
            )
