import sys

from tunray.cli import main

sys.exit(main())
