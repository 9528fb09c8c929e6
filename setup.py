"""Kept for tools that still call ``setup.py``; the package's metadata is pyproject.toml's."""

from setuptools import setup

setup()
