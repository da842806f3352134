"""The CLI's messages in English, French, Arabic and Tamazight (Latin script, or Tifinagh).

Each language is one JSON catalog in :mod:`cli.locales` mapping a key to a
:meth:`str.format` template; every catalog has the same keys with the same placeholders
(``tests/unit/test_cli_i18n.py`` checks it, and that every key the code uses exists), so a
message cannot exist in one language only. A missing key in a non-English catalog would still
fall back to English rather than crash.

The language is chosen, first match wins, by ``--lang``, ``DIHYA_LANG``, the profile's
``lang`` in the config file, then the POSIX locale variables ``LC_ALL``, ``LC_MESSAGES`` and
``LANG`` (``fr_FR.UTF-8`` → ``fr``; ``C`` and ``POSIX`` say nothing), then English.

Tamazight is written in Latin script by default, as the guide writes it; ``DIHYA_TZM_SCRIPT=
tifinagh`` (the variable ingest reads for its catalog) or the profile's ``tzm_script`` chooses
Tifinagh: the catalog ``tzm@tifinagh`` (the POSIX ``@modifier`` form gettext also understands).
"""

from __future__ import annotations

import functools
import string
from collections.abc import Mapping
from importlib import resources
from typing import Any

import orjson

LANGS: tuple[str, ...] = ("en", "fr", "ar", "tzm")
DEFAULT = "en"
RTL: frozenset[str] = frozenset({"ar"})
UNREVIEWED: frozenset[str] = frozenset({"ar", "tzm"})
"""Languages whose messages await a native speaker's review (``--help`` says so in them)."""

SCRIPTS: tuple[str, ...] = ("latin", "tifinagh")
TIFINAGH = "tzm@tifinagh"
"""The catalog of Tamazight in Tifinagh (``tzm`` is Latin script)."""
VARIANTS: tuple[str, ...] = (*LANGS, TIFINAGH)
"""Every catalog: the four languages and Tamazight's second script."""

_ALIASES = {"zgh": "tzm", "ber": "tzm"}
"""ISO 639 codes people use for Tamazight: ``zgh`` (Standard Moroccan Tamazight), ``ber``."""


def normalize(value: str | None) -> str | None:
    """The catalog language a locale-ish string names, or None: ``fr_FR.UTF-8`` → ``fr``,
    ``ar-MA`` → ``ar``, ``zgh`` → ``tzm``, ``C`` → None."""
    if not value:
        return None
    base = value.split(".")[0].split("@")[0].replace("-", "_").split("_")[0].lower()
    base = _ALIASES.get(base, base)
    return base if base in LANGS else None


def choose(flag: str | None, env: Mapping[str, str], configured: str | None = None) -> str:
    """The language to speak, from the command line, the environment and the config file."""
    candidates = (flag, env.get("DIHYA_LANG"), configured,
                  env.get("LC_ALL"), env.get("LC_MESSAGES"), env.get("LANG"))
    for value in candidates:
        lang = normalize(value)
        if lang is not None:
            return lang
    return DEFAULT


def script(*values: str | None) -> str:
    """The Tamazight script the first given value names (``tifinagh`` or ``tfng``; anything
    else: Latin)."""
    for value in values:
        if value:
            return "tifinagh" if value.strip().lower() in ("tifinagh", "tfng") else "latin"
    return "latin"


@functools.cache
def catalog(lang: str) -> dict[str, str]:
    """The catalog of ``lang`` (a language, or ``tzm@tifinagh``; loaded once)."""
    if lang not in VARIANTS:
        raise ValueError(f"unknown language {lang!r}; expected one of {', '.join(VARIANTS)}")
    data = orjson.loads(resources.files("cli.locales").joinpath(f"{lang}.json").read_bytes())
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"catalog {lang}.json must be an object of strings")
    return data


def placeholders(template: str) -> set[str]:
    """The ``{name}`` fields of a template (what the code must pass)."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


class Messages:
    """Messages in one language: ``t("key", name=value)``. ``variant`` names the catalog
    (``lang``, or ``tzm@tifinagh`` for Tamazight in Tifinagh)."""

    def __init__(self, lang: str, tzm_script: str = "latin") -> None:
        self.lang = lang
        self.tzm_script = tzm_script
        self.variant = TIFINAGH if lang == "tzm" and tzm_script == "tifinagh" else lang
        self._own = catalog(self.variant)
        self._fallback = catalog(DEFAULT)

    @property
    def rtl(self) -> bool:
        return self.lang in RTL

    def __call__(self, key: str, **values: Any) -> str:
        template = self._own.get(key) or self._fallback[key]
        return template.format(**values) if values or "{" in template else template

    def has(self, key: str) -> bool:
        return key in self._fallback
