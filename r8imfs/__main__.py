from r8imfs.cli.main import main

raise SystemExit(main())
