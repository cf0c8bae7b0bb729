"""One copy of an ONNX graph's weights for every worker: the graph optimized once, its
initializers in an external data file that ONNX Runtime memory-maps.

Measured on ResNet-18 (``bench/shared_weights.py``): loading the archive's ``model.onnx``
gives each process private copies of its weights (the protobuf's, the session's, and the
re-laid-out ones the ``all`` level's NCHWc transformer makes). ONNX Runtime maps an
external data file read-only when it loads a graph from a path, and uses the mapped
initializers in place, unless an optimization rewrites them. So the graph is optimized
once, at the manifest's level, and saved with ``optimized_model_filepath`` and its
initializers in ``model.onnx.data``; every worker then loads that with optimizations off,
and the weights are shared pages of the page cache. The graph's own ``all``-level
layouts are kept, so this costs no speed.

An ``all``-level graph is specific to the CPU's vector extensions (NCHWc block size), so
the cache key holds the CPU's flags as well as the source graph's SHA-256 (with its
external data's: ``source_sha256``), the ONNX
Runtime version and the level. The entry is a ``weight_cache`` directory: published
atomically, checked against its record and the archive's verified hash at every load.
"""

from __future__ import annotations

import functools
import hashlib
import mmap
import platform
from pathlib import Path

import onnxruntime as ort

from torchferry.archive.manifest import Manifest
from torchferry.runtimes.weight_cache import cache_key, cached_entry, return_freed_memory

GRAPH = "model.onnx"
DATA = "model.onnx.data"
#: Initializers under this many bytes stay in the graph: ONNX Runtime reads small external
#: tensors into memory anyway (it maps only large, aligned ones).
_INLINE_BELOW = 1024


@functools.cache
def _cpu_identity() -> str:
    """What an ``all``-level layout depends on: the machine and its CPU flags."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            flags = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return f"{platform.machine()} {' '.join(sorted(flags.split(':', 1)[-1].split()))}"


def _optimize(source: Path, level: ort.GraphOptimizationLevel, target: Path) -> None:
    """Write ``source`` optimized at ``level`` into ``target`` (graph + external data)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = 1
    options.optimized_model_filepath = str(target / GRAPH)
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", DATA
    )
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", str(_INLINE_BELOW)
    )
    # ONNX Runtime warns that an all-level graph is hardware-specific: the key holds the CPU
    options.log_severity_level = 3
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return_freed_memory()


def source_sha256(manifest: Manifest, runtime: str, graph: Path) -> str:
    """What the shared graph is built from, by the manifest's verified hashes: the graph's
    SHA-256, or with external data one SHA-256 over the names and hashes of the graph and
    of every file its external data may use. Two versions of one architecture may differ
    only in their data file: keyed by the graph alone they would share an entry."""
    names = manifest.graph_files(runtime)  # the graph and model.onnx.data
    others = tuple(sorted(set(manifest.files) - set(names)))
    names = sorted({*names, *_named_in(graph, others)})
    if len(names) == 1:
        return manifest.files[names[0]].sha256
    listing = "\n".join(f"{name}\0{manifest.files[name].sha256}" for name in names)
    return hashlib.sha256(listing.encode()).hexdigest()


def _named_in(graph: Path, candidates: tuple[str, ...]) -> list[str]:
    """The ``candidates`` whose names the graph's bytes contain: an external data file by
    another name (an imported graph's ``weights.bin``) is referenced by its location, a
    string in the protobuf. Searching the bytes is much cheaper than parsing a graph with
    inline weights; a name found elsewhere only gives the graph an entry of its own."""
    if not candidates:
        return []
    with graph.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return [name for name in candidates if data.find(name.encode()) >= 0]


def shared_graph(source: Path, source_sha256: str, level: ort.GraphOptimizationLevel) -> Path:
    """The optimized graph of ``source`` (whose SHA-256 the verified manifest gives), with
    its weights in a mapped file, built once per key. Raises ``UnsafeCache`` or ``OSError``
    when the cache cannot be used; the caller loads ``source`` itself then."""
    key = cache_key("onnx", source_sha256, ort.__version__, str(int(level)), _cpu_identity())
    entry = cached_entry(key, source_sha256, lambda target: _optimize(source, level, target))
    return entry / GRAPH
