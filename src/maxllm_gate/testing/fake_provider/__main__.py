"""``python -m maxllm_gate.testing.fake_provider``: serve until killed."""

import sys

from maxllm_gate.testing.fake_provider.process import main

main(sys.argv[1:])
