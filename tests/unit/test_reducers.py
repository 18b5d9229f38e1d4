"""Reducers: streaming, order-independent where promised, partial while running."""

from __future__ import annotations

import csv
import io
import json
import math
import random
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.reducers import ReducerError, make_reducer, results_to_csv, results_to_json, shell_value


def feed(name: str | None, values: dict[int, object]) -> object:
    reducer = make_reducer(name)
    for index, value in values.items():
        reducer.add(index, value)
    return reducer.result()


def test_builtins_on_values_arriving_out_of_order():
    values = {2: 5, 0: 3, 1: -1}
    assert feed("collect", values) == [3, -1, 5]
    assert feed("count", values) == 3
    assert feed("sum", values) == 7
    assert (feed("min", values), feed("max", values)) == (-1, 5)
    assert feed("concat", {1: "b", 0: "a", 2: "c"}) == "abc"
    assert feed("concat", {1: [3], 0: [1, 2]}) == [1, 2, 3]
    assert feed(None, values) is None


def test_empty_results():
    assert [feed(name, {}) for name in ("collect", "count", "sum", "min", "max", "merge-counts")] == [[], 0, 0, None, None, {}]


def test_partial_results_while_running_then_final():
    reducer = make_reducer("collect")
    reducer.add(3, "d")
    reducer.add(1, "b")
    assert reducer.result() == ["b", "d"]
    reducer.add(0, "a")
    reducer.add(2, "c")
    assert reducer.result() == ["a", "b", "c", "d"]
    total = make_reducer("sum")
    total.add(0, 2)
    assert total.result() == 2
    total.add(1, 0.5)
    assert total.result() == 2.5


def test_merge_counts_takes_dicts_lists_and_text_and_ranks_largest_first():
    result = feed("merge-counts", {0: {"the": 2, "fish": 1}, 1: ["fish", "fish"], 2: "the tide\nthe quay"})
    assert result == {"the": 4, "fish": 3, "quay": 1, "tide": 1}
    assert list(result) == ["the", "fish", "quay", "tide"]


@pytest.mark.parametrize(
    "name,values,words",
    [
        ("sum", {0: 1, 3: "12"}, "reduce 'sum': task 3 gave '12' (str), not a number"),
        ("sum", {0: True}, "not a number"),
        ("min", {0: 1, 1: "a"}, "cannot be compared"),
        ("concat", {0: "a", 1: [1]}, "earlier tasks gave strs"),
        ("concat", {0: 5}, "not a string or a list"),
        ("merge-counts", {0: {"a": "x"}}, "is not a number"),
        ("merge-counts", {0: [[1]]}, "cannot be a key"),
        ("merge-counts", {0: 3}, "not a dict of counts"),
    ],
)
def test_a_value_the_reducer_cannot_take_is_a_clear_error_and_changes_nothing(name, values, words):
    reducer = make_reducer(name)
    *good, (bad_index, bad) = values.items()
    for index, value in good:
        reducer.add(index, value)
    before = reducer.result()
    with pytest.raises(ReducerError, match=words.replace("(", r"\(").replace(")", r"\)")):
        reducer.add(bad_index, bad)
    assert reducer.result() == before


@pytest.mark.parametrize(
    "name,words",
    [
        ("average", "unknown reducer 'average': use one of collect"),
        ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
        ("math:no_such_fn", "'math' has no 'no_such_fn'"),
        ("math:pi", "neither a class nor a function"),
        ("builtins:int", "needs add(index, value) and result()"),
    ],
)
def test_bad_reducer_names_are_refused(name, words):
    with pytest.raises(ReducerError, match=words.replace("(", r"\(").replace(")", r"\)")):
        make_reducer(name)


def test_module_reducers_class_streams_and_function_sees_values_in_order():
    assert feed("demos.tasks:LongestChain", {0: [1, 0], 5: [6, 8], 26: [27, 111], 8: [9, 19]}) == {"n": 27, "steps": 111}
    median = make_reducer("statistics:median")
    median.add(2, 10)
    median.add(0, 1)
    assert median.result() == 5.5
    median.add(1, 2)
    assert median.result() == 2


