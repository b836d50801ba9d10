"""Dataset runs: attribute many prompts, stream the results to disk shard by shard, resume after
an interruption, and split the shards over the ranks of a ``torchrun`` job.

Layout of ``out_dir``::

    manifest.json               what was asked (model, method, parameters, target, prompts' hash)
    shard-00000.safetensors     items 0 .. shard_size-1: one scores tensor per item, the rest of
    shard-00001.safetensors     each Attribution as JSON metadata (never pickle)
    ...

A shard file is written whole to a temporary name and renamed, so it exists only once every item
in it is done; rerunning with the same arguments skips the shards that exist. Rerunning with
different arguments raises instead of mixing two runs in one directory.

Under ``torchrun`` (``torch.distributed`` initialised, or ``WORLD_SIZE > 1`` with ``RANK`` set)
shard ``i`` belongs to rank ``i % world_size``; ranks share nothing but the directory, and
:func:`load_dataset_results` merges the shards by item index.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from ._io import atomic_write
from .options import TARGET_OPTIONS, RunOptions
from .attribution import FORMAT_NAME, FORMAT_VERSION, Attribution, _jsonable
from .errors import InputError, MechattrError, ResultFileError

DATASET_FORMAT = "mechattr-dataset"
DATASET_VERSION = 1
MANIFEST = "manifest.json"
SHARD_META = "mechattr-shard"
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.safetensors$")
# Keys a prompt given as a dict may carry; each overrides the run-wide argument for that item.
ITEM_KEYS = ("text", "target", "contrast", "kind", "position")
# Arguments that change results. memory_mb / batch_size only change how steps are batched, and
# results do not depend on that, so a resumed run may use other values.
_RESULT_KEYS = (
    "format", "format_version", "model", "model_fingerprint", "method", "params", "target",
    "contrast", "kind", "position", "prepend_bos", "attribute_bos", "seed", "n_items",
    "shard_size", "prompts_sha256",
)


# ----- prompts -----------------------------------------------------------------------------------
def read_prompts(source: Any) -> list[dict[str, Any]]:
    """Items ``{"text": ..., optional "target" / "contrast" / "kind" / "position"}`` from a list
    of strings or dicts, or from a file: ``.jsonl`` (one JSON string or object a line), ``.json``
    (a list of them) or plain text (one prompt a line, blank lines skipped)."""
    if isinstance(source, (str, os.PathLike)):
        raw = _read_file(Path(source))
    elif isinstance(source, (list, tuple)):
        raw = list(source)
    else:
        raise InputError(
            f"Give the prompts as a list of strings or dicts, or a file path; got {type(source).__name__}."
        )
    if not raw:
        raise InputError("The list of prompts is empty.")
    return [_item(x, i) for i, x in enumerate(raw)]


def _read_file(p: Path) -> list[Any]:
    if not p.is_file():
        raise InputError(
            f"No prompts file at {str(p)!r}. Give a file path, or a list of prompts (a single "
            "string is read as a path)."
        )
    from ._cli_files import read_text

    text = read_text(str(p), "prompts file")  # not UTF-8 / unreadable: an InputError saying what to do
    if p.suffix == ".jsonl":
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InputError(f"{str(p)!r} line {n} is not JSON: {e}") from e
        return out
    if p.suffix == ".json" or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{str(p)!r} looks like JSON but does not parse: {e}") from e
        if not isinstance(data, list):
            raise InputError(f"{str(p)!r} must hold a JSON list of prompts.")
        return data
    return [line for line in text.splitlines() if line.strip()]


def _item(x: Any, i: int) -> dict[str, Any]:
    if isinstance(x, str):
        x = {"text": x}
    if not isinstance(x, dict):
        raise InputError(f"Prompt {i} is a {type(x).__name__}; give a string or a dict with 'text'.")
    unknown = sorted(set(x) - set(ITEM_KEYS))
    if unknown:
        raise InputError(f"Prompt {i} has unknown keys {unknown}; a prompt dict takes {list(ITEM_KEYS)}.")
    if not isinstance(x.get("text"), str) or not x["text"]:
        raise InputError(f"Prompt {i} needs a non-empty string under 'text'.")
    return {k: x[k] for k in ITEM_KEYS if k in x}


# ----- manifest ----------------------------------------------------------------------------------
def _describe(x: Any) -> Any:
    """A description of an argument that is the same in the next run for the same argument
    (a default repr carries a memory address, which would make every resume a mismatch)."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)  # nan != nan would make every resume a mismatch
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    if isinstance(x, (list, tuple)):
        return [_describe(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _describe(v) for k, v in x.items()}
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {"type": type(x).__qualname__,
                **{f.name: _describe(getattr(x, f.name)) for f in dataclasses.fields(x)}}
    if isinstance(x, torch.Tensor):
        return {"tensor_sha256": hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest(),
                "shape": list(x.shape)}
    text = repr(x)
    if " at 0x" in text:
        fn = getattr(x, "__qualname__", None) or type(x).__qualname__
        return f"<{getattr(x, '__module__', type(x).__module__)}.{fn}>"
    return text


def _model_fingerprint(adapter: Any) -> str:
    """A few rows of the embedding matrix, hashed: tells two models with the same name apart
    (two random inits, another dtype) without reading every weight."""
    ids = torch.arange(min(8, adapter.d_vocab), device=adapter.device).reshape(1, -1)
    with torch.no_grad():
        e = adapter.embed(ids).detach().to("cpu", torch.float64).contiguous()
    return hashlib.sha256(e.numpy().tobytes()).hexdigest()[:16]


def _manifest(adapter: Any, items: list[dict[str, Any]], method: str, params: dict[str, Any],
              settings: dict[str, Any], shard_size: int) -> dict[str, Any]:
    prompts = json.dumps([_describe(it) for it in items], sort_keys=True).encode("utf-8")
    return {
        "format": DATASET_FORMAT,
        "format_version": DATASET_VERSION,
        "model": adapter.name,
        "model_fingerprint": _model_fingerprint(adapter),
        "method": method,
        "params": _describe(params),
        **{k: _describe(v) for k, v in settings.items()},
        "n_items": len(items),
        "shard_size": shard_size,
        "n_shards": -(-len(items) // shard_size),
        "prompts_sha256": hashlib.sha256(prompts).hexdigest(),
    }


def _read_manifest(out_dir: Path) -> dict[str, Any] | None:
    p = out_dir / MANIFEST
    if not p.exists():
        return None
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ResultFileError(f"{str(p)!r} is not a readable dataset manifest: {e}") from e
    if not isinstance(m, dict) or m.get("format") != DATASET_FORMAT:
        raise ResultFileError(f"{str(p)!r} is not a mechattr dataset manifest.")
    return m


def _check_same_run(old: dict[str, Any], new: dict[str, Any], out_dir: Path) -> None:
    diff = [k for k in _RESULT_KEYS if old.get(k) != new.get(k)]
    if diff:
        shown = "; ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in diff)
        raise InputError(
            f"{str(out_dir)!r} holds a run with other arguments ({shown}). Resuming would mix two "
            "runs' results: use another out_dir, the same arguments, or resume=False to start over "
            "(that deletes the shards already there)."
        )


# ----- shard files -------------------------------------------------------------------------------
def shard_path(out_dir: Path, shard: int) -> Path:
    return Path(out_dir) / f"shard-{shard:05d}.safetensors"


def _shard_files(out_dir: Path) -> dict[int, Path]:
    found = {}
    for p in Path(out_dir).iterdir() if Path(out_dir).is_dir() else ():
        m = _SHARD_RE.match(p.name)
        if m:
            found[int(m.group(1))] = p
    return found


def _write_shard(path: Path, shard: int, indices: list[int], results: list[Attribution],
                 rank: int, world_size: int, run_id: str) -> None:
    from safetensors.torch import save

    tensors, items = {}, []
    for i, res in zip(indices, results):
        meta = res.to_dict()
        meta.pop("scores")
        tensors[f"item{i}"] = res.scores.detach().cpu().contiguous()
        items.append({"index": i, "attribution": meta})
    header = {"shard": shard, "rank": rank, "world_size": world_size, "run": run_id, "items": items}
    atomic_write(path, save(tensors, metadata={SHARD_META: json.dumps(header)}))


def read_shard(path: str | os.PathLike) -> tuple[dict[str, Any], list[tuple[int, Attribution]]]:
    """(header without the items, [(item index, Attribution)]) of one shard file."""
    from safetensors import safe_open

    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get(SHARD_META)
            if raw is None:
                raise ResultFileError(f"{str(p)!r} is a safetensors file but not a mechattr shard.")
            header = json.loads(raw)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except ResultFileError:
        raise
    except Exception as e:
        raise ResultFileError(
            f"{str(p)!r} is not a readable mechattr shard ({e}); delete it and rerun the dataset "
            "run to recompute it."
        ) from e
    out = []
    for entry in header.pop("items"):
        meta, i = entry["attribution"], int(entry["index"])
        if meta.get("format") != FORMAT_NAME or meta.get("format_version") != FORMAT_VERSION:
            raise ResultFileError(f"{str(p)!r} item {i} was written by another result format version.")
        out.append((i, _from_meta(meta, tensors[f"item{i}"])))
    return header, out


def _from_meta(meta: dict[str, Any], scores: torch.Tensor) -> Attribution:
    names = {f.name for f in fields(Attribution)}
    kw = {k: v for k, v in meta.items() if k in names}
    kw["dims"] = tuple(kw["dims"])
    return Attribution(**kw, scores=scores)


def _shard_ok(path: Path, run_id: str) -> bool:
    """Whether an existing shard file belongs to this run and opens (writes are atomic, so a
    file that exists is whole unless something else touched it)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {})[SHARD_META])
        return header.get("run") == run_id
    except Exception:
        return False


# ----- torch.distributed -------------------------------------------------------------------------
@contextlib.contextmanager
def _distributed() -> Iterator[tuple[int, int, Any]]:
    """(rank, world_size, dist module or None). Joins a ``torchrun`` job when the environment
    describes one and nobody initialised the process group yet (gloo: only barriers and a few
    small objects travel, and gloo runs on every machine); destroys only a group it created."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        yield dist.get_rank(), dist.get_world_size(), dist
        return
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or "RANK" not in os.environ:
        yield 0, 1, None
        return
    if not dist.is_available():
        raise InputError("WORLD_SIZE > 1 asks for a data-parallel run, but this torch has no torch.distributed.")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise InputError(
            f"WORLD_SIZE={world} and RANK are set but {missing} are not: start the job with torchrun "
            "(it sets them), or initialise torch.distributed yourself."
        )
    dist.init_process_group("gloo")
    try:
        yield dist.get_rank(), dist.get_world_size(), dist
    finally:
        dist.destroy_process_group()


# ----- the run -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetRun:
    """What one :func:`attribute_dataset` call did (on this rank) and where the results are."""

    out_dir: Path
    n_items: int
    n_shards: int
    shard_size: int
    rank: int
    world_size: int
    shards_computed: list[int] = field(default_factory=list)
    shards_skipped: list[int] = field(default_factory=list)
    items_computed: int = 0
    seconds: float = 0.0
    # Over all ranks (equal to this rank's numbers when there is one).
    total_items_computed: int = 0
    total_seconds: float = 0.0

    @property
    def items_per_second(self) -> float:
        """Throughput of the whole job: items computed by all ranks over the slowest rank's time."""
        return self.total_items_computed / self.total_seconds if self.total_seconds > 0 else 0.0

    def summary(self) -> str:
        where = (f"rank {self.rank} of {self.world_size} computed" if self.world_size > 1 else "computed")
        return (
            f"{self.total_items_computed} items in {self.total_seconds:.1f} s = "
            f"{self.items_per_second:.2f} items/s ({where} {len(self.shards_computed)} shards, skipped "
            f"{len(self.shards_skipped)} finished); results in {self.out_dir}"
        )

    def load(self) -> list[Attribution]:
        return load_dataset_results(self.out_dir)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["out_dir"] = str(self.out_dir)
        d["items_per_second"] = self.items_per_second
        return d


def attribute_dataset(
    model: Any,
    prompts: Sequence[str | dict[str, Any]] | str | os.PathLike,
    target: Any = None,
    *,
    method: str = "integrated_gradients",
    out_dir: str | os.PathLike,
    shard_size: int = 64,
    resume: bool = True,
    quiet: bool = False,
    contrast: Any = None,
    kind: str | None = None,
    position: int | None = None,
    prepend_bos: bool | None = None,
    attribute_bos: bool = False,
    memory_mb: float = 2048.0,
    batch_size: int | None = None,
    seed: int = 0,
    **params: Any,
) -> DatasetRun:
    """Attribute every prompt of a dataset and stream the results to ``out_dir``, one file per
    shard of ``shard_size`` items.

    Args:
        model: a loaded TransformerLens model (see :func:`mechattr.load_model`).
        prompts: a list of strings or of dicts ``{"text": ..., "target": ..., "contrast": ...,
            "kind": ..., "position": ...}`` (the optional keys override the run-wide arguments
            for that item), or a path to a ``.jsonl`` / ``.json`` / text file of them.
        target: as for :func:`mechattr.attribute`, for every item; so are ``contrast``,
            ``kind``, ``position``, ``prepend_bos``, ``attribute_bos``, ``seed``,
            ``memory_mb``, ``batch_size`` and the method's own parameters (``**params``).
        method: a registered method name or alias.
        out_dir: where the manifest and the shard files go.
        shard_size: items per shard file (the unit of resuming and of data-parallel splitting).
        resume: skip the shards already in ``out_dir`` (the arguments must match the run that
            wrote them); ``False`` deletes them and starts over.
        quiet: no progress bar and no throughput line.

    Under ``torchrun`` every rank calls this with the same arguments and computes the shards
    ``i`` with ``i % world_size == rank``. Returns a :class:`DatasetRun`; read the results with
    :func:`load_dataset_results`.
    """
    from . import api
    from .tl.adapter import as_adapter
    from .progress import bar, silenced
    from .registry import check_params, get_method

    info = get_method(method)
    check_params(info, params)
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise InputError(f"shard_size must be a positive integer, got {shard_size!r}.")
    items = read_prompts(prompts)
    adapter = as_adapter(model, prepend_bos)
    out = Path(out_dir)
    opts = RunOptions(contrast=contrast, kind=kind, position=position, prepend_bos=prepend_bos,
                      attribute_bos=attribute_bos, memory_mb=memory_mb, batch_size=batch_size, seed=seed).check()
    # memory_mb / batch_size change only how steps are batched, not results (see _RESULT_KEYS)
    settings = {"target": target, **{k: v for k, v in opts.as_dict().items() if k in _RESULT_KEYS}}
    manifest = _manifest(adapter, items, info.name, params, settings, shard_size)
    run_id = hashlib.sha256(json.dumps({k: manifest.get(k) for k in _RESULT_KEYS}, sort_keys=True).encode()).hexdigest()[:16]
    manifest["run"] = run_id
    n_shards = manifest["n_shards"]

    with _distributed() as (rank, world, dist):
        # Every rank checks before anyone writes, so all ranks raise the same error together.
        old = _read_manifest(out) if resume else None
        if old is not None:
            _check_same_run(old, manifest, out)
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            for p in out.glob(".shard-*.tmp"):  # left by a killed writer
                p.unlink(missing_ok=True)
            if not resume:
                for p in _shard_files(out).values():
                    p.unlink()
            if old is None:
                atomic_write(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
        if dist is not None:
            dist.barrier()

        mine = [s for s in range(n_shards) if s % world == rank]
        existing = _shard_files(out)
        skipped = [s for s in mine if s in existing and _shard_ok(existing[s], run_id)]
        todo = [s for s in mine if s not in skipped]
        n_todo = sum(len(range(s * shard_size, min(len(items), (s + 1) * shard_size))) for s in todo)
        computed, n_done = [], 0
        t0 = time.perf_counter()
        with bar(total=n_todo, desc=f"{info.name} dataset" + (f" [rank {rank}]" if world > 1 else ""),
                 quiet=quiet, unit="item") as b:
            for s in todo:
                idx = list(range(s * shard_size, min(len(items), (s + 1) * shard_size)))
                results = []
                for i in idx:
                    it = items[i]
                    try:
                        per_item = {k: it[k] for k in TARGET_OPTIONS if k in it}  # an item's own overrides
                        res = api.attribute(
                            model, it["text"], it.get("target", target), method=info.name,
                            **{**opts.as_dict(), **per_item}, quiet=True, **params,
                        )
                    except MechattrError as e:  # say which item, so it can be found in a big file
                        raise type(e)(f"Prompt {i} ({it['text'][:40]!r}): {e}") from e
                    results.append(res)
                    b.update(1)
                _write_shard(shard_path(out, s), s, idx, results, rank, world, run_id)
                computed.append(s)
                n_done += len(idx)
        seconds = time.perf_counter() - t0
        total_items, total_seconds = n_done, seconds
        if dist is not None:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, (n_done, seconds))
            total_items = sum(g[0] for g in gathered)
            total_seconds = max(g[1] for g in gathered)

    run = DatasetRun(
        out_dir=out, n_items=len(items), n_shards=n_shards, shard_size=shard_size, rank=rank,
        world_size=world, shards_computed=computed, shards_skipped=skipped, items_computed=n_done,
        seconds=seconds, total_items_computed=total_items, total_seconds=total_seconds,
    )
    if not silenced(quiet) and rank == 0:
        print(run.summary(), file=sys.stderr)
    return run


def load_dataset_results(out_dir: str | os.PathLike, *, allow_missing: bool = False) -> list[Attribution]:
    """The Attributions of a dataset run, ordered by item index, merged from every shard (whichever
    rank wrote it). Raises when items are missing, unless ``allow_missing`` (then only the
    finished items are returned, still in order; their index is ``diagnostics['dataset_index']``)."""
    out = Path(out_dir)
    manifest = _read_manifest(out)
    if manifest is None:
        raise ResultFileError(f"No dataset run in {str(out)!r} (no {MANIFEST}).")
    found: dict[int, Attribution] = {}
    for s, p in sorted(_shard_files(out).items()):
        header, entries = read_shard(p)
        if header.get("run") != manifest.get("run"):
            raise ResultFileError(f"{str(p)!r} belongs to another run than {str(out / MANIFEST)!r}.")
        for i, res in entries:
            if i in found:
                raise ResultFileError(f"Item {i} appears in two shards of {str(out)!r}.")
            found[i] = res
    missing = [i for i in range(int(manifest["n_items"])) if i not in found]
    if missing and not allow_missing:
        size = int(manifest["shard_size"])
        shards = sorted({i // size for i in missing})
        raise ResultFileError(
            f"The run in {str(out)!r} is unfinished: {len(missing)} of {manifest['n_items']} items "
            f"missing (shards {shards[:10]}{' ...' if len(shards) > 10 else ''}). Rerun "
            "attribute_dataset with the same arguments to finish it, or pass allow_missing=True."
        )
    from dataclasses import replace

    return [
        replace(found[i], diagnostics={**found[i].diagnostics, "dataset_index": i})
        for i in sorted(found)
    ]


__all__ = ["attribute_dataset", "load_dataset_results", "read_prompts", "read_shard", "DatasetRun"]
