"""The lab's application: an HTTP service that says who served it, a load generator that
records every failure, and a CPU burner. They run inside the lab's network namespaces
(lab/) so that the data plane is judged by real TCP connections, not by packet counts.
"""
