"""Coverage-guided fuzzing of trivmc: harnesses, seed corpus, and the runner
(`python -m tests.fuzz`, `nox -s fuzz`); see docs/fuzzing.md.

Nothing here imports trivmc at import time: the fuzz worker instruments trivmc's
modules for atheris as it imports them.
"""
