"""The Streamlit dashboard: a router (main.py), one thin module per page, shared view helpers."""
