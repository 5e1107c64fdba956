"""Environments of our own, registered with gymnasium on import.

``gymnasium.make("stpn_rl/Maze-v0", size=9)`` gives one agent; :class:`MazeVecEnv` gives many,
stepped together.
"""

import gymnasium as gym

from stpn_rl.envs.maze import MazeAgents, MazeEnv, maze_walls
from stpn_rl.envs.vec_maze import MazeVecEnv

MAZE_ID = "stpn_rl/Maze-v0"

if MAZE_ID not in gym.registry:
    gym.register(id=MAZE_ID, entry_point="stpn_rl.envs.maze:MazeEnv")

__all__ = ["MAZE_ID", "MazeAgents", "MazeEnv", "MazeVecEnv", "maze_walls"]
