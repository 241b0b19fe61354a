"""Flower's configuration (read by Flower from the working directory, or ``--conf``).

Read only, behind basic auth from a file: see retry_pipeline/flower_readonly.py.
"""

import os

from retry_pipeline.flower_readonly import configure

basic_auth = configure()
# Loopback unless told otherwise: compose sets FLOWER_ADDRESS=0.0.0.0 inside the container
# and publishes the port on the host's 127.0.0.1 only.
address = os.environ.get("FLOWER_ADDRESS", "127.0.0.1")
port = 5555
