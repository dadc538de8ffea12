"""The live lab: three anycast PoPs, their clients and an internet as Linux network namespaces,
every popshift service run against it, and the overload scenario with its checks.

Lab-only code lives here (the HTTP service and load generator are `lab.app`), so that nothing
in popshift/ or services/ depends on it. `python -m lab --help` is the command line; README.md
(the lab) and SCENARIOS.md (the scenario) say what is where.
"""
