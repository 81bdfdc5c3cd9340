"""Model ids (``unargmax check org/name``) against a fake Hugging Face Hub on 127.0.0.1.

The fake Hub serves what ``huggingface_hub`` really calls: model info
(``/api/models/<repo>/revision/<rev>``), and ``/<repo>/resolve/<rev>/<file>`` for HEAD and
GET with ETag, X-Repo-Commit, Content-Length and byte ranges (206 + Content-Range), and
the Hub's X-Error-Code on 404s. It counts the bytes it serves, so the tests can check that
only the head was fetched.
"""

import json
import shutil
import sys

import numpy as np
import pytest
from safetensors.numpy import save

from fake_hub import hub_env
from unargmax_jax.cli import main
from unargmax_jax.heads.hub import heads_cache, hub_cache, parse_model_id
from unargmax_jax.report import Report

pytest.importorskip("huggingface_hub")


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    yield from hub_env(tmp_path, monkeypatch)


def _tokenizer(C):
    return json.dumps({"model": {"vocab": {f"tok{i}": i for i in range(C)}}}).encode()


def _circle(C, inside, scale=1.0):
    """C rows on a circle, the first ``inside`` copied at half radius: exactly those are unargmaxable."""
    angles = np.linspace(0, 2 * np.pi, C, endpoint=False)
    W = np.stack([np.cos(angles), np.sin(angles)], axis=1) * scale
    return np.concatenate([W, 0.5 * W[:inside]]).astype(np.float32)


def _check(tmp_path, model, *extra):
    out = tmp_path / "out"
    return main(["check", model, "--out", str(out), "--quiet", "--domain", "box:1", *extra]), out


def test_model_ids_are_told_from_paths(tmp_path):
    assert parse_model_id("org/name") == ("org/name", "main")
    assert parse_model_id("hf://org/name@v1.0") == ("org/name", "v1.0")
    assert parse_model_id("hf://gpt2") == ("gpt2", "main")
    assert parse_model_id("heads/missing.npz") is None  # a path, reported as "no such file"
    assert parse_model_id("name") is None
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").mkdir()
    assert parse_model_id(str(tmp_path / "org" / "name")) is None


def test_tied_model_then_offline_recheck_from_the_cache(hub, tmp_path, monkeypatch, capsys):
    W = _circle(12, 4)
    weights = save({"model.embed_tokens.weight": W, "model.norm.weight": np.ones(2, np.float32)})
    commit = hub.add("org/tied", {"model.safetensors": weights, "tokenizer.json": _tokenizer(16),
                                  "config.json": b'{"rms_norm_eps": 1e-6}'})

    code, out = _check(tmp_path, "org/tied", "--verify")
    assert code == 0, capsys.readouterr().err
    report = Report.load(out)
    assert report.counts()["unargmaxable"] == 4 and report.head["has_bias"] is False
    assert list(report.ids("unargmaxable")) == [12, 13, 14, 15] and report.tokens[12] == "tok12"
    record = report.head["hub"]
    assert record["commit"] == commit and record["repo"] == "org/tied" and record["from_cache"] is False
    assert {f["file"] for f in record["files"]} >= {"model.safetensors", "tokenizer.json", "config.json"}
    # The file is all head: fetched whole, into the Hugging Face cache, by huggingface_hub.
    assert next(f for f in record["files"] if f["file"] == "model.safetensors")["whole"] is True
    assert (hub_cache() / "models--org--tied" / "snapshots" / commit / "model.safetensors").is_file()
    assert hub.served["model.safetensors"] <= 100_000 + len(weights)  # its header, then the file

    # Offline: the same check from the cache, and the server sees no request at all.
    hub.served.clear()
    hub.server.shutdown()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out2 = _check(tmp_path / "again", "org/tied")
    assert code == 0
    assert Report.load(out2).head["hub"]["from_cache"] is True
    assert Report.load(out2).head["sha256"] == report.head["sha256"]
    assert main(["verify", str(out2), "--weights", "org/tied"]) == 0

    # The Hugging Face cache cleaned: the head's link into it dangles, so the head is fetched again.
    shutil.rmtree(hub_cache())
    monkeypatch.delenv("HF_HUB_OFFLINE")
    restarted = hub_env(tmp_path / "second", monkeypatch)
    second = next(restarted)
    second.repos = hub.repos
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    code, out3 = _check(tmp_path / "third", "org/tied")
    assert code == 0 and Report.load(out3).head["hub"]["from_cache"] is False
    second.server.shutdown()


