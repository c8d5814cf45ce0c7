"""`python -m ctmwa_batch.cli.main ...`: the same as `ctmwa-batch ...`."""

import sys

from ctmwa_batch.cli.main import main

sys.exit(main())
