"""Profiles page: built-ins read-only; create, edit, rename and delete your own, validated."""

from __future__ import annotations

from dashboard_helpers import leaf_after, page_test, plain, texts

from app.dashboard.profiles import NEW, builtin_yaml, new_profile_template
from db.store import Store
from experiments.spec.profiles import list_builtin_profiles


def test_builtins_are_shown(db_url: str) -> None:
    app = page_test("profiles").run()
    assert not app.exception
    first = list_builtin_profiles()[0]  # the first, alphabetically: a trace profile now
    assert first == "azure-code" and app.code[0].value == builtin_yaml(first).strip()
    app.selectbox(key="profiles_builtin").set_value("chat").run()
    assert app.code[0].value == builtin_yaml("chat").strip()


def test_create_edit_rename_delete(db_url: str, store: Store) -> None:
    app = page_test("profiles").run()
    app.button(key="profiles_save").click().run()
    assert store.get_profile("my-profile") == new_profile_template()
    assert app.selectbox(key="profiles_choice").value == "my-profile"
    renamed = new_profile_template().replace("name: my-profile", "name: team-chat")
    app.text_area(key="profiles_yaml_my-profile").input(renamed).run()
    app.button(key="profiles_save").click().run()
    assert set(store.list_profiles()) == {"team-chat"}
    app.checkbox(key="profiles_sure_team-chat").check().run()
    app.button(key="profiles_delete").click().run()
    assert store.list_profiles() == {} and app.selectbox(key="profiles_choice").value == NEW


def test_invalid_yaml_is_shown_under_the_editor_and_not_saved(db_url, store: Store) -> None:
    app = page_test("profiles").run()
    bad = new_profile_template().replace("objective: max_goodput", "objective: fastest")
    app.text_area(key=f"profiles_yaml_{NEW}").input(bad).run()
    app.button(key="profiles_save").click().run()
    error = leaf_after(app, "YAML")
    assert error.type == "error" and "objective: must be one of" in plain(error.value)
    assert store.list_profiles() == {}
    app.text_area(key=f"profiles_yaml_{NEW}").input("name: [unclosed").run()
    app.button(key="profiles_save").click().run()
    assert "invalid YAML" in plain(leaf_after(app, "YAML").value)


def test_builtin_names_are_taken(db_url, store: Store) -> None:
    app = page_test("profiles").run()
    taken = new_profile_template().replace("name: my-profile", "name: chat")
    app.text_area(key=f"profiles_yaml_{NEW}").input(taken).run()
    app.button(key="profiles_save").click().run()
    assert any("built-in profile" in plain(t) for t in texts(app.error))
    assert store.list_profiles() == {}
