from scxnn.cli import main

raise SystemExit(main())
