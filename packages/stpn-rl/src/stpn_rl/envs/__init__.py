"""Environments of our own, registered with gymnasium on import.

``gymnasium.make("stpn_rl/Maze-v0", size=9)`` gives one agent; :class:`MazeVecEnv` gives many,
stepped together; :class:`MazeOptions` lists the maze's options and their defaults, and
:func:`maze_references` what a random policy and an oracle score on a given maze.
"""

import gymnasium as gym

from stpn_rl.envs.maze import MazeAgents, MazeEnv, MazeOptions, maze_walls
from stpn_rl.envs.references import (
    bfs_distances,
    manhattan_estimate,
    maze_references,
    oracle_reward,
    random_policy_reward,
)
from stpn_rl.envs.vec_maze import MazeVecEnv

MAZE_ID = "stpn_rl/Maze-v0"

if MAZE_ID not in gym.registry:
    gym.register(id=MAZE_ID, entry_point="stpn_rl.envs.maze:MazeEnv")

__all__ = [
    "MAZE_ID",
    "MazeAgents",
    "MazeEnv",
    "MazeOptions",
    "MazeVecEnv",
    "bfs_distances",
    "manhattan_estimate",
    "maze_references",
    "maze_walls",
    "oracle_reward",
    "random_policy_reward",
]
