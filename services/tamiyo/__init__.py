"""Tamiyo: the strategic controller — a GNN policy over each run's model graph (in progress).

Built so far: the scatter backends (``scatter``) the message passing stands on.
"""
