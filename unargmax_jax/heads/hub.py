"""Heads of Hugging Face Hub models: ``org/name[@revision]`` and ``hf://org/name[@revision]``.

Offline first: a model already in the local cache is used without a network call, through
its revision's commit (``refs/<revision>`` in the cache, or a 40-hex revision): a head this
module fetched before (``<HF_HOME>/unargmax-heads/models--org--name/<commit>/``), else a
complete snapshot in the Hugging Face cache (``HF_HUB_CACHE``, default ``HF_HOME/hub``;
e.g. one that ``transformers`` downloaded). ``HF_HUB_OFFLINE=1`` forbids anything else.

Online (the optional ``huggingface_hub`` package, ``pip install 'unargmax_jax[hub]'``): the
model's file list, then the small files (``config.json``, ``tokenizer.json`` /
``vocab.txt``, ``model.safetensors.index.json``) into the Hugging Face cache, then only
what holds the head: the header of each shard with a head tensor (weight, bias, final
norm, chosen by the name tables of :mod:`.names`), and from it either the whole shard
(when the head is most of it: into the Hugging Face cache) or just the head tensors' byte
ranges (:mod:`.hub_fetch`). The kept tensors are described by a small
``model.safetensors.index.json`` in the head's own directory, which
:func:`~.load.load_head` reads like any sharded checkpoint. The directory is built under a
temporary name and renamed when complete, so an interrupted download leaves nothing
half-written (the Hugging Face cache keeps its own ``.incomplete`` files the same way).
What was fetched, and from where, is ``fetched.json`` there and the report's ``head.hub``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

from . import hub_fetch
from .head import Head
from .load import load_head
from .names import NORM_NAMES, SAFETENSORS_BIAS_NAMES, SAFETENSORS_OTHER_BIAS_NAMES, SAFETENSORS_WEIGHT_NAMES
from .validate import HeadError

PREFIX = "hf://"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_MODEL_ID = re.compile(rf"(?:{_NAME}/)?{_NAME}(?:@[A-Za-z0-9._/-]+)?")
_COMMIT = re.compile(r"[0-9a-f]{40}")
# A path ending like a head file is a path, even when it does not exist (a clear "no such file").
_FILE_ENDINGS = (".npz", ".safetensors", ".json", ".gguf", ".msgpack", ".bin", ".pt", ".pth", ".onnx", ".txt")
_SMALL_FILES = ("config.json", "tokenizer.json", "vocab.txt")
_INDEX, _SINGLE, _RECORD = "model.safetensors.index.json", "model.safetensors", "fetched.json"
_WHOLE_SHARD_SLACK = 0.25  # fetch a whole shard when the rest of it is at most 25% of the head's bytes


class ModelId(NamedTuple):
    """A model on the Hub: ``repo`` (``org/name``) at ``revision`` (branch, tag or commit)."""

    repo: str
    revision: str

    def __str__(self) -> str:
        return f"{PREFIX}{self.repo}@{self.revision}"


class Fetched(NamedTuple):
    """A model's head on local disk: the directory :func:`~.load.load_head` reads, and its record."""

    path: Path
    record: dict


def parse_model_id(text: str) -> ModelId | None:
    """The model id ``text`` names, or None when it names a local path.

    ``hf://org/name[@revision]`` is always a model id; ``org/name[@revision]`` is one when
    no such path exists and it does not end like a head file.

    Raises:
        HeadError: an ``hf://`` id that is not ``org/name[@revision]``.
    """
    explicit = str(text).startswith(PREFIX)
    body = str(text)[len(PREFIX):] if explicit else str(text)
    if not explicit and ("/" not in body or Path(body).exists() or body.lower().endswith(_FILE_ENDINGS)):
        return None
    if not _MODEL_ID.fullmatch(body):
        if explicit:
            raise HeadError(f"{text}: expected a model id hf://org/name or hf://org/name@revision")
        return None
    repo, _, revision = body.partition("@")
    return ModelId(repo, revision or "main")


