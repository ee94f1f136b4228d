"""nox sessions: tests, lint, typecheck, docs, bench, soak, fuzz.

`nox -s tests lint typecheck` is the project's test command (README, .ci/run).
"""

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint", "typecheck"]


@nox.session
def tests(session: nox.Session) -> None:
    """The whole pytest suite: unit, behaviour and interop tests."""
    session.install("-e", ".[test]")
    install_atheris(session)  # the fuzz runner's own test drives it when it installs
    session.run("pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the library, the benchmarks and the fuzz harnesses."""
    session.install("-e", ".[test]", "mypy")
    session.run("mypy", "--strict", "trivmc", "benchmarks", "tests/fuzz")


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site: Sphinx builds docs/ into docs/_build/html, any warning
    an error. Needs `dot` (Debian graphviz) for the diagrams; Debian's python3.11-doc
    gives the links to Python's docs (docs/about.md)."""
    session.install("-e", ".[docs]")
    session.run(
        "sphinx-build",
        "-W",
        "--keep-going",
        "-E",  # a fresh environment: every page is read, so every warning is seen
        "-b",
        "html",
        "docs",
        "docs/_build/html",
        *session.posargs,
    )


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


@nox.session
def fuzz(session: nox.Session) -> None:
    """Coverage-guided fuzzing of the protocol, transport and channels (docs/fuzzing.md):
    `nox -s fuzz` (60 s per harness), `nox -s fuzz -- --time 3600 link` (an hour),
    `nox -s fuzz -- --smoke` (5 s per harness, for CI). atheris when it installs,
    hypothesis otherwise (`-- --engine hypothesis` forces it)."""
    session.install("-e", ".[test]")
    install_atheris(session)
    session.run("python", "-m", "tests.fuzz", *session.posargs)


def install_atheris(session: nox.Session) -> None:
    """atheris where it installs (a wheel for this platform); hypothesis otherwise."""
    try:
        session.install("atheris")
    except nox.command.CommandFailed:
        session.warn("atheris does not install here: the fuzz runner falls back to hypothesis")
