"""Generated protobuf and gRPC modules of ``inference.proto`` (KServe V2 over gRPC).

Do not edit the ``*_pb2*`` files: change ``inference.proto`` and run
``python scripts/generate_protos.py``.
"""
