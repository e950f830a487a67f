from nscfate.cli import main

raise SystemExit(main())
