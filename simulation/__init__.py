"""Simulation: scenarios, the linkage simulator, a private Redis, the stand-in examination side."""
