"""Core building blocks shared by models: the serializable :class:`Module` base."""

from hpcdiff.core.module import Module

__all__ = ["Module"]
