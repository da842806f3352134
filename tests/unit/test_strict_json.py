"""The JSON rule both doors apply (shared.strict_json): JSON only, no non-finite numbers, no
duplicate keys — on random documents as well as the known corner cases."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.strict_json import MAX_DEPTH, JsonRuleError, loads

# A JSON document as a tree whose objects are lists of (key, value) pairs, so that a key may
# repeat: rendered to text exactly as written, duplicates included.
Tree = Any
scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8))
keys = st.text(alphabet="abcé\"\\\n", max_size=3)
trees: st.SearchStrategy[Tree] = st.recursive(
    scalars,
    lambda inner: (st.lists(inner, max_size=4).map(lambda items: ("array", items))
                   | st.lists(st.tuples(keys, inner), max_size=4).map(
                       lambda pairs: ("object", pairs))),
    max_leaves=20,
)


def render(tree: Tree) -> str:
    if isinstance(tree, tuple) and tree[0] == "array":
        return "[" + ",".join(render(item) for item in tree[1]) + "]"
    if isinstance(tree, tuple) and tree[0] == "object":
        return "{" + ",".join(f"{json.dumps(k)}:{render(v)}" for k, v in tree[1]) + "}"
    return json.dumps(tree)


def has_duplicates(tree: Tree) -> bool:
    if isinstance(tree, tuple) and tree[0] == "array":
        return any(has_duplicates(item) for item in tree[1])
    if isinstance(tree, tuple) and tree[0] == "object":
        names = [k for k, _ in tree[1]]
        return len(set(names)) < len(names) or any(has_duplicates(v) for _, v in tree[1])
    return False


def plain(tree: Tree) -> Any:
    if isinstance(tree, tuple) and tree[0] == "array":
        return [plain(item) for item in tree[1]]
    if isinstance(tree, tuple) and tree[0] == "object":
        return {k: plain(v) for k, v in tree[1]}
    return tree


def code_of(body: bytes) -> str | None:
    try:
        loads(body)
    except JsonRuleError as exc:
        return exc.code
    return None


@given(trees)
def test_a_document_is_refused_exactly_when_an_object_repeats_a_key(tree: Tree) -> None:
    body = render(tree).encode()
    if has_duplicates(tree):
        with pytest.raises(JsonRuleError) as caught:
            loads(body)
        assert caught.value.code == "duplicate_key"
    else:
        assert loads(body) == plain(tree)


@given(trees, st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1E400",
                               "1" + "0" * 400]), st.data())
def test_a_non_finite_number_anywhere_is_refused(tree: Tree, bad: str, data: st.DataObject
                                                 ) -> None:
    # put the bad number in place of one value of a duplicate-free document (or as a value of
    # a new outer array around it)
    text = render(tree)
    if has_duplicates(tree):
        text = "[]"
    spot = data.draw(st.sampled_from(["before", "after", "object"]))
    body = {"before": f"[{bad},{text}]", "after": f"[{text},{bad}]",
            "object": f'{{"x":{text},"n":{bad}}}'}[spot].encode()
    assert code_of(body) == "non_finite_number", body[:80]


@pytest.mark.parametrize(("body", "code"), [
    (b'{"a":1,"a":1}', "duplicate_key"),  # even with the same value
    (b'{"a":{"b":1,"b":2}}', "duplicate_key"),
    (b'[{"a":1},{"b":2,"a":3,"b":4}]', "duplicate_key"),
    (b'{"\\u0061":1,"a":2}', "duplicate_key"),  # an escaped spelling is the same key
    (b'{"a":NaN}', "non_finite_number"), (b'{"a":[Infinity]}', "non_finite_number"),
    (b'{"a":-Infinity}', "non_finite_number"), (b'{"a":1e999}', "non_finite_number"),
    (b'{"a":"\\ud800"}', "invalid_json"),  # a lone surrogate
    (b'{"a":nan}', "invalid_json"), (b"{not json", "invalid_json"), (b"", "invalid_json"),
    (b'{"a":1} {"b":2}', "invalid_json"), (b"\xff\xfe{}", "invalid_json"),
    (b"[" * (MAX_DEPTH + 2) + b"]" * (MAX_DEPTH + 2), "invalid_json"),
    (b"{\"a\":" * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1), "invalid_json"),
    (b'{"a":1,"b":{"a":2}}', None),  # the same key in two objects is fine
    (b'{"a":1.7976931348623157e308,"b":-5e-324}', None),
    (b'{"big":123456789012345678901234567890}', None),
    (b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, None),
    (b"{\"a\":" * MAX_DEPTH + b"1" + b"}" * MAX_DEPTH, None),
])
def test_known_cases(body: bytes, code: str | None) -> None:
    assert code_of(body) == code


def test_the_refusal_names_the_duplicate_key_and_where() -> None:
    with pytest.raises(JsonRuleError) as caught:
        loads(b'{"event":"a.b","data":{},\n"event":"admin.x"}')
    assert caught.value.code == "duplicate_key"
    assert "'event'" in caught.value.message and "line 2" in caught.value.message
    with pytest.raises(JsonRuleError) as long_key:
        loads(b'{"' + b"k" * 500 + b'":1,"' + b"k" * 500 + b'":2}')
    assert len(long_key.value.message) < 200
