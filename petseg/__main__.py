from petseg.app.cli import main

raise SystemExit(main())
