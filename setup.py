"""The one packaging rule pyproject.toml cannot state: the shipped scenarios live at
the top of the repository (``examples/``), where a reader of the checkout finds them,
and travel in the wheel as the package data ``migrate.examples`` so that an installed
``xmig examples`` can list and copy them. Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

# The checkout's examples/ folder and its sub-folders, mapped into the migrate
# package; find_packages cannot see them (they are data, with no __init__.py).
EXAMPLE_PACKAGES = {
    "migrate.examples": "examples",
    "migrate.examples.sweeps": "examples/sweeps",
    "migrate.examples.mosquitto": "examples/mosquitto",
    "migrate.examples.sites": "examples/sites",
}

setup(
    # Every package below the card's three top-level ones, found rather than listed (a
    # listed subset once left a package out of the wheel: CI now installs the wheel and
    # runs xmig from it).
    packages=find_packages(include=["hypervisor*", "guest*", "migrate*"]) + list(EXAMPLE_PACKAGES),
    package_dir=EXAMPLE_PACKAGES,
    package_data={
        "migrate.run": ["*.json"],
        "migrate.sweep": ["*.json"],
        "migrate.examples": ["*.yaml"],
        "migrate.examples.sweeps": ["*.yaml"],
        "migrate.examples.mosquitto": ["README.md", "acl", "*.conf"],
        "migrate.examples.sites": ["*.yaml"],
    },
)
