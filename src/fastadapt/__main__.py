import sys

from fastadapt.cli import main

sys.exit(main())
