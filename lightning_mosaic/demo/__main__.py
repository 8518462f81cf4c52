from lightning_mosaic.demo.cli import main

raise SystemExit(main())
