"""Peers: other projects' growth methods, run as arms of ``esper experiment`` beside Esper's own (gromo)."""
