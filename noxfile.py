"""nox sessions: tests, lint, typecheck, bench, soak.

`nox -s tests lint typecheck` is the project's test command (README, .ci/run).
"""

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint", "typecheck"]


@nox.session
def tests(session: nox.Session) -> None:
    """The whole pytest suite: unit, behaviour and interop tests."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the library and the benchmarks."""
    session.install("-e", ".[test]", "mypy")
    session.run("mypy", "--strict", "trivmc", "benchmarks")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks side by side (trivmc, spice-server, raw pump): `nox -s bench` (~7 min),
    `nox -s bench -- --quick` (~4 min); the table goes to benchmarks/results/latest.md."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def soak(session: nox.Session) -> None:
    """Soak under faults: 1000 port sessions for 60 s in one server process (4 servers x
    250 ports), clients resetting and leaving, backends stalling and dropping; exits 1
    when the server fails a check. `nox -s soak -- --duration 10 --sessions N ...`;
    the options: `python -m benchmarks.soak --help`."""
    session.install("-e", ".")
    session.run("python", "-m", "benchmarks.soak", *session.posargs)
