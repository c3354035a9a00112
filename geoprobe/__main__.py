from geoprobe.cli import main

raise SystemExit(main())
