"""The role table: every family is one Role, and a role that lacks a method cannot exist."""

from __future__ import annotations

import pytest

from textgen_cli.models.decoder_only import DecoderOnly
from textgen_cli.models.role import Role
from textgen_cli.models.roles import ROLES
from textgen_cli.recipe import choices_of_keys


def test_a_role_without_every_method_cannot_be_created():
    class Half(Role):
        name = "half"

        def prompt_budget(self, context: int, max_new_tokens: int) -> int:
            return context

    with pytest.raises(TypeError, match="abstract"):
        Half()
    assert isinstance(DecoderOnly(), Role)


def test_the_recipe_schema_offers_exactly_the_roles():
    assert tuple(ROLES) == choices_of_keys()["model.family"]


def test_the_recipe_schema_offers_exactly_the_layouts():
    from textgen_cli.models.archs import ARCHS

    assert sorted(choices_of_keys()["model.arch"]) == sorted(("auto", *ARCHS))
    # every layout plays a role that exists, and every role can build at least one layout
    assert {arch.family for arch in ARCHS.values()} <= set(ROLES)
    assert all(any(arch.family == role.layouts_of for arch in ARCHS.values()) for role in ROLES.values())
