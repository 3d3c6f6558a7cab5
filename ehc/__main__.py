from ehc.cli import main

raise SystemExit(main())
