from priormim.cli import main

raise SystemExit(main())
