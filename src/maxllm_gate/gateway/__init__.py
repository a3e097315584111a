"""The gateway: an OpenAI-compatible HTTP server on the same client the SDK uses.

Run it with ``maxllm_gate-server`` (the ``server`` extra), or build the app
yourself with :func:`create_app` and serve it with any ASGI server.
"""

from maxllm_gate.gateway.app import Gateway, create_app
from maxllm_gate.gateway.settings import GatewaySettings

__all__ = ["Gateway", "GatewaySettings", "create_app"]
