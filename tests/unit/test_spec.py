"""Job files and JobSpec: parsing, errors that name file/line/field, lazy items."""

from __future__ import annotations

import json
import shlex
import subprocess
import tracemalloc
from pathlib import Path

import msgpack
import pytest

from engine.reducers import make_reducer, shell_value
from engine.spec import JobSpec, SpecError, load_job_file, parse_duration, parse_job_text
from nodeagent.protocol import TaskSpec

JOBS = Path(__file__).resolve().parents[2] / "demos" / "jobs"


def write(tmp_path: Path, text: str, name: str = "bad.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_squares_job_file_expands_to_1000_argvs_summing_to_333833500():
    spec = load_job_file(JOBS / "squares.toml")
    assert (spec.name, spec.kind, spec.reduce, spec.retries, spec.timeout) == ("squares", "shell", "sum", 2, 30.0)
    assert spec.task_count() == 1000
    reducer = make_reducer(spec.reduce)
    for index in range(spec.task_count()):
        fields = spec.task_fields(index)
        n = index + 1
        assert fields["argv"] == ["expr", str(n), "*", str(n)]
        assert fields["timeout"] == 30.0
        TaskSpec(id=f"1.{index}.1", kind=spec.kind, **fields).to_wire()  # the engine's use
        out = subprocess.run(fields["argv"], capture_output=True, check=True).stdout  # the task's program
        reducer.add(index, shell_value(out))
    assert reducer.result() == 333833500


@pytest.mark.parametrize("name", sorted(p.name for p in JOBS.glob("*.toml")))
def test_every_demo_job_file_loads(name):
    spec = load_job_file(JOBS / name)
    assert spec.task_count() > 0
    spec.task_fields(0)


# (file text, line of the mistake, field the message names, words it contains)
BAD_FILES = [
    ('name = "x"\ncommand = ["echo", "{item}"]\nitems = [1, 2]\ntimeout = "soon"\n', 4, "timeout", 'expected a duration like "30s", got "soon"'),
    ('name = 3\ncommand = ["true"]\ncount = 1\n', 1, "name", "non-empty string"),
    ('name = "x"\ncommand = "echo hi"\ncount = 1\n', 2, "command", "list of strings"),
    ('name = "x"\ncommand = []\ncount = 1\n', 2, "command", "non-empty list"),
    ('name = "x"\ncommand = ["echo", "{itme}"]\ncount = 1\n', 2, "command", "unknown placeholder {itme} (did you mean {item}?)"),
    ('name = "x"\n\nshell = "awk \'{print $1}\' {item}"\ncount = 1\n', 3, "shell", "unknown placeholder {print $1}"),
    ('name = "x"\nshell = "echo }"\ncount = 1\n', 2, "shell", "doubled"),
    ('name = "x"\nshell = ""\ncount = 1\n', 2, "shell", "non-empty string"),
    ('name = "x"\nfunction = "math.sqrt"\ncount = 1\n', 2, "function", "package.module:function"),
    ('name = "x"\ncommand = ["true"]\nargs = [1]\ncount = 1\n', 3, "args", "only a 'function' job"),
    ('name = "x"\nfunction = "m:f"\nkwargs = [1]\ncount = 1\n', 3, "kwargs", "table with string keys"),
    ('name = "x"\nfunction = "m:f"\nargs = 5\ncount = 1\n', 3, "args", "expected a list"),
    ('name = "x"\ncommand = ["true"]\nitems = 5\n', 3, "items", "expected a list"),
    ('name = "x"\ncommand = ["true"]\nitems = [1979-05-27]\n', 3, "items", "TOML date"),
    ('name = "x"\ncommand = ["true"]\nitems = { range = [1] }\n', 3, "items.range", "[start, stop]"),
    ('name = "x"\ncommand = ["true"]\nitems = { range = [1, 5, 0] }\n', 3, "items.range", "step must not be 0"),
    ('name = "x"\ncommand = ["true"]\nitems = { rnage = [1, 5] }\n', 3, "items.rnage", "did you mean 'items.range'?"),
    ('name = "x"\ncommand = ["true"]\nitems = { glob = "nothing/*.xyz" }\n', 3, "items.glob", "matches no file"),
    ('name = "x"\ncommand = ["true"]\nitems = { lines = "missing.txt" }\n', 3, "items.lines", "cannot read"),
    ('name = "x"\ncommand = ["true"]\ncount = -1\n', 3, "count", "at least 0"),
    ('name = "x"\ncommand = ["true"]\ncount = 2\nreduce = "average"\n', 4, "reduce", "unknown reducer 'average'"),
    ('name = "x"\ncommand = ["true"]\ncount = 2\nreduce = "no_such_module_xyz:f"\n', 4, "reduce", "cannot import"),
    ('name = "x"\ncommand = ["true"]\ncount = 2\nretries = -1\n', 4, "retries", "at least 0"),
    ('name = "x"\ncommand = ["true"]\ncount = 2\nretries = "3"\n', 4, "retries", "expected an integer"),
    ('name = "x"\ncommand = ["true"]\ncount = 2\nbackoff = "1s"\n', 4, "backoff", "expected a table"),
    ('name = "x"\ncommand = ["true"]\ncount = 2\nbackoff = { base = "fast" }\n', 4, "backoff.base", "duration"),
    ('name = "x"\ncommand = ["true"]\ncount = 2\nbackoff = { base = "10s", cap = "1s" }\n', 4, "backoff.cap", "at least the base"),
    ('name = "x"\ncommand = ["true"]\ncount = 2\n\n[backoff]\nbase = "1s"\ncapp = "2s"\n', 7, "backoff.capp", "did you mean 'backoff.cap'?"),
    ('name = "x"\ncommand = ["true"]\ncount = 2\ntimeout = 0\n', 4, "timeout", "more than 0"),
    ('name = "x"\ncommand = ["true"]\ncount = 2\npriority = 1.5\n', 4, "priority", "expected an integer"),
    ('name = "x"\ncommand = ["true"]\ncount = 2\nslots = 0\n', 4, "slots", "at least 1"),
    ('name = "x"\ncommand = ["true"]\ncount = 2\nlabels = { gpu = true }\n', 4, "labels", "table of strings"),
    ('name = "x"\ncommand = ["true"]\ncount = 2\nenv = { N = 1 }\n', 4, "env", "table of strings"),
    ('name = "x"\ncommand = ["true"]\ncount = 2\ncwd = 7\n', 4, "cwd", "directory path"),
    ('name = "x"\ncommand = ["true"]\ncount = 2\nmax_node_failures = 0\n', 4, "max_node_failures", "at least 1"),
    ('name = "x"\ncommand = ["true"]\ncount = 2\nspeculative = "yes"\n', 4, "speculative", "true or false"),
    ('name = "x"\ncommand = ["true"]\nshell = "true"\ncount = 2\n', 3, "shell", "only one of"),
    ('name = "x"\ncommand = ["true"]\nitems = [1]\ncount = 2\n', 4, "count", "only one of"),
    ('name = "x"\ncommand = ["cat", "{stem}"]\ncount = 2\n', 2, "command", "{stem} needs path items"),
]


@pytest.mark.parametrize("text,line,field,words", BAD_FILES, ids=[f"{row[2]}-{i}" for i, row in enumerate(BAD_FILES)])
def test_each_bad_field_is_one_sentence_naming_file_line_and_field(tmp_path, text, line, field, words):
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_job_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: field '{field}': "), message
    assert words in message
    assert "\n" not in message


def test_unknown_top_level_key_is_refused_with_a_suggestion(tmp_path):
    path = write(tmp_path, 'name = "x"\ncommand = ["true"]\ncount = 1\nretires = 2\n')
    with pytest.raises(SpecError, match=r"bad\.toml:4: field 'retires': no such field \(did you mean 'retries'\?\)"):
        load_job_file(path)


def test_missing_task_or_items_names_the_file_and_the_choices():
    with pytest.raises(SpecError, match=r"^j\.toml: needs a task: one of 'command', 'shell', 'function'$"):
        parse_job_text('name = "x"\ncount = 1\n', source="j.toml")
    with pytest.raises(SpecError, match=r"^j\.toml: needs items: one of 'items', 'count'$"):
        parse_job_text('name = "x"\ncommand = ["true"]\n', source="j.toml")


def test_toml_syntax_errors_keep_tomllibs_line_and_column():
    with pytest.raises(SpecError, match=r"^j\.toml:2:9: invalid TOML: Invalid value$"):
        parse_job_text('name = "x"\ncount = \n', source="j.toml")


def test_unreadable_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="nope.toml: cannot read the job file"):
        load_job_file(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    "value,seconds",
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("1.5s", 1.5), ("2d", 172800), ("1h 1s", 3601), (7, 7), (0.5, 0.5)],
)
def test_durations(value, seconds):
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["soon", "30", "", "5 minutes", "-1s", -1, True, None, float("inf")])
def test_bad_durations_are_refused(value):
    with pytest.raises(ValueError, match='expected a duration like "30s"'):
        parse_duration(value)


