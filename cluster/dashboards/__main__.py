"""`python -m cluster.dashboards`: regenerate `dashboards/` (see `generate`)."""

import sys

from cluster.dashboards.generate import main

sys.exit(main())
