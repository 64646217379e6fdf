from whisper_zh.cli import main

raise SystemExit(main())
