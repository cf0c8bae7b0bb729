"""The demo: a digits classifier trained in seconds, exported into a store, ready to serve.

``python -m torchferry.demo build --store ./model-store`` trains and exports it;
``python -m torchferry.demo curl`` prints a request to paste once the store is served.
"""

from torchferry.demo.digits import DEMO_MODEL, build_demo, curl_command, sample_request

__all__ = ["DEMO_MODEL", "build_demo", "curl_command", "sample_request"]
