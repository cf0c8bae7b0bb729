"""Regenerate the gRPC stubs of ``src/torchferry/serving/protos/inference.proto``.

    python scripts/generate_protos.py            # rewrite the committed stubs in place
    python scripts/generate_protos.py --out DIR  # write them to DIR instead (to compare)

Runs ``grpc_tools.protoc`` (``pip install grpcio-tools``; its version is written into the
stubs, so the committed ones come from the version named there) with ``src/`` as the import
root, which makes the grpc module import its messages as ``torchferry.serving.protos``.
One edit follows: the messages go into a private descriptor pool instead of protobuf's
process-wide default one. tritonclient's stubs (and KServe's, and MLServer's) define the
same ``inference.*`` message names in that default pool, and a process importing two such
modules fails with "duplicate symbol"; a private pool leaves the wire format unchanged.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PROTO = "torchferry/serving/protos/inference.proto"
PACKAGE_DIR = SRC / "torchferry" / "serving" / "protos"
GENERATED = ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")

_DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL = (
    "# torchferry: a private pool, so that stubs of the same 'inference' package from other\n"
    "# libraries (tritonclient, kserve) can be imported in the same process.\n"
    "DESCRIPTOR = _descriptor_pool.DescriptorPool().AddSerializedFile("
)


def _patch(name: str, text: str) -> str:
    if name == "inference_pb2.py":
        if text.count(_DEFAULT_POOL) != 1:
            raise SystemExit(f"{name}: protoc's output changed shape; update {__file__}")
        text = text.replace(_DEFAULT_POOL, _PRIVATE_POOL)
    return text


def generate(out: Path) -> list[Path]:
    """Write the stubs into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"--proto_path={SRC}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                str(SRC / PROTO),
            ]
        )
        if code != 0:
            raise SystemExit(f"protoc failed with exit code {code}")
        written = []
        for name in GENERATED:
            text = (Path(tmp) / Path(PROTO).parent / name).read_text(encoding="utf-8")
            target = out / name
            target.write_text(_patch(name, text), encoding="utf-8")
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PACKAGE_DIR, help="output directory")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