def test_glob_items_are_sorted_absolute_paths_with_stem_and_name(tmp_path):
    for name in ("b.txt", "a.txt", "c.log"):
        (tmp_path / "data").mkdir(exist_ok=True)
        (tmp_path / "data" / name).write_text("x")
    spec = load_job_file(write(tmp_path, 'command = ["wc", "{item}", "{stem}", "{name}", "{index}"]\nitems = { glob = "data/*.txt" }\n', "wc.toml"))
    assert spec.name == "wc"  # defaults to the file's stem
    assert spec.items == (str(tmp_path / "data" / "a.txt"), str(tmp_path / "data" / "b.txt"))
    assert spec.task_fields(1)["argv"] == ["wc", str(tmp_path / "data" / "b.txt"), "b", "b.txt", "1"]


def test_lines_items_skip_blank_lines_and_shell_quote_their_values(tmp_path):
    (tmp_path / "names.txt").write_text("  Ada Lovelace \n\n'; rm -rf / #\n")
    spec = load_job_file(write(tmp_path, 'shell = "echo {{ {item} }}"\nitems = { lines = "names.txt" }\n', "g.toml"))
    assert spec.items == ("Ada Lovelace", "'; rm -rf / #")
    assert spec.task_fields(0)["shell"] == "echo { 'Ada Lovelace' }"
    assert shlex.split(spec.task_fields(1)["shell"]) == ["echo", "{", "'; rm -rf / #", "}"]


