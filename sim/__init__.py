"""Discrete-time simulator of a global anycast network, driving popshift's real pure cores.

Why a simulator: the live services need Kafka, Redis and XDP; the question "does popshift keep
300 PoPs out of overload better than BGP withdrawal or DNS steering, and at what cost?" needs a
day of traffic in minutes. The simulator replaces only the transport: the analytics rules, the
policy engine and the table writer are the services' own functions, called on a virtual clock.
"""
