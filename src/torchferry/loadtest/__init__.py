"""``torchferry bench``: a load tester for torchferry, Triton-compatible and TorchServe servers.

It drives one request at each concurrency from several generator processes (pre-encoded
HTTP/1.1 over keep-alive asyncio sockets, or ``grpc.aio``), calibrates the generator against
a trivial endpoint, and, given the model store, sets the served rate against the same
archive's speed in-process at the batch sizes the server ran.
"""
