"""Every preset and method gives, record for record and bit for bit, the history recorded before the
compressor and algorithm registries replaced the family branches, and the MLP cases theirs recorded when the
MLP landed (see tests/algorithms/golden_cases.py)."""

import functools

import pytest

from tests.algorithms.golden_cases import cases, data_cases, history_of, mlp_cases, recorded

# Read when a test asks (a machine without a golden set fails each test with the command that records one,
# rather than stopping the whole session at collection).
golden = functools.cache(recorded)

OFFLINE = {**cases(), **mlp_cases()}
WITH_DATA = data_cases()


def _first_difference(got: list[dict], want: list[dict]) -> str:
    for step, (a, b) in enumerate(zip(got, want)):
        if a != b:
            keys = sorted(set(a) | set(b))
            changed = [key for key in keys if a.get(key) != b.get(key)]
            return f"step {step}: fields {changed}; got {[a.get(k) for k in changed]}, " \
                   f"recorded {[b.get(k) for k in changed]}"
    return f"{len(got)} records, {len(want)} recorded"


@pytest.mark.parametrize("name", sorted(OFFLINE))
def test_history_is_bitwise_the_recorded_one(name):
    preset, overrides, steps = OFFLINE[name]
    recorded = golden()[name]
    assert recorded["steps"] == steps and len(recorded["history"]) == steps
    got = history_of(preset, overrides, steps)
    assert got == recorded["history"], _first_difference(got, recorded["history"])


@pytest.mark.parametrize("name", sorted(WITH_DATA))
def test_mnist_scale_presets_are_bitwise_the_recorded_ones(name, shared_data, monkeypatch):
    monkeypatch.setenv("FEDSIM_DATA", str(shared_data))
    preset, overrides, steps = WITH_DATA[name]
    recorded = golden()[name]
    got = history_of(preset, overrides, steps)
    assert got == recorded["history"], _first_difference(got, recorded["history"])
