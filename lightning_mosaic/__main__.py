from lightning_mosaic.cli import main

raise SystemExit(main())
