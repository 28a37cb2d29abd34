"""@forge.job(idempotent=...): paths checked at definition where the input type names its fields, the key taken
from an input, and the keys dispatch stores."""

from __future__ import annotations

import dataclasses
from typing import Any, TypedDict

import msgspec
import pytest

import forge
from forge.errors import DispatchError, JobDefinitionError
from forge.job import registry
from forge.keys import check_key, key_function


class Card(msgspec.Struct):
    last4: str


class Payment(msgspec.Struct):
    payment_id: str
    card: Card


@dataclasses.dataclass
class Refund:
    refund_id: int


class Order(TypedDict):
    order_id: str


@pytest.mark.parametrize(("path", "input_type", "message"), [
    ("input.paymentid", Payment, r"input \(Payment\) has no field 'paymentid'; its fields are payment_id, card"),
    ("input.card.number", Payment, r"input.card \(Card\) has no field 'number'; its fields are last4"),
    ("input.id", Refund, "has no field 'id'"),
    ("input.id", Order, "has no field 'id'"),
    ("payment_id", Payment, "must be a dotted path into the input"),
    ("input", Payment, "must be a dotted path into the input"),
    ("input..x", Any, "must be a dotted path into the input"),
    (42, Any, "must be a dotted path"),
])
def test_a_bad_path_is_refused_at_definition_naming_it(path, input_type, message):
    with pytest.raises(JobDefinitionError, match=message):
        key_function(path, input_type)


def test_the_decorator_refuses_a_bad_path_before_registering():
    with pytest.raises(JobDefinitionError, match="idempotent='input.nope'"):
        @forge.job(name="keys_bad_path", idempotent="input.nope")
        def bad(ctx, input: Payment) -> None: ...
    assert "keys_bad_path" not in registry()


def test_a_path_reads_structs_dataclasses_and_dicts():
    assert key_function("input.card.last4", Payment)(Payment("p", Card("4242"))) == "4242"
    assert key_function("input.refund_id", Refund)(Refund(7)) == 7
    assert key_function("input.order_id", Order)({"order_id": "o1"}) == "o1"
    assert key_function("input.a.b", Any)({"a": {"b": "deep"}}) == "deep"  # not checkable: read at dispatch
    with pytest.raises(DispatchError, match="the input has no 'b'"):
        key_function("input.a.b", dict)({"a": {}})


def test_a_function_is_kept_as_given_and_none_means_no_key():
    def of(value: Any) -> str:
        return "k"

    assert key_function(of, Payment) is of
    assert key_function(None, Payment) is None


@pytest.mark.parametrize(("key", "stored"), [("abc", "abc"), (12, "12"), ("é", "é")])
def test_keys_are_non_empty_text_or_ints(key, stored):
    assert check_key(key, "job 'x'") == stored


@pytest.mark.parametrize("key", ["", None, True, 1.0, b"k", "\ud800"])
def test_other_keys_are_refused(key):
    with pytest.raises(DispatchError, match="job 'x'"):
        check_key(key, "job 'x'")
