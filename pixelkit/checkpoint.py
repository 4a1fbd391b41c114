"""Checkpoints: what a pixelkit checkpoint holds and how to read one safely.

A checkpoint is a dict with ``state_dict`` (the :class:`PixelLLM` weights, optionally under
a ``model.`` prefix, as in a Lightning checkpoint of a stage) and ``pixelkit``: the resolved
model config and a description (stage, data it was trained on, metrics). Both Lightning's
own checkpoints of a stage and the slim final ``pixelllm.ckpt`` of the quickstart have this
shape, so :func:`load_model` reads either. Loading uses ``torch.load(weights_only=True)``:
a checkpoint can hold tensors and plain containers only, never code.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from pixelkit.config import PixelLLMConfig
from pixelkit.files import atomic_save
from pixelkit.modeling.pixel_llm import PixelLLM, pretrained_frozen_parts

META_KEY = "pixelkit"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: empty, truncated, not a checkpoint, refused."""


def load_checkpoint_file(path: str | os.PathLike[str], map_location: Any = "cpu",
                         mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with one clear error per way a file can be bad.

    ``weights_only=True`` builds tensors and plain containers only: a file that holds
    anything else (a pickled object, code) is refused, never executed.

    Args:
        path: the file.
        map_location: as ``torch.load``.
        mmap: map the tensors instead of reading them (cheap: to check a file, or to read
            its small entries).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: a folder, an empty, truncated or foreign file, or a refused one.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            zip_start = f.read(4) == b"PK\x03\x04"
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt (a zip archive without its directory: "
            f"an interrupted write?)" if zip_start else
            f"{path} is not a PyTorch checkpoint (not a torch.save zip archive)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"an object of type {found.group(1)}" if found else "objects"
        raise CheckpointError(
            f"refused {path}: it holds {what}, not only tensors and plain containers "
            "(checkpoints are read with weights_only=True, which never runs code from a file)"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read: {first}") from None


def checkpoint_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be resumed from (None: it reads). Cheap: the tensors are mapped."""
    try:
        load_checkpoint_file(path, mmap=True)
    except (FileNotFoundError, CheckpointError) as err:
        return str(err)
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, writing atomically in the checkpoint's own folder.

    Lightning saves through fsspec, which writes into ``$TMPDIR`` and then moves the file:
    across filesystems that move is a copy, and a kill during it leaves a half-written
    ``last.ckpt``. Here :func:`pixelkit.files.atomic_save` writes a temporary file beside
    the target, ``fsync``-s it and renames it, so a checkpoint is always whole. Loading goes
    through :func:`load_checkpoint_file` (``weights_only=True`` unless Lightning asks
    otherwise, and one clear error for a bad file). Remote paths (``s3://``...) keep
    Lightning's own behaviour.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_save(lambda f: torch.save(checkpoint, f), path)

    def load_checkpoint(self, path: Any, map_location: Any = None, **kwargs: Any
                        ) -> dict[str, Any]:
        if "://" in str(path) or kwargs.get("weights_only") is False:
            return super().load_checkpoint(path, map_location=map_location, **kwargs)
        return load_checkpoint_file(path, map_location=map_location)


def model_state(model: PixelLLM) -> dict[str, torch.Tensor]:
    """The model's weights as a flat state dict (non-persistent buffers excluded)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def fingerprint(state: Mapping[str, torch.Tensor], keys: Sequence[str]) -> str:
    """A SHA-256 of tensors: their names, dtypes, shapes and every byte."""
    digest = hashlib.sha256()
    for key in sorted(keys):
        t = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def frozen_record(model: PixelLLM) -> dict[str, dict[str, Any]]:
    """What a checkpoint keeps instead of the frozen pretrained weights.

    Per :meth:`PixelLLM.pretrained_frozen` part: its ``source`` (hub id or local path), the
    configured ``revision`` and the hub ``commit`` it was loaded at (None for local files),
    ``kind``, the number of its keys and a ``fingerprint`` of its weights. The fingerprint
    is computed once per model (the weights are frozen: they do not change in training).
    """
    frozen = model.frozen_keys()
    # Hashing is the cost (about 1 s per GB): cache it, keyed by what is frozen, since a
    # stage's ``trainable`` patterns may unfreeze part of a pretrained part after loading.
    key = tuple((part, tuple(keys)) for part, keys in frozen.items())
    cached = getattr(model, "_frozen_record", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    state = model.state_dict()
    parts = model.pretrained_frozen()
    record = {part: {"source": parts[part]["source"], "revision": parts[part]["revision"],
                     "commit": _loaded_commit(model, part), "kind": parts[part]["kind"],
                     "num_keys": len(keys), "fingerprint": fingerprint(state, keys)}
              for part, keys in frozen.items()}
    model._frozen_record = (key, record)
    return record


def _loaded_commit(model: PixelLLM, part: str) -> str | None:
    """The hub commit a transformers part was downloaded at (``config._commit_hash``; None
    for a local directory or a timm backbone): what ``revision`` resolved to."""
    module = model.get_submodule(part)
    inner = getattr(module, "model", None)
    if inner is None:
        inner = getattr(module, "encoder", None)
    return getattr(getattr(inner, "config", None), "_commit_hash", None)


def slim_state(model: PixelLLM, state: Mapping[str, torch.Tensor] | None = None,
               prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """The state dict without the frozen pretrained weights, and what stands for them.

    Args:
        model: the model.
        state: a state dict to thin (default: the model's own); its keys carry ``prefix``
            (``"model."`` in a Lightning checkpoint of a stage).
        prefix: the model's key prefix in ``state``.

    Returns:
        ``(state without the frozen keys, frozen_record(model))``.
    """
    record = frozen_record(model)
    if state is None:
        state = model_state(model)
    drop = {prefix + k for keys in model.frozen_keys().values() for k in keys}
    return {k: v for k, v in state.items() if k not in drop}, record


def restore_frozen(model: PixelLLM, state: dict[str, torch.Tensor],
                   record: Mapping[str, Mapping[str, Any]], where: str,
                   prefix: str = "") -> dict[str, torch.Tensor]:
    """Put the model's own frozen weights (rebuilt from their sources) into ``state``,
    after checking they are the ones the checkpoint was trained with.

    Raises:
        CheckpointError: a part the checkpoint left out that this model does not rebuild
            from a source, or whose weights differ from the recorded fingerprint.
    """
    if not record:
        return state
    current = frozen_record(model)
    keys = model.frozen_keys()
    own = model.state_dict()
    for part, saved in record.items():
        if part not in current:
            raise CheckpointError(f"{where}: it left out the frozen weights of {part} "
                                  f"(from {saved['source']}), and this model does not load "
                                  "them from a pretrained source")
        if current[part]["fingerprint"] != saved["fingerprint"]:
            raise CheckpointError(
                f"{where}: the frozen weights of {part} loaded from {current[part]['source']} "
                f"differ from those it was trained with (from {saved['source']}; fingerprint "
                f"{current[part]['fingerprint'][:12]} != {saved['fingerprint'][:12]}): load "
                "the same weights (hub revision or local copy) it was trained with")
        for k in keys[part]:
            state[prefix + k] = own[k]
    return state


def checkpoint_sizes(config: PixelLLMConfig | str) -> dict[str, float]:
    """A slim checkpoint's weight bytes against the full state dict's, counted on the meta
    device (nothing is downloaded or allocated): ``pixelkit bench --only checkpoint``.

    Returns:
        ``{"full_gb", "slim_gb", "ratio"}``: the state dict's size, the size without the
        frozen pretrained parts (:func:`slim_state`), and the second over the first.
    """
    import warnings

    if isinstance(config, str):
        config = PixelLLMConfig.from_name(config)
    parts = pretrained_frozen_parts(config)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        model = PixelLLM(config.without_pretrained())  # the same trainable pattern
    state = model.state_dict()
    full = sum(t.numel() * t.element_size() for t in state.values())
    left_out = sum(state[k].numel() * state[k].element_size()
                   for keys in model.frozen_keys(parts).values() for k in keys)
    return {"full_gb": full / 1e9, "slim_gb": (full - left_out) / 1e9,
            "ratio": (full - left_out) / full}


def checkpoint_meta(model: PixelLLM, **info: Any) -> dict[str, Any]:
    """The ``pixelkit`` entry: the resolved config, the frozen parts the checkpoint leaves out
    (:func:`frozen_record`) and plain-valued ``info``."""
    return {"config": model.config.to_dict(), "frozen": frozen_record(model), **info}


def save_model(model: PixelLLM, path: str | Path, **info: Any) -> Path:
    """Write a slim checkpoint (weights + config + ``info``: stage, data, metrics...),
    atomically (:func:`pixelkit.files.atomic_save`). Frozen pretrained weights are left out
    (:func:`slim_state`): loading rebuilds them from their source."""
    state, _ = slim_state(model)
    ckpt = {"state_dict": state, META_KEY: checkpoint_meta(model, **info)}
    return atomic_save(lambda f: torch.save(ckpt, f), path)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A pixelkit checkpoint (slim or a stage's Lightning checkpoint), read safely.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: a bad file (see :func:`load_checkpoint_file`) or not pixelkit's.
    """
    ckpt = load_checkpoint_file(path, map_location=map_location)
    if not isinstance(ckpt, dict) or META_KEY not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a pixelkit checkpoint "
                              f"(no '{META_KEY}' / 'state_dict' entry)")
    return ckpt


def model_from_state(config: Mapping[str, Any], frozen: Mapping[str, Mapping[str, Any]],
                     state: Mapping[str, torch.Tensor], where: str) -> PixelLLM:
    """Rebuild a model from its stored config and its (slim) weights.

    The architecture comes from ``config`` with every ``pretrained`` flag off, except for the
    frozen pretrained parts the weights left out (``frozen``: the :func:`frozen_record` of the
    saved model), which load from their sources (hub or local path) and must match their
    fingerprints. Shared by checkpoints (:func:`load_model`) and Hub folders
    (:func:`pixelkit.hub.load_pretrained`).

    Args:
        config: :meth:`PixelLLMConfig.to_dict` of the saved model.
        frozen: the frozen parts left out of ``state``.
        state: the weights, keyed as the model's own state dict.
        where: the file or folder, named in errors.

    Raises:
        CheckpointError: an invalid config, a source that does not load or has other
            weights, or weights that do not fit the config.
    """
    try:
        # Every weight comes from ``state``, except the frozen pretrained parts it left out:
        # those load from their sources (and are checked below).
        cfg = PixelLLMConfig.from_dict(dict(config)).without_pretrained(keep=frozen)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: its stored model config is not valid ({err})") from None
    try:
        model = PixelLLM(cfg)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{where}: the frozen parts it left out ({', '.join(frozen)}) "
                              f"could not be loaded from their sources: {err}") from None
    state = restore_frozen(model, dict(state), frozen, where)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        raise CheckpointError(f"{where}: its weights do not fit its own model config "
                              f"({lines[1] if len(lines) > 1 else lines[0]})"[:400]) from None
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu"
               ) -> tuple[PixelLLM, dict[str, Any]]:
    """Rebuild the model of a checkpoint and load its weights (:func:`model_from_state`:
    the frozen pretrained parts :func:`save_model` left out load from their sources).

    Returns:
        (model in eval mode on ``device``, the ``pixelkit`` meta dict).
    """
    ckpt = read_checkpoint(path)
    meta = ckpt[META_KEY]
    state = ckpt["state_dict"]
    if any(k.startswith("model.") for k in state):  # a Lightning checkpoint of a stage
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    if "config" not in meta:
        raise CheckpointError(f"{path}: its stored model config is not valid ('config')")
    model = model_from_state(meta["config"], meta.get("frozen") or {}, state, str(path))
    return model.to(device).eval(), meta
