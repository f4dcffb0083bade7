"""varta._record: the dataclass subset the package uses (docs/operations.md#resources)."""

from __future__ import annotations

from typing import ClassVar

import pytest

from varta._record import FrozenInstanceError, field, fields, record, replace


@record(frozen=True)
class Point:
    x: int
    y: int = 0
    tags: tuple[str, ...] = field(default=(), compare=False)
    KIND: ClassVar[str] = "point"


@record
class Bag:
    items: list[int] = field(default_factory=list)
    hidden: str = field(default="secret", repr=False)


@record(frozen=True)
class Checked:
    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("n must be >= 0")


@record(frozen=True)
class Point3(Point):
    z: int = 0


def test_positional_keyword_and_defaults() -> None:
    assert Point(1, 2) == Point(x=1, y=2) == Point(1, y=2)
    assert Point(5).y == 0
    assert [f.name for f in fields(Point)] == ["x", "y", "tags"]  # ClassVar is no field
    assert Point.KIND == "point"


def test_argument_errors_name_the_argument() -> None:
    with pytest.raises(TypeError, match="missing required argument 'x'"):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'w'"):
        Point(1, w=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="multiple values for argument 'x'"):
        Point(1, x=2)  # type: ignore[misc]
    with pytest.raises(TypeError, match="takes 3 arguments, 4 given"):
        Point(1, 2, (), 4)  # type: ignore[call-arg]


def test_frozen_refuses_assignment_and_hashes_compared_fields() -> None:
    p = Point(1, 2, ("a",))
    with pytest.raises(FrozenInstanceError):
        p.x = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):  # FrozenInstanceError is one, as in dataclasses
        del p.y  # type: ignore[misc]
    assert p == Point(1, 2, ("b",))  # tags: compare=False
    assert hash(p) == hash(Point(1, 2, ("b",)))
    assert {p: 1}[Point(1, 2)] == 1
    assert p != Point(1, 3) and p != (1, 2)


def test_mutable_record_gets_fresh_defaults_and_no_hash() -> None:
    a, b = Bag(), Bag()
    a.items.append(1)
    assert b.items == [] and a != b
    a.items.clear()
    assert a == b
    with pytest.raises(TypeError):
        hash(a)


def test_repr_shows_fields_in_order_but_not_hidden_ones() -> None:
    assert repr(Point(1, 2)) == "Point(x=1, y=2, tags=())"
    assert repr(Bag([3])) == "Bag(items=[3])"


def test_post_init_runs_after_the_fields_are_set() -> None:
    assert Checked(3).n == 3
    with pytest.raises(ValueError, match="n must be >= 0"):
        Checked(-1)


def test_inherited_fields_come_first() -> None:
    p = Point3(1, 2, (), 3)
    assert [f.name for f in fields(p)] == ["x", "y", "tags", "z"]
    assert p.z == 3 and Point3(1, z=4).y == 0


def test_replace_copies_with_changes_and_validates() -> None:
    p = Point(1, 2, ("t",))
    q = replace(p, y=5)
    assert (q.x, q.y, q.tags) == (1, 5, ("t",)) and p.y == 2
    with pytest.raises(ValueError):
        replace(Checked(1), n=-1)
    with pytest.raises(TypeError, match="not a record"):
        fields(object())
