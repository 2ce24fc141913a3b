"""Policy serving: `vla serve` on the GPU machine, `PolicyClient` on the robot PC.

The wire format is openpi's (websocket + msgpack with numpy arrays as tagged maps), so the
PyPI ``openpi-client`` ``WebsocketClientPolicy`` talks to our server unchanged.
"""

from vla.serving.wire import DEFAULT_MAX_MESSAGE_BYTES, WireError, pack, unpack

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "WireError", "pack", "unpack"]
