import sys

from slm.cli.main import main

sys.exit(main())
