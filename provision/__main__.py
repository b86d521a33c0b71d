"""`python -m provision`: the same as `fedi`."""

import sys

from provision.cli.app import main

sys.exit(main())
