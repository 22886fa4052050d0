"""Runnable examples shipped with chiefofstate; `bank` is the one `cos demo` runs."""
