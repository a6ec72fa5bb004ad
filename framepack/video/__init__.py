"""Decoded frames to files: the streaming section decoder and encoder sinks."""
