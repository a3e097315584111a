"""``python -m maxllm_gate.cli``: the same as the ``maxllm_gate`` command."""

import sys

from maxllm_gate.cli import main

sys.exit(main())
