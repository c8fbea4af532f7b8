"""`python -m tieredkv_devcluster up|down|status|sim` — see docs/dev-cluster.md."""

import sys

from tieredkv_devcluster.cli import main

sys.exit(main())
