"""Worker for the multi-process tests: run each configuration given as JSON, in order.

Started by torchrun, so every process joins one gloo process group on the loopback address.
"""

import json
import sys

import train
from gps import distributed
from gps.config import build_config

if __name__ == "__main__":
    try:
        for text in sys.argv[1:]:
            train.run(build_config(overrides=json.loads(text)))
    finally:
        distributed.cleanup()
