"""The dashboard's entry point (`tradeoff ui` runs it): page config, the store check, the router."""

from __future__ import annotations

import streamlit as st

from app.dashboard import compare, explore, profiles, recommend, run, scaleout, state, widgets
from db.errors import StoreError


def pages() -> list:
    """The pages, in menu order; Run is the landing page."""
    return [
        st.Page(run.render, title="Run", icon=":material/play_circle:", url_path="run",
                default=True),
        st.Page(explore.render, title="Explore", icon=":material/scatter_plot:",
                url_path="explore"),
        st.Page(recommend.render, title="Recommend", icon=":material/star:",
                url_path="recommend"),
        st.Page(compare.render, title="Compare", icon=":material/compare_arrows:",
                url_path="compare"),
        st.Page(scaleout.render, title="Scale-out", icon=":material/dns:", url_path="scale-out"),
        st.Page(profiles.render, title="Profiles", icon=":material/tune:", url_path="profiles"),
    ]


def main() -> None:
    """Check the store once, then run the page the user picked."""
    # An emoji favicon is an inline data: URL; a ":material/..." one is fetched from fonts.gstatic.com
    # (in-page Material icons are served locally), and nothing may leave the machine.
    st.set_page_config(page_title="tradeoff", page_icon="⚖️", layout="wide")
    page = st.navigation(pages())
    url = state.db_url()
    try:
        store = state.get_store(url)
    except StoreError as exc:
        st.error(f"Cannot open the result store: {widgets.md(str(exc))}")
        st.stop()
    st.sidebar.caption(f"Results: `{store.display_url}`")
    try:
        page.run()
    except StoreError as exc:  # e.g. the database went away mid-session: one line, no traceback
        st.error(f"The result store failed: {widgets.md(str(exc))}")


main()
