"""Central controller: decides inter-PoP forwarding shares per tier."""
