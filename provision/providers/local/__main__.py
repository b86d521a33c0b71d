"""`python -m provision.providers.local`: local machines by hand (provision.providers.local.manual)."""

from provision.providers.local.manual import main

raise SystemExit(main())
