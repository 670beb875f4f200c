"""
Loggers whose namespace is chosen, not derived from the class.

The login log (C{boatwist.login}) and the access log (C{boatwist.access})
are routed and searched by namespace, so they must keep the one they were
given.
"""

from __future__ import annotations

from twisted.logger import Logger

__all__ = ["NamespacedLogger"]


class NamespacedLogger(Logger):
    """
    A class-level L{Logger} that keeps the namespace it was given:
    L{Logger.__get__} would rename it after the class it is an attribute of.
    """

    def __get__(self, instance: object, owner: type | None = None) -> Logger:
        return self.__class__(self.namespace, instance if instance is not None else owner, observer=self.observer)
