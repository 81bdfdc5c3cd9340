"""A check split across 8 (forced host) devices decides every token as a one-device run does."""

import functools
import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=" + sys.argv[1]
import logging
import numpy as np, jax, unargmax_jax as ua
from unargmax_jax.solve import warmup
compiled = []  # (kernel, thread) of every ascent/PDHG compile
if sys.argv[2] == "warm":  # the later stages compile on the background thread, as on a large head
    warmup.WARMUP_MIN_FLOPS = 0.0
    # The thread finishes before the real calls (which gets there first is the machine's
    # timing: a loaded CI machine lost that race); what can be wrong is whether they find its kernels.
    start = warmup.Warmup.start
    def start_and_finish(self):
        start(self)
        if self._thread is not None:
            self._thread.join()
    warmup.Warmup.start = start_and_finish
    class Compiles(logging.Handler):
        def emit(self, record):
            name = record.getMessage().split(" with ")[0]
            if name in ("Compiling jit(_ascent_chunk)", "Compiling jit(_pdhg_chunk)"):
                compiled.append((name, record.threadName))
    logging.getLogger("jax").addHandler(Compiles())
    jax.config.update("jax_log_compiles", True)
rng = np.random.default_rng(7)
W = rng.normal(size=(600, 4)).astype(np.float32)
b = rng.normal(size=600).astype(np.float32)
W[5], b[5] = W[9], b[9]  # a tie
report = ua.check(W, b, chunk_size=64)
print(json.dumps({"devices": jax.device_count(), "ok": bool(ua.verify(report, W, b).ok),
                  "verdict": report.verdict.tolist(), "compiled": compiled}))
"""


@functools.lru_cache(maxsize=None)  # both tests compare with the same one-device run
def _run(devices: int, warm: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run([sys.executable, "-c", PROBE, str(devices), "warm" if warm else "plain"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("devices", [8])
def test_sharded_run_equals_single_device_run(devices):
    single, sharded = _run(1), _run(devices)
    assert single["devices"] == 1 and sharded["devices"] == devices
    assert single["ok"] and sharded["ok"]  # both reports pass the independent checker
    assert sharded["verdict"] == single["verdict"]
    assert single["verdict"].count(-1) > 0 and single["verdict"].count(1) > 0


def test_background_compile_with_sharded_batches():
    # The warm-up's stand-in arguments carry the batch sharding too: the sharded ascent
    # and PDHG kernels are compiled on its thread only, and the verdicts are unchanged.
    single, warm = _run(1), _run(8, warm=True)
    assert warm["devices"] == 8 and warm["ok"] and warm["verdict"] == single["verdict"]
    kernels = {name for name, _ in warm["compiled"]}
    assert kernels == {"Compiling jit(_ascent_chunk)", "Compiling jit(_pdhg_chunk)"}, warm["compiled"]
    assert all(thread == "unargmax-warmup" for _, thread in warm["compiled"]), warm["compiled"]
