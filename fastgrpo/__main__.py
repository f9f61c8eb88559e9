from fastgrpo.train.cli import main

raise SystemExit(main())
