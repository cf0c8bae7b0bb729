"""Tensor codecs shared by every protocol and handler: the V2 datatype table
(``datatypes``), JSON values <-> arrays (``jsonarray``), raw tensor bytes (``raw``), and fast
JSON (``jsonio``). They know nothing of HTTP, gRPC or models."""
