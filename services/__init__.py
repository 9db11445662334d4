"""Esper's services: one package per component, plus the shared bus layer (oona)."""
