"""The popshift services: one subpackage per part of the patent's system (see SPEC section 1)."""
