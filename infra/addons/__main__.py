"""`python -m infra.addons --refresh-metallb`: see infra.addons.main."""
from infra.addons import main

raise SystemExit(main())
