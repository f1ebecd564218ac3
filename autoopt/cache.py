"""Where autoopt keeps things that are expensive to rebuild: outside the repo, safe to delete.

`AUTOOPT_CACHE_DIR` overrides the location, otherwise `$XDG_CACHE_HOME/autoopt` or
`~/.cache/autoopt`. Built artifacts (ONNX files, TorchScript files) are cached by a key of
everything that determines them; the artifact cache is bounded (`AUTOOPT_CACHE_MAX_MB`, default
2048): the least recently used entries go first.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

DEFAULT_MAX_MB = 2048


def cache_dir(kind: str) -> str:
    """The cache sub-directory `kind` (created on demand)."""
    root = os.environ.get("AUTOOPT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "autoopt"
    )
    path = os.path.join(root, kind)
    os.makedirs(path, exist_ok=True)
    return path


def cached_state_dict(name: str, train) -> dict:
    """A model's weights from cache_dir("weights")/<name>.pt, calling `train()` (which returns an
    nn.Module) and caching its state_dict on first use. Written atomically, so parallel workers never
    read a half-written file; loaded with weights_only=True. Put a version in `name` and change it
    when the architecture or the recipe changes."""
    import torch

    path = os.path.join(cache_dir("weights"), f"{name}.pt")
    if not os.path.exists(path):
        state = train().state_dict()
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        os.close(fd)
        torch.save(state, tmp)
        os.replace(tmp, path)
    return torch.load(path, weights_only=True)


def model_fingerprint(model, example_inputs: tuple, **extra) -> str:
    """A key for everything an artifact built from `model` depends on: its structure, every weight
    byte, the input shapes past the batch axis, and `extra` (knob values, versions)."""
    h = hashlib.sha256()
    h.update(repr(model).encode())
    for name, value in model.state_dict().items():
        _feed(h, name, value)
    h.update(repr([(tuple(t.shape[1:]), str(t.dtype)) for t in example_inputs]).encode())
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def _feed(h, name: str, tensor) -> None:
    import torch

    if isinstance(tensor, (tuple, list)):  # e.g. dynamic int8 packed params: (weight, bias)
        for i, item in enumerate(tensor):
            _feed(h, f"{name}.{i}", item)
        return
    if not isinstance(tensor, torch.Tensor):
        h.update(f"{name}={tensor!r}".encode())
        return
    h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
    if tensor.is_quantized:  # torch.ao int8 weights: the integers and their quantization parameters
        per_channel = tensor.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
        params = ((tensor.q_per_channel_scales(), tensor.q_per_channel_zero_points()) if per_channel
                  else (torch.tensor([tensor.q_scale()]), torch.tensor([tensor.q_zero_point()])))
        tensor = torch.cat([tensor.int_repr().reshape(-1).double(), *(p.reshape(-1).double() for p in params)])
    h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


class ArtifactCache:
    """Directories of files under cache_dir(kind)/<key>/, written atomically, evicted LRU by size."""

    def __init__(self, kind: str, max_mb: float | None = None):
        self.root = Path(cache_dir(kind))
        self.max_mb = max_mb if max_mb is not None else float(os.environ.get("AUTOOPT_CACHE_MAX_MB", DEFAULT_MAX_MB))

    def get(self, key: str) -> Path | None:
        entry = self.root / key
        if not entry.is_dir():
            return None
        os.utime(entry)  # recently used
        return entry

    def put(self, key: str, files: dict[str, str]) -> Path:
        """Store `{name: source path}` under `key`; returns the entry directory."""
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".tmp-"))
        for name, source in files.items():
            shutil.copyfile(source, tmp / name)
        entry = self.root / key
        try:
            os.rename(tmp, entry)
        except OSError:  # another worker stored the same key first: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
        self._evict(keep=entry)
        return entry

    def get_or_build(self, key: str, name: str, build: Callable[[], tuple[str, dict]], workdir: str,
                     companions: tuple[str, ...] = ()) -> tuple[str, dict]:
        """(path of the artifact `name`, its JSON metadata) under `key`; on a miss `build()` returns the
        built file and the metadata, which are stored first, with the `companions`: files of these names
        beside the built file that belong to it (an OpenVINO model.xml's model.bin)."""
        entry = self.get(key)
        if entry is None:
            path, meta = build()
            meta_path = os.path.join(workdir, "meta.json")
            with open(meta_path, "w") as f:
                json.dump(meta, f)
            siblings = {c: os.path.join(os.path.dirname(path), c) for c in companions}
            entry = self.put(key, {name: path, **siblings, "meta.json": meta_path})
        return str(entry / name), json.loads((entry / "meta.json").read_text())

    def _evict(self, keep: Path) -> None:
        entries = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".tmp-")]
        sizes = {p: sum(f.stat().st_size for f in p.iterdir() if f.is_file()) for p in entries}
        total = sum(sizes.values())
        for entry in sorted(entries, key=lambda p: p.stat().st_mtime):
            if total <= self.max_mb * 1e6:
                break
            if entry != keep:
                shutil.rmtree(entry, ignore_errors=True)
                total -= sizes[entry]

    def size_mb(self) -> float:
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file()) / 1e6
