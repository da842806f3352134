"""The demo's and the bench's sample ``template.created`` texts say the template was created,
in every language they carry (they once said "was changed": ⵢⵜⵜⵓⵙⵏⴼⵍ in Tamazight), and
their Tamazight is the guide's Latin ("Yettwarna template amaynut")."""

from __future__ import annotations

import re

import pytest

from bench.load import DETAILS as BENCH
from demo.__main__ import DETAILS as DEMO

CREATED = {"fr": "créé", "en": "created", "ar": "إنشاء", "tzm": "Yettwarna template amaynut"}
"""A word each language's text must hold: "created", "new template" in Tamazight."""
CHANGED = {"fr": ("modifié", "changé"), "en": ("changed", "modified", "updated"),
           "ar": ("تعديل", "تغيير", "تحديث"), "tzm": ("ⵢⵜⵜⵓⵙⵏⴼⵍ", "yettusnfel", "ibeddel")}
"""What a text of an update would say instead."""
TIFINAGH = re.compile("[\u2d30-\u2d7f]")


@pytest.mark.parametrize("samples", [DEMO, BENCH], ids=["demo", "bench"])
def test_the_samples_say_created_not_changed(samples: dict[str, str]) -> None:
    assert set(samples) == set(CREATED)
    for lang, text in samples.items():
        assert CREATED[lang] in text, (lang, text)
        assert not any(word in text.lower() for word in CHANGED[lang]), (lang, text)
    assert not TIFINAGH.search(samples["tzm"]), "the guide writes Tamazight in Latin script"
