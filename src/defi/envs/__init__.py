"""Simulator wrappers behind one small interface (reset / step / observation dicts in the Policy API format)."""

from defi.envs.metaworld import MT10, MetaWorldEnv, all_tasks, resolve_tasks

__all__ = ["MT10", "MetaWorldEnv", "all_tasks", "resolve_tasks"]
