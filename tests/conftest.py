"""Settings for the whole test suite."""

from hypothesis import settings

# Hypothesis fails an example that takes longer than 200 ms by default: a timer that a
# busy machine (parallel jobs, CI neighbours) loses now and then, though nothing is wrong.
# Speed is measured by the benchmarks, not here.
settings.register_profile("fellowship", deadline=None)
settings.load_profile("fellowship")
