"""Helpers for the dashboard's AppTest tests."""

from __future__ import annotations

import re

from streamlit.testing.v1 import AppTest

# A sweep name full of markup: every page must show it literally.
MARKUP_NAME = "**bold** <b>tag</b> [link](http://x.example) :red[red] $x^2$"


def page_test(page: str) -> AppTest:
    """An AppTest that renders one page module, as the router would."""
    return AppTest.from_string(f"from app.dashboard import {page}\n{page}.render()",
                               default_timeout=60)


def texts(elements) -> list[str]:
    """The values of a list of AppTest elements."""
    return [str(e.value) for e in elements]


def leaf_after(app: AppTest, label: str) -> object | None:
    """The first non-container element after the widget labelled `label`, in page order."""
    nodes = [n for n in app.main if not hasattr(n, "children")]
    for i, node in enumerate(nodes):
        if getattr(node, "label", None) == label:
            return nodes[i + 1] if i + 1 < len(nodes) else None
    raise AssertionError(f"no widget labelled {label!r}")


def plain(markdown: str) -> str:
    """Markdown source with backslash escapes removed: the text a user reads."""
    return re.sub(r"\\(.)", r"\1", markdown)
