"""Records: the part of :mod:`dataclasses` varta uses, without what it costs.

``import dataclasses`` pulls in ``inspect``, ``ast``, ``dis`` and ``tokenize``,
and each class it builds compiles generated source, whose working memory stays
behind (~0.4 MB for a 64-field class): together about 2 MB of the daemon's
resident set (``bench/rss.py``; the budget is in
``docs/operations.md#resources``). varta's records need only this:

- ``@record`` / ``@record(frozen=True)`` on a class with annotated fields,
  defaults and :func:`field` (``default``, ``default_factory``, ``compare``,
  ``repr``); bases' fields come first, as in dataclasses;
- ``__init__`` (positional or keyword, a ``default_factory`` runs per
  instance, then ``__post_init__`` if the class has one), ``__repr__``,
  ``__eq__`` over the compared fields, and for frozen records ``__hash__`` and
  a ``__setattr__`` that raises :class:`FrozenInstanceError`;
- :func:`fields` and :func:`replace`.

Type checkers see ``record`` as a dataclass maker (PEP 681
``dataclass_transform``), so mypy checks constructors and frozenness as before.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time (its ~0.5 MB; see above)
if TYPE_CHECKING:
    from typing import Any, TypeVar, dataclass_transform

    _T = TypeVar("_T")
else:

    def dataclass_transform(**_kwargs):
        return lambda decorator: decorator


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


#: No default given (``Field.default`` / ``Field.default_factory``).
MISSING: Any = _Missing()


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen record."""


class Field:
    """One field of a record: its name, default or default factory, and
    whether it takes part in ``==`` and ``repr``."""

    __slots__ = ("compare", "default", "default_factory", "name", "repr")

    def __init__(self, default: Any, default_factory: Any, compare: bool, repr: bool) -> None:
        if default is not MISSING and default_factory is not MISSING:
            raise ValueError("cannot give both default and default_factory")
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.compare = compare
        self.repr = repr

    def __repr__(self) -> str:
        return f"Field(name={self.name!r}, default={self.default!r})"


def field(
    *,
    default: Any = MISSING,
    default_factory: Any = MISSING,
    compare: bool = True,
    repr: bool = True,
) -> Any:
    """A field with more than a plain default (as ``dataclasses.field``)."""
    return Field(default, default_factory, compare, repr)


_FIELDS = "__record_fields__"


def _is_class_var(annotation: object) -> bool:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return text.startswith(("ClassVar", "typing.ClassVar"))


def _collect_fields(cls: type) -> tuple[Field, ...]:
    by_name: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        for f in base.__dict__.get(_FIELDS, ()):
            by_name[f.name] = f
    own = cls.__dict__.get("__annotations__", {})  # noqa: RUF063  (inspect is what this avoids)
    for name, annotation in own.items():
        if _is_class_var(annotation):
            continue
        value = cls.__dict__.get(name, MISSING)
        f = value if isinstance(value, Field) else Field(value, MISSING, True, True)
        f.name = name
        if isinstance(value, Field):  # the class attribute is the default, or nothing
            if f.default is MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, f.default)
        by_name[name] = f
    return tuple(by_name.values())


def _make_init(cls: type, fields: tuple[Field, ...]) -> None:
    # One generic __init__, not generated source: compiling a 64-argument
    # __init__ (WatchConfig) touches ~0.4 MB that stays resident.
    names = tuple(f.name for f in fields)
    known = frozenset(names)
    defaults = {f.name: f.default for f in fields if f.default is not MISSING}
    factories = {f.name: f.default_factory for f in fields if f.default_factory is not MISSING}
    post_init = getattr(cls, "__post_init__", None)
    qualname = cls.__qualname__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(names):
            raise TypeError(f"{qualname}() takes {len(names)} arguments, {len(args)} given")
        if not known.issuperset(kwargs):
            unexpected = sorted(set(kwargs) - known)[0]
            raise TypeError(f"{qualname}() got an unexpected keyword argument {unexpected!r}")
        values = self.__dict__  # set directly: a frozen record's __setattr__ refuses
        for i, name in enumerate(names):
            if i < len(args):
                if name in kwargs:
                    raise TypeError(f"{qualname}() got multiple values for argument {name!r}")
                values[name] = args[i]
            elif name in kwargs:
                values[name] = kwargs[name]
            elif name in defaults:
                values[name] = defaults[name]
            elif name in factories:
                values[name] = factories[name]()
            else:
                raise TypeError(f"{qualname}() missing required argument {name!r}")
        if post_init is not None:
            post_init(self)

    __init__.__qualname__ = f"{qualname}.__init__"
    cls.__init__ = __init__  # type: ignore[misc]


def _values(obj: object, names: tuple[str, ...]) -> tuple[object, ...]:
    return tuple([getattr(obj, n) for n in names])


def _build(cls: type, frozen: bool) -> type:
    fields = _collect_fields(cls)
    setattr(cls, _FIELDS, fields)
    _make_init(cls, fields)
    compared = tuple(f.name for f in fields if f.compare)
    shown = tuple(f.name for f in fields if f.repr)

    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in shown)
        return f"{type(self).__qualname__}({inner})"

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return _values(self, compared) == _values(other, compared)

    if "__repr__" not in cls.__dict__:
        cls.__repr__ = __repr__  # type: ignore[assignment]
    if "__eq__" not in cls.__dict__:
        cls.__eq__ = __eq__  # type: ignore[assignment]
    # __hash__ as dataclasses decides it: a hash the class wrote is kept; a frozen
    # record hashes its compared fields; a mutable one compared by value has none.
    namespace = cls.__dict__
    explicit_hash = namespace.get("__hash__", MISSING) not in (MISSING, None)
    if frozen:

        def __hash__(self: Any) -> int:
            return hash(_values(self, compared))

        def __setattr__(self: Any, name: str, value: object) -> None:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")

        def __delattr__(self: Any, name: str) -> None:
            raise FrozenInstanceError(f"cannot delete field {name!r}")

        if not explicit_hash:
            cls.__hash__ = __hash__  # type: ignore[assignment]
        cls.__setattr__ = __setattr__  # type: ignore[assignment]
        cls.__delattr__ = __delattr__  # type: ignore[assignment]
    elif not explicit_hash:
        cls.__hash__ = None  # type: ignore[assignment]
    return cls


@dataclass_transform(field_specifiers=(field,))
def record(cls: Any = None, /, *, frozen: bool = False) -> Any:
    """Make *cls* a record (``@record`` or ``@record(frozen=True)``)."""
    if cls is None:
        return lambda c: _build(c, frozen)
    return _build(cls, frozen)


def fields(obj: object) -> tuple[Field, ...]:
    """The fields of a record class or instance, in ``__init__`` order."""
    cls = obj if isinstance(obj, type) else type(obj)
    found: tuple[Field, ...] | None = getattr(cls, _FIELDS, None)
    if found is None:
        raise TypeError(f"{cls.__qualname__} is not a record")
    return found


def replace(obj: _T, /, **changes: Any) -> _T:
    """A copy of the record *obj* with *changes* applied."""
    for f in fields(obj):
        changes.setdefault(f.name, getattr(obj, f.name))
    return type(obj)(**changes)