def test_range_list_and_count_items():
    spec = parse_job_text('command = ["e", "{item}"]\nitems = { range = [10, 0, -3] }\n')
    assert list(spec.items) == [10, 7, 4, 1]
    assert parse_job_text('command = ["e"]\ncount = 3\n').items == range(3)
    listed = parse_job_text('command = ["e", "{item}"]\nitems = [1, "two", [3], { x = 4 }, true]\n')
    assert [listed.task_fields(i)["argv"][1] for i in range(5)] == ["1", "two", "[3]", '{"x": 4}', "true"]


def test_function_job_fields_and_options(tmp_path):
    text = (
        'name = "f"\nfunction = "math:pow"\nargs = [2]\nkwargs = { z = 1 }\nitems = [3]\n'
        'env = { A = "1" }\ncwd = "work"\nslots = 2\ntimeout = 5\nlabels = { gpu = "yes" }\n'
        'priority = -1\nmax_node_failures = 5\nspeculative = true\n[backoff]\nbase = "100ms"\n'
    )
    spec = parse_job_text(text, source=str(tmp_path / "f.toml"))
    assert spec.kind == "call" and (spec.backoff_base, spec.backoff_cap) == (0.1, 60.0)
    assert spec.task_fields(0) == {
        "fn": "math:pow", "args": [3, 2], "kwargs": {"z": 1}, "env": {"A": "1"},
        "cwd": str(tmp_path / "work"), "timeout": 5.0, "slots": 2,
    }  # fmt: skip
    assert (spec.labels, spec.priority, spec.max_node_failures, spec.speculative) == ({"gpu": "yes"}, -1, 5, True)


def test_a_backoff_base_above_the_default_cap_lifts_the_cap():
    spec = parse_job_text('command = ["true"]\ncount = 1\nbackoff = { base = "2m" }\n')
    assert (spec.backoff_base, spec.backoff_cap) == (120.0, 120.0)
    assert JobSpec.build(name="n", kind="call", fn="m:f", items=[1], backoff_base="90s").backoff_cap == 90.0


def test_brace_escapes_and_defaults():
    spec = parse_job_text('command = ["awk", "{{print $1}}", "{item}"]\ncount = 2\n', source="a.toml")
    assert spec.task_fields(1) == {"argv": ["awk", "{print $1}", "1"]}
    assert (spec.retries, spec.backoff_base, spec.backoff_cap, spec.timeout, spec.reduce) == (3, 1.0, 60.0, None, None)


def test_a_million_task_range_spec_stays_small():
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        spec = parse_job_text('command = ["echo", "{item}"]\nitems = { range = [0, 1000000] }\nreduce = "sum"\n')
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert spec.task_count() == 1_000_000
    assert grown < 10 * 1024, grown
    assert spec.task_fields(999_999)["argv"] == ["echo", "999999"]


def test_task_fields_of_any_index_are_its_item_substituted():
    # Speed is the benchmarks' business (no timed assertion here); this is
    # the exact answer at every index the engine may ask for, in any order.
    shell = parse_job_text('shell = "convert {item} out/{stem}.png"\nitems = [' + ", ".join(f'"img{i}.jpg"' for i in range(100)) + "]\n")
    argv = parse_job_text('command = ["python3", "-c", "print({item} ** 2)"]\nitems = { range = [0, 100000] }\n')
    for index in (99_999, 0, 41_234, 1):
        assert argv.task_fields(index)["argv"] == ["python3", "-c", f"print({index} ** 2)"]
    for index in (57, 0, 99):
        assert shell.task_fields(index)["shell"] == f"convert img{index}.jpg out/img{index}.png"


