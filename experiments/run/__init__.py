"""Running sweeps: one trial, the grid sweep, search and Ray runners, drift control, provenance."""
