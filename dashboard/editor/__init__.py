"""The visual workflow editor: the canvas page, its panels and its WebSocket."""
