"""The ahead-of-time compile workers start as soon as the tests are collected, so that compiling
(one process per architecture) overlaps the interpreter tests on the machine's other cores."""

from tests.kernels.aot import stop_workers


def pytest_collection_finish(session):
    if any("tests/kernels/test_a" in item.nodeid or "tests/kernels/test_generated" in item.nodeid
           for item in session.items):
        from tests.kernels.aot_plan import start_all
        start_all()


def pytest_sessionfinish(session):
    stop_workers()
