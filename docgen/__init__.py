"""Generators of the documentation's code-derived parts (``python -m docgen.envdoc``,
``python -m docgen.opsdoc``); tests fail when a page and the code disagree. Development
tooling: not installed with the services."""
