"""Plain records shared by every package (the leaf of the import graph: it imports none of them)."""
