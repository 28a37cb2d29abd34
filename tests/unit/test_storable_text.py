"""Text a job hands back, made storable by the worker before it is encoded (protocol.storable, error_payload)."""

from __future__ import annotations

import msgspec

from forge.supervisor.protocol import MAX_TEXT, error_payload, storable


def test_nul_and_unpaired_surrogates_become_the_replacement_character():
    assert storable("a\x00b\x00") == "a\ufffdb\ufffd"
    assert storable("x\ud800y\udfff") == "x\ufffdy\ufffd"
    assert storable("h\u00e9llo \U0001f600") == "h\u00e9llo \U0001f600"  # paired and non-ASCII text is kept
    assert storable("plain") == "plain"


def test_long_text_is_cut_keeping_its_start_or_its_end():
    text = "s" + "x" * MAX_TEXT + "e"
    head = storable(text)
    assert head.startswith("s") and head.endswith(" [2 characters cut]") and len(head) < MAX_TEXT + 30
    tail = storable(text, keep_end=True)
    assert tail.startswith("[2 characters cut]\n") and tail.endswith("e")
    assert storable("y" * MAX_TEXT) == "y" * MAX_TEXT


def test_error_payloads_are_storable_json():
    payload = msgspec.json.decode(error_payload("Bad\x00Type", "m\ud800", 2, "tb\x00"))
    assert payload == {"type": "Bad\ufffdType", "message": "m\ufffd", "traceback": "tb\ufffd", "attempt": 2}
    assert b"\\u0000" not in error_payload("T", "\x00", 1)
    assert msgspec.json.decode(error_payload("T", "m", 1))["traceback"] is None
