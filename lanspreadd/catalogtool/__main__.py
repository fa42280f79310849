from lanspreadd.catalogtool.cli import main

raise SystemExit(main())
