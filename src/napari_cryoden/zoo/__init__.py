"""Anchor for package discovery only; never installed.

pyproject.toml maps the package ``napari_cryoden.zoo`` to the repository's ``models/`` (the
shipped weights and model cards), but setuptools' package discovery only walks ``src/``; this file
makes it find the package. The wheel's ``napari_cryoden/zoo`` holds the files of ``models/``
(no Python), and :func:`napari_cryoden.models.builtin_model_dir` falls back to ``models/`` in a
checkout, where this folder holds no model cards.
"""
