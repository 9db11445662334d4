"""Urza: the library of blueprints and kernels, a projection of the compilation topics.

Embedded in-process by Tolaria (to load kernels) and Tamiyo (to choose them).
"""
