"""Wire protocols, one module each, every one mapping its wire format to the data plane's
requests and responses.

A new protocol is a module with a :class:`~torchferry.serving.protocols.common.Protocol`
subclass plus one line here; the serving core never imports a protocol.
"""

from __future__ import annotations

from torchferry.serving.protocols.common import Protocol
from torchferry.serving.protocols.grpc import V2Grpc
from torchferry.serving.protocols.model_docs import ModelDocs
from torchferry.serving.protocols.simple import Predict
from torchferry.serving.protocols.torchserve import TorchServe
from torchferry.serving.protocols.v1 import V1
from torchferry.serving.protocols.v2 import V2Http

PROTOCOLS: list[type[Protocol]] = [V2Http, V1, Predict, TorchServe, V2Grpc, ModelDocs]