def hub_cache() -> Path:
    """The Hugging Face cache: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expandvars(os.environ["HF_HUB_CACHE"])).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def heads_cache() -> Path:
    """Where fetched heads are kept: ``unargmax-heads`` next to the Hugging Face cache."""
    return hub_cache().parent / "unargmax-heads"


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set to a true value."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def _folder(repo: str) -> str:
    return "models--" + repo.replace("/", "--")


def _commit_of(model: ModelId) -> str | None:
    """The commit the cache records for the model's revision (ours first, then Hugging Face's)."""
    if _COMMIT.fullmatch(model.revision):
        return model.revision
    for root in (heads_cache(), hub_cache()):
        try:
            commit = (root / _folder(model.repo) / "refs" / model.revision).read_text().strip()
        except (OSError, UnicodeDecodeError):
            continue
        if _COMMIT.fullmatch(commit):
            return commit
    return None


def _complete_snapshot(snapshot: Path) -> bool:
    """A snapshot holding ``model.safetensors``, or an index with every shard it names."""
    if (snapshot / _SINGLE).is_file():
        return True
    try:
        weight_map = json.loads((snapshot / _INDEX).read_text(encoding="utf-8"))["weight_map"]
        return all((snapshot / shard).is_file() for shard in set(weight_map.values()))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _holds(directory: Path, names) -> bool:
    """Whether our head directory's index names every tensor in ``names``, and its files are there
    (a shard linked into a since-cleaned Hugging Face cache is not)."""
    try:
        weight_map = json.loads((directory / _INDEX).read_text(encoding="utf-8"))["weight_map"]
        return (all(name in weight_map for name in names)
                and all((directory / shard).is_file() for shard in set(weight_map.values())))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return False


def cached(model: ModelId, *, weight: str | None = None, bias: str | None = None) -> Fetched | None:
    """The model's head from the local caches, without any network call, or None.

    A head fetched before without the ``weight``/``bias`` now asked for does not count.
    """
    commit = _commit_of(model)
    if commit is None:
        return None
    ours = heads_cache() / _folder(model.repo) / commit
    if (ours / _RECORD).is_file() and _holds(ours, [n for n in (weight, bias) if n]):
        try:
            record = json.loads((ours / _RECORD).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            record = {}
        return Fetched(ours, {**(record if isinstance(record, dict) else {}), "from_cache": True})
    snapshot = hub_cache() / _folder(model.repo) / "snapshots" / commit
    if _complete_snapshot(snapshot):
        return Fetched(snapshot, {"repo": model.repo, "revision": model.revision, "commit": commit,
                                  "files": [], "bytes_fetched": 0, "local": str(snapshot), "from_cache": True})
    return None


def _import_hub() -> SimpleNamespace:
    """``huggingface_hub`` and the submodules used here (the package loads them lazily)."""
    try:
        hub = importlib.import_module("huggingface_hub")
        return SimpleNamespace(HfApi=hub.HfApi, hf_hub_download=hub.hf_hub_download, hf_hub_url=hub.hf_hub_url,
                               network_errors=_network_errors(),
                               **{name: importlib.import_module(f"huggingface_hub.{name}")
                                  for name in ("errors", "utils", "constants")})
    except ImportError:
        raise HeadError("model ids need the huggingface_hub package: pip install 'unargmax_jax[hub]' "
                        "(or download the model and give its directory)") from None


def _endpoint(hub) -> str:
    return (os.environ.get("HF_ENDPOINT") or hub.constants.ENDPOINT).rstrip("/")


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError]
    for name in ("httpx2", "httpx", "requests"):
        with contextlib.suppress(ImportError):
            module = importlib.import_module(name)
            errors.append(getattr(module, "HTTPError", None) or getattr(module, "RequestException"))
    return tuple(e for e in errors if isinstance(e, type))


@contextlib.contextmanager
def _hub_errors(hub, model: ModelId, endpoint: str):
    """Turn the Hub's and the network's errors into one-line :class:`HeadError` messages."""
    errors = hub.errors
    try:
        yield
    except HeadError:
        raise
    except errors.GatedRepoError:
        raise HeadError(f"{model}: a gated repository: accept its terms on the Hub, then log in "
                        f"(hf auth login, or set HF_TOKEN)") from None
    except errors.RepositoryNotFoundError:
        raise HeadError(f"{model}: no such model on {endpoint}, nor a local path of that name (a private model "
                        f"needs a login: hf auth login, or set HF_TOKEN)") from None
    except errors.RevisionNotFoundError:
        raise HeadError(f"{model}: the repository has no revision {model.revision!r}") from None
    except errors.EntryNotFoundError as err:
        raise HeadError(f"{model}: a file the repository lists is missing ({' '.join(str(err).split())[:120]})") from None
    except errors.OfflineModeIsEnabled:
        raise HeadError(f"{model}: not in the cache, and HF_HUB_OFFLINE=1 forbids downloading it") from None
    except errors.HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", "?")
        raise HeadError(f"{model}: the Hub at {endpoint} answered HTTP {status}") from None
    except hub.network_errors as err:
        raise HeadError(f"{model}: cannot reach {endpoint} ({type(err).__name__}: {' '.join(str(err).split())[:120]}); "
                        f"offline, only models already in the cache can be checked") from None


def _needed(names, model: ModelId, weight: str | None, bias: str | None) -> list[str]:
    """The tensors that make the head: weight, its bias candidates, the final norms (name tables)."""
    if weight is None:
        weight = next((n for n in SAFETENSORS_WEIGHT_NAMES if n in names), None)
        if weight is None:
            raise HeadError(f"{model}: no head found: none of the checkpoint's {len(names)} tensors is named "
                            f"{', '.join(SAFETENSORS_WEIGHT_NAMES[:4])}, ... (choose one with --weight NAME)")
    elif weight not in names:
        raise HeadError(f"{model}: no tensor named {weight!r} in the checkpoint")
    if bias is not None and bias not in names:
        raise HeadError(f"{model}: no bias tensor named {bias!r} in the checkpoint")
    biases = [bias] if bias else [n for n in SAFETENSORS_BIAS_NAMES.get(weight, SAFETENSORS_OTHER_BIAS_NAMES)
                                  if n in names]
    norms = [n for pair in NORM_NAMES for n in pair if n in names]
    return list(dict.fromkeys([weight, *biases, *norms]))


def _quiet_tqdm(hub, progress: bool):
    if progress:
        return None

    class Silent(hub.utils.tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent


class _Session(NamedTuple):
    hub: object
    model: ModelId
    commit: str
    endpoint: str
    progress: bool

    def download(self, filename: str) -> Path:
        """A whole file, into the Hugging Face cache (its own atomic ``.incomplete`` handling)."""
        return Path(self.hub.hf_hub_download(self.model.repo, filename, revision=self.commit, cache_dir=hub_cache(),
                                             endpoint=self.endpoint, tqdm_class=_quiet_tqdm(self.hub, self.progress)))

    def url(self, filename: str) -> str:
        return self.hub.hf_hub_url(self.model.repo, filename, revision=self.commit, endpoint=self.endpoint)


def _weight_map(session: _Session, files: set[str], small: dict[str, Path]) -> tuple[dict[str, str], dict]:
    """Tensor name -> shard file, and the headers read so far (a single file's)."""
    if _INDEX in small:
        try:
            weight_map = json.loads(small[_INDEX].read_text(encoding="utf-8"))["weight_map"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
            raise HeadError(f"{session.model}: unreadable {_INDEX} ({err})") from None
        if not (isinstance(weight_map, dict) and all(isinstance(v, str) for v in weight_map.values())):
            raise HeadError(f'{session.model}: {_INDEX}: expected a "weight_map" from tensor names to shard files')
        return weight_map, {}
    if _SINGLE in files:
        header = hub_fetch.remote_header(session.hub, session.url(_SINGLE), f"{session.model}/{_SINGLE}")
        return dict.fromkeys(header.tensors, _SINGLE), {_SINGLE: header}
    others = sorted(f for f in files if f.endswith((".bin", ".gguf", ".onnx", ".msgpack", ".safetensors")))
    raise HeadError(f"{session.model}: no head found: the repository has no {_SINGLE} or {_INDEX} "
                    f"(weight files: {others[:6] or 'none'}; download one and check the file)")


def _fetch_shard(session: _Session, shard: str, names: list[str], header, build: Path, bar) -> dict:
    """Bring the tensors ``names`` of ``shard`` into ``build``: the whole shard or their byte ranges."""
    target = build / shard
    target.parent.mkdir(parents=True, exist_ok=True)
    if _whole(header, names):
        _link(session.download(shard), target)
        return {"file": shard, "whole": True, "bytes": header.size, "tensors": names}
    ranges = hub_fetch.write_partial(session.hub, session.url(shard), header, names, target, progress=bar)
    return {"file": shard, "whole": False, "size": header.size, "ranges": ranges,
            "bytes": sum(b - a for a, b in ranges), "tensors": names}


def _whole(header, names: list[str]) -> bool:
    """Fetch the whole shard: the other tensors in it are at most 25% of the head's bytes."""
    head_bytes = hub_fetch.tensor_bytes(header.tensors, names)
    other_bytes = header.size - header.data_start - head_bytes  # the header itself is not "much else"
    return other_bytes <= _WHOLE_SHARD_SLACK * head_bytes


def _link(source: Path, target: Path) -> None:
    """``target`` pointing at ``source`` (a symlink; a copy where links are not allowed)."""
    try:
        os.symlink(source.resolve(), target)
    except OSError:
        shutil.copyfile(source, target)


def _build(session: _Session, files: set[str], build: Path, weight: str | None, bias: str | None) -> dict:
    """Fetch the head into the directory ``build``; return the record of what was fetched."""
    small = {name: session.download(name) for name in (*_SMALL_FILES, _INDEX) if name in files}
    weight_map, headers = _weight_map(session, files, small)
    names = _needed(weight_map, session.model, weight, bias)
    by_shard: dict[str, list[str]] = {}
    for name in names:
        by_shard.setdefault(weight_map[name], []).append(name)
    for shard in by_shard:
        if Path(shard).is_absolute() or ".." in Path(shard).parts:
            raise HeadError(f"{session.model}: {_INDEX} names a shard outside the repository: {shard!r}")
        if shard not in headers:
            headers[shard] = hub_fetch.remote_header(session.hub, session.url(shard), f"{session.model}/{shard}")
        missing = [n for n in by_shard[shard] if n not in headers[shard].tensors]
        if missing:
            raise HeadError(f"{session.model}: {_INDEX} puts {missing[0]!r} in {shard}, whose header has no such tensor")
    total = sum(hub_fetch.tensor_bytes(headers[s].tensors, n) for s, n in by_shard.items()
                if not _whole(headers[s], n))  # whole shards show huggingface_hub's own progress bar
    bar = hub_fetch.Progress(total, f"fetching the head of {session.model.repo}", enabled=session.progress)
    entries = [_fetch_shard(session, shard, shard_names, headers[shard], build, bar)
               for shard, shard_names in by_shard.items()]
    bar.finish()
    for name, path in small.items():
        if name != _INDEX:
            shutil.copyfile(path, build / name)
    index = {"metadata": {"source": f"{PREFIX}{session.model.repo}@{session.commit}"},
             "weight_map": {name: weight_map[name] for name in names}}
    (build / _INDEX).write_text(json.dumps(index, indent=1), encoding="utf-8")
    small_entries = [{"file": name, "whole": True, "bytes": path.stat().st_size} for name, path in small.items()]
    return {"repo": session.model.repo, "revision": session.model.revision, "commit": session.commit,
            "endpoint": session.endpoint, "files": small_entries + entries,
            "bytes_fetched": sum(e["bytes"] for e in small_entries + entries)}


def fetch(model: ModelId, *, weight: str | None = None, bias: str | None = None, progress: bool = True) -> Fetched:
    """The model's head: from the cache when there, else fetched from the Hub (only the head).

    Raises:
        HeadError: no ``huggingface_hub``, offline and not cached, an unknown or gated
            repository or revision, no head in it, the network down, or a download cut
            short; one line each. Nothing is left half-written in either cache.
    """
    found = cached(model, weight=weight, bias=bias)
    if found is not None:
        return found
    if offline():
        raise HeadError(f"{model}: not in the cache ({hub_cache()}), and HF_HUB_OFFLINE=1 forbids downloading it")
    hub = _import_hub()
    endpoint = _endpoint(hub)
    with _hub_errors(hub, model, endpoint):
        info = hub.HfApi(endpoint=endpoint).model_info(model.repo, revision=model.revision)
        commit = info.sha or ""
        if not _COMMIT.fullmatch(commit):
            raise HeadError(f"{model}: the Hub gave no commit for revision {model.revision!r}")
        files = {sibling.rfilename for sibling in info.siblings or []}
        return _store(_Session(hub, model, commit, endpoint, progress), files, weight, bias)


def _store(session: _Session, files: set[str], weight: str | None, bias: str | None) -> Fetched:
    """Build the head's directory under a temporary name, then rename it into the cache."""
    root = heads_cache() / _folder(session.model.repo)
    final = root / session.commit
    root.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(dir=root, prefix=f".{session.commit}.", suffix=".incomplete"))
    try:
        record = _build(session, files, build, weight, bias)
        record["local"] = str(final)
        (build / _RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)  # an older copy of the same commit
        try:
            os.replace(build, final)
        except OSError:
            if not (final / _RECORD).is_file():
                raise
            # another process fetched the same commit meanwhile: its complete copy stands
    finally:
        shutil.rmtree(build, ignore_errors=True)
    if not _COMMIT.fullmatch(session.model.revision):
        ref = root / "refs" / session.model.revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(session.commit)
    return Fetched(final, {**record, "from_cache": False})


def load_model(spec: str, *, weight: str | None = None, bias: str | None = None, no_bias: bool = False,
               tokens: bool = True, progress: bool = True) -> tuple[Head, dict | None]:
    """A head from a path or a model id; with a model id, also the record of where it came from.

    Args:
        spec: a path for :func:`~.load.load_head`, or ``[hf://]org/name[@revision]``.
        weight, bias, no_bias, tokens: as for :func:`~.load.load_head`.
        progress: show the bytes fetched on stderr.

    Returns:
        ``(head, record)``; ``record`` is None for a path, else the repository, revision,
        commit, endpoint, files and byte ranges fetched, and whether it came from the cache.
    """
    model = parse_model_id(spec)
    if model is None:
        return load_head(spec, weight=weight, bias=bias, no_bias=no_bias, tokens=tokens), None
    found = fetch(model, weight=weight, bias=bias, progress=progress)
    head = load_head(found.path, weight=weight, bias=bias, no_bias=no_bias, tokens=tokens)
    return head, {**found.record, "model": f"{PREFIX}{model.repo}@{model.revision}"}
