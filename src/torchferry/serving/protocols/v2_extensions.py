"""V2 documents rendered from a loaded model, shared by the HTTP and gRPC bindings: model
metadata, and Triton's ``model_configuration`` (the ``/config`` answer perf_analyzer reads)
and ``statistics`` (from the batcher's counters) extensions."""

from __future__ import annotations

from typing import Any

from torchferry.archive.formats import EAGER, ONNXRUNTIME, ONNXRUNTIME_TRT, TORCHSCRIPT
from torchferry.serving.repository import LoadedModel
from torchferry.signature import TensorSpec

#: V2 datatype -> Triton model-config data type.
TRITON_TYPES: dict[str, str] = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}
#: Runtime name -> Triton backend name.
BACKENDS: dict[str, str] = {
    ONNXRUNTIME: "onnxruntime",
    ONNXRUNTIME_TRT: "onnxruntime",  # Triton's too runs TensorRT as an ONNX Runtime accelerator
    TORCHSCRIPT: "pytorch",
    EAGER: "python",
}


def tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def model_metadata(model: LoadedModel, versions: list[int]) -> dict[str, Any]:
    signature = model.signature
    return {
        "name": model.name,
        "versions": [str(v) for v in versions],
        "platform": model.runtime.platform,
        "inputs": [tensor_metadata(s) for s in signature.inputs],
        "outputs": [tensor_metadata(s) for s in signature.outputs],
    }


def _config_tensor(spec: TensorSpec, is_input: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": spec.name,
        "data_type": TRITON_TYPES[spec.datatype],
        # max_batch_size > 0: dims leave out the batch dimension, as in Triton
        "dims": list(spec.shape[1:]),
    }
    if is_input:
        entry["format"] = "FORMAT_NONE"
        entry["optional"] = False
    return entry


def model_config(model: LoadedModel, version_count: int) -> dict[str, Any]:
    """The model's configuration in the JSON shape of Triton's ``model_config.proto``."""
    batcher = model.batcher
    signature = model.signature
    return {
        "name": model.name,
        "platform": model.runtime.platform,
        "backend": BACKENDS.get(model.runtime.name, model.runtime.name),
        "version_policy": {"latest": {"num_versions": version_count}},
        "max_batch_size": batcher.max_batch_size,
        "input": [_config_tensor(s, True) for s in signature.inputs],
        "output": [_config_tensor(s, False) for s in signature.outputs],
        "batch_input": [],
        "batch_output": [],
        "dynamic_batching": {
            "preferred_batch_size": [batcher.max_batch_size],
            "max_queue_delay_microseconds": round(batcher.max_delay * 1e6),
            # V2's priority parameter reorders the queue: answers need not keep request order
            "preserve_ordering": False,
        },
        "instance_group": [
            {
                "name": f"{model.name}_0",
                "kind": "KIND_GPU" if model.runtime.device.startswith("cuda") else "KIND_CPU",
                "count": len(model.runtimes),
            }
        ],
        "default_model_filename": model.manifest.graph_file(model.runtime.name),
        "parameters": {},
    }


def _duration(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}


def model_stats(model: LoadedModel) -> dict[str, Any]:
    """One model version's statistics in the JSON shape of Triton's statistics extension.

    Counts follow Triton: ``inference_count`` counts rows, ``execution_count`` batches run;
    ``success``/``queue`` count requests, ``compute_infer`` counts batches (each request of
    a batch waits for the whole batch, so its average is the per-request compute time).
    """
    stats = model.batcher.stats
    zero = _duration(0, 0)
    return {
        "name": model.name,
        "version": str(model.version),
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {
            "success": _duration(stats.success_count, stats.success_ns),
            "fail": _duration(stats.fail_count, stats.fail_ns),
            "queue": _duration(stats.success_count, stats.queue_ns),
            "compute_input": zero,
            "compute_infer": _duration(stats.execution_count, stats.compute_ns),
            "compute_output": zero,
            "cache_hit": zero,
            "cache_miss": zero,
        },
        "response_stats": {},
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": _duration(entry.count, 0),
                "compute_infer": _duration(entry.count, entry.compute_ns),
                "compute_output": _duration(entry.count, 0),
            }
            for size, entry in sorted(model.batcher.stats.by_batch_size.items())
        ],
        "memory_usage": [],
    }
