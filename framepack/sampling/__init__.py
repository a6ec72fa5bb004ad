"""Sigma schedules, flow-matching samplers and the FramePack section loop."""
