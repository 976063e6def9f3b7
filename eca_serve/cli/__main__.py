import sys

from eca_serve.cli import main

sys.exit(main())
