"""The one-call GPU session's scripts stay within a device call's budget, and the profile's
busy-fraction arithmetic is right (the GPU parts themselves run only on a GPU)."""

import os
import re
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def _timeouts(text):
    return [int(x) for x in re.findall(r"^\s*timeout (\d+) ", text, re.M)]


def test_quick_and_the_session_fit_one_device_call():
    rep = open(os.path.join(ROOT, "bench", "reproduce.sh")).read()
    quick = rep[rep.index('elif [ "$mode" = quick ]'):rep.index("else\n", rep.index('elif [ "$mode" = quick ]'))]
    assert sum(_timeouts(quick)) <= 330, _timeouts(quick)
    session = open(os.path.join(ROOT, "bench", "device_session.sh")).read()
    stages = _timeouts(session)
    assert len(stages) == 4 and sum(stages) <= 585, stages
    # reproduce.sh quick gets at least its own stages' total
    assert int(re.search(r"timeout (\d+) bash bench/reproduce.sh quick", session).group(1)) >= sum(_timeouts(quick))


def test_busy_fraction():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from profile_step import busy_fraction
    assert busy_fraction([(0, 10), (5, 20), (30, 40)]) == (30.0, 40.0, 0.75)
    assert busy_fraction([]) == (0.0, 0.0, 0.0)
    assert busy_fraction([(2, 4), (0, 1), (3, 5)])[0] == 4.0  # unordered, overlapping
