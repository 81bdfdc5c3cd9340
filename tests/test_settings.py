"""A check's configuration as one Settings record, and the keyword form it replaces."""

import numpy as np
import pytest

import unargmax_jax as ua
from unargmax_jax.settings import Settings, settings_from


def _head():
    rng = np.random.default_rng(3)
    W = rng.normal(size=(40, 3)).astype(np.float32)
    b = rng.normal(size=40).astype(np.float32)
    W[7], b[7] = W[3], b[3]  # an exact twin: ties decide it
    return W, b


def test_settings_record_and_keywords_give_the_same_report():
    W, b = _head()
    by_record = ua.check(W, b, settings=ua.Settings(ties="first", ascent_steps=50, seed=1))
    by_keywords = ua.check(W, b, ties="first", ascent_steps=50, seed=1)
    for field in ("verdict", "lower", "upper", "stage", "witness_ids", "certificate_ids"):
        assert np.array_equal(getattr(by_record, field), getattr(by_keywords, field)), field
    assert by_record.settings == by_keywords.settings
    assert by_record.verdict[7] == -1 and by_record.stage[7] == "tie"  # under "first" only the lowest id can win


def test_explicit_keywords_replace_the_records_fields():
    W, b = _head()
    report = ua.check(W, b, settings=Settings(ties="first", seed=5), ties="strict")
    assert report.settings["ties"] == "strict" and report.settings["seed"] == 5
    assert report.stage[3] == report.stage[7] == "tie"  # strict: both members of the tie lose


def test_every_field_is_documented():
    doc = Settings.__doc__
    missing = [name for name in Settings._fields if f"{name}:" not in doc and f"{name}," not in doc]
    assert not missing, missing


@pytest.mark.parametrize("options, error", [({"ascent_step": 3}, TypeError), ({"ties": "last"}, ValueError),
                                            ({"chunk_size": 0}, ValueError)])
def test_bad_settings_are_refused_with_what_was_expected(options, error):
    with pytest.raises(error, match="expected|must be"):
        settings_from(**options)
    with pytest.raises(error):
        ua.check(*_head(), **options)


@pytest.mark.parametrize("backend, chunk", [("cpu", 128), ("gpu", 1024), ("tpu", 1024)])
def test_chunk_size_is_chosen_per_backend_and_recorded(backend, chunk, monkeypatch):
    """An accelerator gets larger screening batches (a 128-token product leaves it waiting on
    dispatch); an explicit chunk size is kept; the report records the value used."""
    import jax

    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert settings_from().chunk_size == chunk
    assert settings_from(chunk_size=40).chunk_size == 40
    monkeypatch.undo()
    assert ua.check(*_head()).settings["chunk_size"] == 128


def test_accelerator_batches_are_capped_by_device_memory(monkeypatch):
    """(batch x C) logits stay within 1/16 of the memory a device reports."""
    import jax
    import jax.numpy as jnp

    from unargmax_jax.solve import context

    class Device:
        def __init__(self, limit):
            self.limit = limit

        def memory_stats(self):
            return {"bytes_limit": self.limit}

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "local_devices", lambda: [Device(16 * 4 * 1000 * 300)])
    assert context._logits_cap(1000, jnp.float32) == 300
    assert context._logits_cap(10**9, jnp.float32) == 1  # never an empty batch
    monkeypatch.setattr(jax, "local_devices", lambda: [Device(None)])
    assert context._logits_cap(1000, jnp.float32) == 1000
