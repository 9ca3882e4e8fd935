"""Legged and planar locomotion on MuJoCo: the DeepMind Control Suite tasks (see README.md)."""
