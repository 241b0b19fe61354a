"""Flower's configuration (read by Flower from the working directory, or ``--conf``).

Read only, behind basic auth from a file: see retry_pipeline/flower_readonly.py.
"""

from retry_pipeline.flower_readonly import configure

basic_auth = configure()
address = "0.0.0.0"  # inside its container; compose publishes it on 127.0.0.1 only
port = 5555
