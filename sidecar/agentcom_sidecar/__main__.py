"""`python -m agentcom_sidecar` runs the same command as the `agentcom-sidecar` script."""

import sys

from agentcom_sidecar.agent import main

sys.exit(main())
