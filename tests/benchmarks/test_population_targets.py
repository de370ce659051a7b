"""The population targets of issue #25 (benchmarks.report._population_targets), read the right way round."""

from benchmarks.report import _population_targets


def _population(clients, median, peak):
    return {"clients": clients, "participants": 100, "rounds": 1000, "round": {"median": median},
            "peak_rss_bytes": peak}


def test_population_targets_bound_memory_and_the_round_time_ratio():
    met = _population_targets([_population(1_000, 0.010, 2e8), _population(1_000_000, 0.012, 5e8)])
    assert [row["met"] for row in met] == [True, True]
    assert met[0]["measured"] == "0.50" and met[1]["measured"] == "1.20"
    missed = _population_targets([_population(1_000, 0.010, 2e8), _population(1_000_000, 0.014, 5e9)])
    assert [row["met"] for row in missed] == [False, False]
    assert _population_targets([_population(1_000, 0.01, 1e8)]) == []
