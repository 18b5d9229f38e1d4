"""Tiny call-task targets for benchmarks (importable by workers as tests.bench.tasks)."""


def noop(x=None):
    return x
