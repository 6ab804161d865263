"""Methods stated once and reached from elsewhere: blocking twins and forwards.

A blocking :class:`~butler.butler.Butler` offers the coroutines of its reader (the read path
of :class:`~butler.reading.Reader`, a remote client's queries and writes) as ordinary methods,
and a backend that hands a method to another object (a mirrored butler's queries to the
remote, its writes too) does not restate its signature: ``get = blocking(Reader.get)``,
``put = forwarded(WritableButler.put, "remote")``. A type checker sees the exact signature of
the method named (``typing.ParamSpec``), ``dir()`` and ``help()`` see the method, and the
signature exists in one place.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, Self, TypeVar, overload

P = ParamSpec("P")
T = TypeVar("T")


class RunsReads(Protocol):
    """What a blocking twin needs of its owner: run a coroutine of its reader to the end."""

    def _read(self, call: Callable[[Any], Coroutine[Any, Any, T]]) -> T: ...


def run_in_place(coro: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never waits (a local backend's primitives do their
    I/O synchronously), without an event loop: one step runs it to its end."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError(f"{coro!r} waited on an event loop; run it with await instead")


def _bound_signature(method: Callable[..., Any]) -> inspect.Signature:
    signature = inspect.signature(method)
    parameters = list(signature.parameters.values())[1:]  # without ``self``
    return signature.replace(parameters=parameters)


class _Stated(Generic[P, T]):
    """A class attribute standing for a method stated elsewhere (see the subclasses)."""

    def __init__(self, method: Callable[Concatenate[Any, P], Any]) -> None:
        self.method = method
        self.name = method.__name__
        self.__doc__ = method.__doc__
        self._signature = _bound_signature(method)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def _target(self, obj: Any) -> Callable[P, Any]:
        raise NotImplementedError  # pragma: no cover - each subclass says

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Self: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> Callable[P, T]: ...
    def __get__(self, obj: object, owner: type | None = None) -> Any:
        if obj is None:
            return self
        call = self._target(obj)
        functools.update_wrapper(call, self.method)
        call.__signature__ = self._signature  # type: ignore[attr-defined]
        del call.__wrapped__  # type: ignore[attr-defined] # the signature above, not its self
        return call


class blocking(_Stated[P, T]):  # noqa: N801 - used like a decorator
    """The blocking twin of a reader's coroutine method: the owner (a blocking butler) runs
    ``getattr(its reader, name)(...)`` to the end and returns its result."""

    def __init__(self, method: Callable[Concatenate[Any, P], Coroutine[Any, Any, T]]) -> None:
        super().__init__(method)

    def _target(self, obj: Any) -> Callable[P, Any]:
        name = self.name
        owner: RunsReads = obj

        def call(*args: P.args, **kwargs: P.kwargs) -> Any:
            return owner._read(lambda reader: getattr(reader, name)(*args, **kwargs))

        return call


class forwarded(_Stated[P, T]):  # noqa: N801 - used like a decorator
    """A method answered by another object: ``to`` names the owner's method that gives it
    (called at each use, so the other object may be connected lazily or change)."""

    def __init__(self, method: Callable[Concatenate[Any, P], T], to: str) -> None:
        super().__init__(method)
        self.to = to

    def _target(self, obj: Any) -> Callable[P, Any]:
        name, to = self.name, self.to

        def call(*args: P.args, **kwargs: P.kwargs) -> Any:
            return getattr(getattr(obj, to)(), name)(*args, **kwargs)

        return call
