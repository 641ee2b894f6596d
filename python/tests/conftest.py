"""Fixtures: a real loopback mail world (dnsmasq and Postfix smtp-sink, examples/peers/mailworld.py)
on 127.0.70.30-33 (VMTA_PY_WORLD_IP moves it), and engine configurations delivering into it."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))


@pytest.fixture(scope="session")
def world():
    p = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "examples", "peers", "mailworld.py"),
         os.environ.get("VMTA_PY_WORLD_IP", "127.0.70.30")],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = p.stdout.readline()
    if not line:
        p.wait()
        pytest.fail("the mail world did not start (are dnsmasq and smtp-sink installed? run .ci/deps)")
    info = json.loads(line)
    yield info
    p.terminate()
    p.wait(timeout=10)


@pytest.fixture
def config(world, tmp_path):
    """Engine TOML for the world: two shards, no fsync, retries give up after 3 s."""
    return (
        '[engine]\nshards = 2\npin_shards = false\ndurability = "none"\n'
        f'spool_dir = "{tmp_path / "spool"}"\nspool_segment_mb = 2\n[retry]\nmax_age_s = 3\n' + world["toml"]
    )


def received(world, needle: str) -> bool:
    """Whether the accepting sink received a message containing `needle`."""
    for name in os.listdir(world["dump"]):
        try:
            with open(os.path.join(world["dump"], name), errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        if "\nReceived: " in text and needle in text:
            return True
    return False
