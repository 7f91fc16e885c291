"""Only what pyproject.toml cannot say: every attnviz package, found, plus models/ shipped as attnviz.models.

An installed attnviz has no repository around it, so the catalog and the offline demo models travel inside
the package (attnviz/catalog.py looks there when the repository's models/ is absent).
"""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["attnviz", "attnviz.*"]) + ["attnviz.models"],
      package_dir={"attnviz.models": "models"})
