"""Preset experiment configs (TOML package data), run with ``fedsim run --preset NAME``.

The first line of each file is a comment describing the preset in one line (``fedsim presets``
lists them). Settings not written in a preset take their defaults; ``fedsim show-config --preset NAME``
prints them all.
"""