def exact_sum(values: list[int | float]) -> int | float:
    """The oracle: the exact rational sum, rounded once (int / int is
    correctly rounded), so it is never weaker than the reducer it checks."""
    if all(type(v) is int for v in values):
        return sum(values)
    total = sum((Fraction(v) for v in values), Fraction(0))
    try:
        return total.numerator / total.denominator
    except OverflowError:  # beyond the largest float, as IEEE rounds it
        return math.inf if total > 0 else -math.inf


@given(
    st.lists(st.integers(-(10**20), 10**20) | st.floats(allow_nan=False, allow_infinity=False), max_size=40),
    st.randoms(),
)
def test_sum_is_the_exact_sum_rounded_once_in_any_finish_order(values, rng):
    expected = exact_sum(values)
    order = list(enumerate(values))
    rng.shuffle(order)
    reducer = make_reducer("sum")
    for index, value in order:
        reducer.add(index, value)
    assert type(reducer.result()) is type(expected)
    assert reducer.result() == expected


@pytest.mark.parametrize(
    "values,expected",
    [
        ([2**53 + 1, 0.5], 9007199254740994.0),  # an int total rounded first gave ...992.0
        ([99999978999999774746, -99999971999999754299, 0.0], 7000000020447.0),  # math.fsum says ...480.0
        ([1e308, 1e308, -1e308], 1e308),  # no intermediate overflow
        ([0.1] * 10, 1.0),
        ([10**400, 0.5], math.inf),  # too big for a float: inf, like float(10**400 + 0.5) would overflow
        ([5e-324, -5e-324, 3], 3.0),
    ],
)
def test_sum_rounds_only_once(values, expected):
    assert feed("sum", dict(enumerate(values))) == expected


@given(st.lists(st.floats(-1e9, 1e9, allow_nan=False), min_size=2, max_size=30))
def test_float_sum_is_bit_identical_across_orders(values):
    first, second = make_reducer("sum"), make_reducer("sum")
    for index, value in enumerate(values):
        first.add(index, value)
    for index, value in random.Random(len(values)).sample(list(enumerate(values)), len(values)):
        second.add(index, value)
    assert first.result() == second.result() == exact_sum(values)


@given(st.dictionaries(st.integers(0, 1000), st.integers()))
def test_collect_is_index_order_whatever_the_add_order(values):
    assert feed("collect", values) == [values[i] for i in sorted(values)]


def test_non_finite_floats_sum_like_python():
    assert feed("sum", {0: 1.0, 1: math.inf}) == math.inf
    assert math.isnan(feed("sum", {0: math.inf, 1: -math.inf}))


@pytest.mark.parametrize(
    "stdout,value",
    [
        (b"42\n", 42),
        (b"  [1, 2]  ", [1, 2]),
        (b'{"a": 1}\n', {"a": 1}),
        (b"hello world\n", "hello world"),
        (b"", ""),
        (b"\xff\xfeok\n", "\ufffd\ufffdok"),
        (b"1\n2\n", "1\n2"),
    ],
)
def test_shell_value_is_json_when_it_parses_else_text(stdout, value):
    assert shell_value(stdout) == value


ROWS = [
    {"index": 0, "status": "succeeded", "attempts": 1, "node": "n1:1", "value": {"a": 1}, "error": "", "duration": 0.5},
    {"index": 1, "status": "failed", "attempts": 3, "node": "n2:1", "value": None, "error": "ValueError: no", "duration": None},
]


def test_results_export_as_json_and_csv_with_items():
    data = json.loads(results_to_json(ROWS, items=["x.txt", "y.txt"]))
    assert data[0] == {"index": 0, "item": "x.txt", "status": "succeeded", "value": {"a": 1}, "error": "",
                       "node": "n1:1", "attempts": 1, "duration": 0.5}  # fmt: skip
    table = list(csv.reader(io.StringIO(results_to_csv(ROWS, items=["x.txt", "y.txt"]))))
    assert table[0] == ["index", "item", "status", "value", "error", "node", "attempts", "duration"]
    assert table[1] == ["0", "x.txt", "succeeded", '{"a": 1}', "", "n1:1", "1", "0.5"]
    assert table[2] == ["1", "y.txt", "failed", "", "ValueError: no", "n2:1", "3", ""]
