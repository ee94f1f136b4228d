"""The fuzz harnesses stay runnable: each runs its seed corpus and some random inputs
in-process (no atheris needed), their assertions still bite, the committed corpus is
what `make_corpus` makes, and the runner works with the hypothesis engine and reports
a failure."""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from trivmc.backends import EchoBackend
from trivmc.protocol import Message, MessageDecoder

from . import harness_channel, harness_decoder, make_corpus, triodriver
from .harnesses import HARNESSES, corpus_dir, load, seed_inputs
from .runner import ROOT, Result, parse_output

TRIO_HARNESSES = ("websocket", "channel")


@pytest.fixture(autouse=True)
def per_input_driver() -> None:
    triodriver.use_driver(None)


@pytest.mark.parametrize("name", HARNESSES)
def test_seed_corpus_passes(name: str) -> None:
    harness = load(name)
    assert 8 <= len(make_corpus.generated_files(corpus_dir(name))) <= 40
    for data in seed_inputs(name):  # with any that --grow-corpus merged in
        harness.fuzz_one(data)


@pytest.mark.parametrize("name", HARNESSES)
def test_random_and_mutated_inputs_pass(name: str) -> None:
    harness = load(name)
    seeds = seed_inputs(name)
    rng = random.Random(f"trivmc-{name}")
    count = 60 if name in TRIO_HARNESSES else 400
    for i in range(count):
        if i % 2:
            data = rng.randbytes(rng.randrange(200))
        else:
            buf = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 4)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            data = bytes(buf)
        harness.fuzz_one(data)


def test_trio_harnesses_on_the_guest_driver() -> None:
    """The fuzz workers run the trio harnesses in one long guest run."""
    guest = triodriver.GuestDriver()
    triodriver.use_driver(guest)
    try:
        for name in TRIO_HARNESSES:
            for data in seed_inputs(name):
                load(name).fuzz_one(data)
    finally:
        triodriver.use_driver(None)  # closes the guest run


def test_committed_corpus_is_what_the_harnesses_make() -> None:
    assert make_corpus.differences() == []
    made = [make_corpus.generated_files(corpus_dir(name)) for name in HARNESSES]
    assert sum(len(data) for files in made for data in files.values()) < 64 * 1024
    total = sum(p.stat().st_size for name in HARNESSES for p in corpus_dir(name).iterdir())
    assert total < 1024 * 1024, "the seed corpus grew past 1 MiB"


def test_decoder_harness_catches_a_lost_message(monkeypatch: pytest.MonkeyPatch) -> None:
    real = MessageDecoder.feed

    def lossy(self: MessageDecoder, chunk: bytes) -> list[Message]:
        return real(self, chunk)[1:]

    monkeypatch.setattr(MessageDecoder, "feed", lossy)
    with pytest.raises(AssertionError):
        harness_decoder.fuzz_one(harness_decoder.seeds()["mini-stream"])


def test_channel_harness_catches_a_bad_echo(monkeypatch: pytest.MonkeyPatch) -> None:
    def garbling(self: EchoBackend, data: memoryview) -> None:
        assert self.chardev is not None
        self.chardev.chr_write(bytes(data)[::-1])

    monkeypatch.setattr(EchoBackend, "read", garbling)
    with pytest.raises(AssertionError, match="echo"):
        harness_channel.fuzz_one(harness_channel.seeds()["port-cut-wait"])


def test_parse_libfuzzer_output() -> None:
    text = (
        "#13\tINITED cov: 893 ft: 1617 corp: 12/1051b exec/s: 0 rss: 73Mb\n"
        "#1024\tpulse  cov: 954 ft: 2804 corp: 98/8436b lim: 209 exec/s: 341 rss: 74Mb\n"
        "==1== ERROR: libFuzzer: fuzz target exited\n"
        "artifact_prefix='/w/crashes/'; Test unit written to /w/crashes/crash-ab12\n"
        "stat::number_of_executed_units: 1564\n"
        "stat::new_units_added:          136\n"
    )
    result = Result("link", "atheris")
    parse_output(text, result)
    assert (result.executed, result.corpus, result.new_units) == (1564, 98, 136)
    assert result.artifacts == [Path("/w/crashes/crash-ab12")] and result.failed
    slow = Result("link", "atheris")
    parse_output("#7\tDONE corp: 3/9b\nTest unit written to ./slow-unit-12\n", slow)
    assert slow.executed == 7 and not slow.failed


def _runner(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "tests.fuzz", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_runner_hypothesis_engine(tmp_path: Path) -> None:
    run = _runner("--engine", "hypothesis", "--runs", "150", "--workdir", str(tmp_path), "lz4")
    assert run.returncode == 0, run.stdout + run.stderr
    row = next(line for line in run.stdout.splitlines() if line.startswith("lz4 "))
    assert "hypothesis" in row and row.endswith("ok")
    inputs = int(row.split()[2].replace(",", ""))
    assert inputs >= 150


@pytest.mark.parametrize("engine", ["hypothesis", "atheris"])
def test_runner_reports_a_failure_and_keeps_the_input(engine: str, tmp_path: Path) -> None:
    if engine == "atheris" and importlib.util.find_spec("atheris") is None:
        if os.environ.get("TRIVMC_REQUIRE_INTEROP"):  # CI: a missing tool is a failure
            pytest.fail("atheris is not installed")
        pytest.skip("atheris is not installed")
    run = _runner("--engine", engine, "--runs", "20000", "--workdir", str(tmp_path), "selftest")
    assert run.returncode == 1, run.stdout + run.stderr
    crashes = list((tmp_path / "selftest" / "crashes").glob("crash-*"))
    assert len(crashes) == 1 and str(crashes[0]) in run.stdout
    data = crashes[0].read_bytes()
    assert len(data) >= 3 and data[0] == 0
    replay = _runner("--replay", str(crashes[0]), "selftest")
    assert replay.returncode == 1 and "SelfTestFailure" in replay.stdout + replay.stderr