def test_to_dict_round_trips_through_json_and_msgpack():
    import cloudpickle

    specs = [
        load_job_file(JOBS / "squares.toml"),
        parse_job_text('function = "math:pow"\nargs = [2]\nkwargs = { a = 1 }\nitems = [1, "x", [2]]\nenv = { K = "v" }\n'),
        JobSpec.build(name="p", kind="pickle", payload=cloudpickle.dumps(abs), items=range(0, 10, 2), timeout="1m"),
    ]
    for spec in specs:
        data = spec.to_dict()
        assert data["items"] == {"range": [1, 1001, 1]} or spec.items != range(1, 1001)
        for restored in (JobSpec.from_dict(json.loads(json.dumps(data))), JobSpec.from_dict(msgpack.unpackb(msgpack.packb(data)))):
            assert restored == spec
            assert restored.task_fields(1) == spec.task_fields(1)
    assert isinstance(JobSpec.from_dict(specs[2].to_dict()).items, range)


def test_build_and_direct_construction_validate_like_files():
    spec = JobSpec.build(name="n", kind="shell", argv_template=["echo", "{item}"], items=[1, 2], timeout="2s", retries=0)
    assert (spec.argv_template, spec.items, spec.timeout) == (("echo", "{item}"), (1, 2), 2.0)
    with pytest.raises(SpecError, match=r"^field 'retires': no such option \(did you mean 'retries'\?\)$"):
        JobSpec.build(name="n", kind="call", fn="m:f", items=[1], retires=1)
    with pytest.raises(SpecError, match="field 'timeout': expected a duration"):
        JobSpec.build(name="n", kind="call", fn="m:f", items=[1], timeout="later")
    with pytest.raises(SpecError, match="a call job needs exactly one of fn"):
        JobSpec(name="n", kind="call", argv_template=("x",), items=[1])
    with pytest.raises(SpecError, match="field 'slots'"):
        JobSpec(name="n", kind="call", fn="m:f", items=[1], slots=0)


# --- where a placeholder may sit (engine.shellquote) ----------------------------------------

_UNSAFE_SHELL = [
    'echo "{item}"', "echo '{item}'", 'echo x"{item}"', 'echo "a {item} b"', "echo \\{item}", "echo ${item}",
    "echo hi # {item}", "echo `cat {item}`", "cat <<EOF\n{item}\nEOF",
    "echo $'{item}'", 'echo {item}"x"', "cat <<-'E'\n\t{index}\n\tE\necho ok",
]  # fmt: skip
_SAFE_SHELL = [
    "echo {item}", "echo {item} > out/{index}.txt", 'tr -cs "[:alpha:]" "\\n" < {item} | tr "[:upper:]" "[:lower:]"',
    "echo Hello, {item}!", "echo $(cat {item})", "cat <<EOF\nhello\nEOF\necho {item}", "echo it\\'s {item}",
    "echo --file={item}", "echo {{item}} {item}", 'echo "$#" {item}', "echo a#b {item}", "printf '%s\\n' {item}",
    "test $(( {item} % 2 )) -eq 0 && echo {item}",
]  # fmt: skip


@pytest.mark.parametrize("template", _UNSAFE_SHELL)
def test_unsafe_shell_placeholders_are_refused_naming_the_fix(template):
    with pytest.raises(SpecError) as caught:
        JobSpec(name="x", kind="shell", shell_template=template, items=["a"])
    assert caught.value.field == "shell_template" and "quotes every substituted value itself" in str(caught.value)


@pytest.mark.parametrize("template", _SAFE_SHELL)
def test_safe_shell_placeholders_are_accepted(template):
    JobSpec(name="x", kind="shell", shell_template=template, items=["a"])


def test_command_list_quotes_only_a_shell_script_after_dash_c():
    plain = JobSpec(name="x", kind="shell", argv_template=["printf", "%s", "{item}"], items=["a b;c"])
    assert plain.task_fields(0)["argv"] == ["printf", "%s", "a b;c"]
    script = JobSpec(name="x", kind="shell", argv_template=["sh", "-c", "printf %s {item}", "{item}"], items=["a b;c"])
    assert script.task_fields(0)["argv"] == ["sh", "-c", "printf %s 'a b;c'", "a b;c"]
    with pytest.raises(SpecError, match="inside quotes|touches a quote"):
        JobSpec(name="x", kind="shell", argv_template=["echo", "'{item}'"], items=["a"])
    JobSpec(name="x", kind="shell", argv_template=["echo", "don't {item}"], items=["a"])  # an apostrophe is text
