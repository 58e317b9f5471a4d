"""Profiles page: read the built-in workload profiles; create, edit and delete your own."""

from __future__ import annotations

from importlib.resources import files

import streamlit as st

from app.dashboard import state, widgets
from db.errors import StoreError
from experiments.spec.profiles import ProfileError, list_builtin_profiles, parse_profile_yaml

NEW = "+ new profile"  # not a valid profile name, so it never collides with one
TEMPLATE_FROM = "chat"
PENDING = "profiles_pending"


def builtin_yaml(name: str) -> str:
    """The YAML text shipped for built-in profile `name`."""
    return files("experiments").joinpath(f"profiles/{name}.yaml").read_text("utf-8")


def new_profile_template() -> str:
    """A built-in profile renamed `my-profile`, without its comments, to start from."""
    lines = builtin_yaml(TEMPLATE_FROM).splitlines()
    kept = [line for line in lines if not line.lstrip().startswith("#")]
    return "\n".join(kept).replace(f"name: {TEMPLATE_FROM}", "name: my-profile") + "\n"


def render() -> None:
    """The Profiles page."""
    st.title("Profiles")
    st.caption("A profile says what requests look like (prompt and output lengths), the default "
               "load, the SLOs and what to maximise. Sweeps store a copy of theirs.")
    url = state.db_url()
    yours, builtin = st.tabs(["Your profiles", "Built-in profiles"])
    with yours:
        _editor(url, state.user_profiles(url))
    with builtin:
        _builtins()


def _builtins() -> None:
    name = st.selectbox("Built-in profile", list_builtin_profiles(), key="profiles_builtin")
    text = builtin_yaml(name)
    st.caption(widgets.md(parse_profile_yaml(text, name).description))
    st.code(text, language="yaml")


def _editor(url: str, user: dict[str, str]) -> None:
    _apply_pending()
    choice = st.selectbox("Profile", [NEW, *sorted(user)], key="profiles_choice")
    is_new = choice == NEW
    template = new_profile_template()
    text = st.text_area("YAML", template if is_new else user[choice], height=360,
                        key=f"profiles_yaml_{choice}",
                        help="Fields: name, description, prompt_tokens, output_tokens, arrival, "
                             "slos, objective, warmup_requests (see the built-in profiles)")
    error_slot = st.empty()
    left, right = st.columns(2)
    if left.button("Save profile", type="primary", key="profiles_save"):
        problem = _save(url, text, None if is_new else choice, user)
        if problem:
            error_slot.error(widgets.md(problem), icon=":material/error:")
    if not is_new:
        _delete(url, choice, right)


def _save(url: str, text: str, old_name: str | None, user: dict[str, str]) -> str | None:
    """Validate and store; the problem as one line, or None once saved."""
    try:
        profile = parse_profile_yaml(text, old_name or "new profile")
    except ProfileError as exc:
        return str(exc)
    if profile.name in list_builtin_profiles():
        return f"name: '{profile.name}' is a built-in profile; choose another name"
    if profile.name != old_name and profile.name in user:
        return f"name: you already have a profile '{profile.name}'; choose another name"
    try:
        store = state.get_store(url)
        store.save_profile(profile.name, text)
        if old_name and old_name != profile.name:
            store.delete_profile(old_name)  # a renamed profile moves, it is not copied
    except StoreError as exc:
        return str(exc)
    _select(profile.name, f"Saved profile {profile.name}")
    return None


def _delete(url: str, name: str, column) -> None:
    sure = column.checkbox("Yes, delete it", key=f"profiles_sure_{name}")
    if column.button("Delete profile", disabled=not sure, key="profiles_delete"):
        state.get_store(url).delete_profile(name)
        _select(NEW, f"Deleted profile {name}")


def _select(name: str, message: str) -> None:
    # The picker exists already in this run: hand the choice to the next run.
    state.clear_live()
    st.session_state[PENDING] = (name, message)
    st.session_state.pop(f"profiles_yaml_{NEW}", None)
    st.rerun()


def _apply_pending() -> None:
    name, message = st.session_state.pop(PENDING, (None, None))
    if name is not None:
        st.session_state["profiles_choice"] = name
        st.toast(widgets.md(message))