def test_sharded_untied_model_fetches_only_the_head(hub, tmp_path, capsys):
    C, d = 16, 2  # every test's head has this shape, so the engine compiles its kernels once
    W = _circle(C - 4, 4, scale=3.0)
    big = np.random.default_rng(0).normal(size=(256, 256)).astype(np.float32)  # 256 KB per layer
    shard1 = save({"model.embed_tokens.weight": np.zeros((C, d), np.float32), "model.layers.0.w": big})
    shard2 = save({"model.layers.1.w": big, "lm_head.weight": W, "model.layers.2.w": big,
                   "model.norm.weight": np.full(d, 2.0, np.float32)})
    weight_map = {"model.embed_tokens.weight": "s1.safetensors", "model.layers.0.w": "s1.safetensors",
                  "model.layers.1.w": "s2.safetensors", "lm_head.weight": "s2.safetensors",
                  "model.layers.2.w": "s2.safetensors", "model.norm.weight": "s2.safetensors"}
    index = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    hub.add("org/sharded", {"model.safetensors.index.json": index, "s1.safetensors": shard1, "s2.safetensors": shard2})

    code, out = _check(tmp_path, "hf://org/sharded", "--verify")
    assert code == 0, capsys.readouterr().err
    report = Report.load(out)
    assert sorted(report.ids("unargmaxable")) == list(range(C - 4, C))
    assert report.head["final_norm"]["names"] == ["model.norm.weight"]
    assert "s1.safetensors" not in hub.served  # the shard without the head is never read
    head_bytes = W.nbytes + d * 4
    # The header read (at most 100 kB, as huggingface_hub reads it) plus the head's bytes,
    # out of a 768 kB shard.
    assert hub.served["s2.safetensors"] <= head_bytes + 100_001 < len(shard2) / 2
    entry = next(f for f in report.head["hub"]["files"] if f["file"] == "s2.safetensors")
    assert entry["whole"] is False and entry["bytes"] == head_bytes


def test_final_logits_bias_model(hub, tmp_path, capsys):
    W = _circle(16, 0)
    b = np.zeros((1, 16), np.float32)
    b[0, 4] = -100.0  # on [-1, 1]^2 every logit W x lies in [-2, 2]: token 4 always loses
    weights = save({"model.shared.weight": W, "final_logits_bias": b})
    hub.add("org/marian", {"model.safetensors": weights, "vocab.txt": b"".join(b"w%d\n" % i for i in range(16))})
    code, out = _check(tmp_path, "org/marian")
    assert code == 0, capsys.readouterr().err
    report = Report.load(out)
    assert report.head["bias_name"] == "final_logits_bias" and list(report.ids("unargmaxable")) == [4]
    assert report.tokens[4] == "w4"


def test_missing_repo_and_missing_head_are_one_line_errors(hub, tmp_path, capsys):
    code, out = _check(tmp_path, "org/nothing")
    err = capsys.readouterr().err
    assert code == 2 and "no such model" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    hub.add("org/torch", {"pytorch_model.bin": b"x" * 10, "config.json": b"{}"})
    code, out = _check(tmp_path, "org/torch")
    err = capsys.readouterr().err
    assert code == 2 and "no head found" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    hub.add("org/encoder", {"model.safetensors": save({"encoder.layer.0.w": np.ones((4, 4), np.float32)})})
    code, out = _check(tmp_path, "org/encoder")
    err = capsys.readouterr().err
    assert code == 2 and "no head found" in err and "--weight" in err and not out.exists()


def test_gated_repo_and_missing_extra_are_one_line_errors(hub, tmp_path, monkeypatch, capsys):
    hub.gated.add("org/gated")
    code, out = _check(tmp_path, "org/gated")
    err = capsys.readouterr().err
    assert code == 2 and "gated" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if it were not installed
    code, out = _check(tmp_path, "org/anything")
    err = capsys.readouterr().err
    assert code == 2 and "unargmax_jax[hub]" in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_offline_without_cache_and_network_down(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _ = _check(tmp_path, "org/tied")
    assert code == 2 and "HF_HUB_OFFLINE=1" in capsys.readouterr().err
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub.server.shutdown()
    hub.server.server_close()  # nothing listens on the port any more
    code, out = _check(tmp_path, "org/tied")
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach" in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_interrupted_download_leaves_no_corrupt_file(hub, tmp_path, capsys):
    W = _circle(12, 4)
    big = np.ones((200, 200), np.float32)
    shard = save({"lm_head.weight": W, "model.layers.0.w": big})
    hub.add("org/cut", {"model.safetensors": shard})
    hub.truncate.add("model.safetensors")
    code, out = _check(tmp_path, "org/cut")
    err = capsys.readouterr().err
    assert code == 2 and "interrupted" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    left = [p for p in heads_cache().rglob("*") if p.is_file()] + [p for p in hub_cache().rglob("*.safetensors")]
    assert left == []  # no partial head anywhere in the caches
    hub.truncate.clear()
    code, out = _check(tmp_path, "org/cut")
    assert code == 0 and list(Report.load(out).ids("unargmaxable")) == [12, 13, 14, 15]


def test_a_weight_name_not_fetched_before_is_fetched(hub, tmp_path, capsys):
    W = _circle(12, 4)
    other = np.ascontiguousarray(W[::-1])
    weights = save({"lm_head.weight": W, "model.embed_tokens.weight": other, "model.layers.0.w": np.ones((64, 64), np.float32)})
    hub.add("org/two", {"model.safetensors": weights})
    code, out = _check(tmp_path, "org/two")
    assert code == 0 and Report.load(out).head["weight_name"] == "lm_head.weight"
    code, out = _check(tmp_path / "b", "org/two", "--weight", "model.embed_tokens.weight")
    assert code == 0, capsys.readouterr().err
    report = Report.load(out)
    assert report.head["weight_name"] == "model.embed_tokens.weight" and report.head["hub"]["from_cache"] is False
    assert list(report.ids("unargmaxable")) == [0, 1, 2, 3]  # the inside rows, now first
